import type { Logger } from '../../../common/log.ts';
import type { Image } from '../../../common/schema/image.ts';

/** Everything the build steps share; each step reads what earlier steps left here. */
export interface BuildContext {
  image: Image;
  imageFile: string;
  outDir: string;
  /** Private scratch space, removed after the build. */
  workDir: string;
  cacheDir: string;
  artifactsDir?: string;
  offline: boolean;
  sourceDateEpoch: number;
  logger: Logger;
  /** Filled in by the steps. */
  state: Record<string, unknown>;
}

/** One named build step; skips itself (with a reason) when it does not apply. */
export interface Step {
  name: string;
  skip?(ctx: BuildContext): string | false;
  run(ctx: BuildContext): Promise<void>;
}

export interface StepEvent {
  step: string;
  status: 'start' | 'done' | 'skipped' | 'failed';
  ms?: number;
  reason?: string;
}

export interface StepTiming {
  step: string;
  status: 'done' | 'skipped';
  ms: number;
}

/** Run the steps in order, timing each; the reporter prints lines, JSON or a task list. */
export async function runSteps(steps: Step[], ctx: BuildContext, report: (e: StepEvent) => void): Promise<StepTiming[]> {
  const timings: StepTiming[] = [];
  for (const step of steps) {
    const reason = step.skip?.(ctx);
    if (reason) {
      report({ step: step.name, status: 'skipped', reason });
      timings.push({ step: step.name, status: 'skipped', ms: 0 });
      continue;
    }
    report({ step: step.name, status: 'start' });
    const started = performance.now();
    try {
      await step.run(ctx);
    } catch (err) {
      report({ step: step.name, status: 'failed', ms: Math.round(performance.now() - started), reason: (err as Error).message.split('\n')[0] });
      throw err;
    }
    const ms = Math.round(performance.now() - started);
    report({ step: step.name, status: 'done', ms });
    timings.push({ step: step.name, status: 'done', ms });
  }
  return timings;
}
