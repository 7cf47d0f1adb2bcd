import { Listr, ListrLogger, ProcessOutput } from 'listr2';
import type { StepEvent } from '../build/steps.ts';

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** A listr2 renderer's logger that writes frames to `stream` only (stderr: stdout keeps the result). */
export function writingTo(stream: NodeJS.WriteStream): { logger: ListrLogger } {
  return { logger: new ListrLogger({ processOutput: new ProcessOutput(stream, stream) }) };
}

type End = { kind: 'done'; ms: number } | { kind: 'skipped'; reason: string } | { kind: 'failed'; reason: string };

/**
 * A listr2 task list driven by the build's step events: the build runs its steps itself, in
 * order, and this only shows them, one task per step, the running step's latest progress
 * line under it. Written to `stream` (stderr: stdout keeps the result).
 */
export class StepTaskList {
  private readonly starts = new Map<string, Deferred<void>>();
  private readonly ends = new Map<string, Deferred<End>>();
  private readonly outputs = new Map<string, (message: string) => void>();
  private current: string | undefined;
  /** Settles once the list has drawn its last frame. */
  readonly finished: Promise<void>;

  constructor(steps: string[], private readonly stream: NodeJS.WriteStream, renderer: 'default' | 'simple' = 'default') {
    for (const s of steps) {
      this.starts.set(s, deferred());
      this.ends.set(s, deferred());
    }
    const list = new Listr(
      steps.map((name) => ({
        title: name,
        task: async (_: unknown, task: { title: string; output: string; skip: (m: string) => void }) => {
          await this.starts.get(name)!.promise;
          this.outputs.set(name, (m) => (task.output = m));
          const end = await this.ends.get(name)!.promise;
          if (end.kind === 'skipped') return task.skip(end.reason);
          if (end.kind === 'failed') throw new Error(end.reason);
          task.title = `${name} (${(end.ms / 1000).toFixed(1)} s)`;
        },
      })),
      {
        concurrent: false,
        exitOnError: true,
        renderer,
        rendererOptions: writingTo(stream),
      },
    );
    this.finished = list.run().then(
      () => undefined,
      () => undefined,
    );
  }

  /** One step event from runSteps. */
  event(e: StepEvent): void {
    if (e.status === 'start') {
      this.current = e.step;
      this.starts.get(e.step)?.resolve();
      return;
    }
    // A skipped step never started; a failed one did.
    this.starts.get(e.step)?.resolve();
    const end: End = e.status === 'done' ? { kind: 'done', ms: e.ms ?? 0 } : e.status === 'skipped' ? { kind: 'skipped', reason: e.reason ?? '' } : { kind: 'failed', reason: e.reason ?? '' };
    this.ends.get(e.step)?.resolve(end);
    if (this.current === e.step) this.current = undefined;
  }

  /** The running step's latest progress line. */
  progress(message: string): void {
    // One line under the task: a long line (an mmdebstrap hook's command) would wrap and jump.
    const width = Math.max(40, (this.stream.columns || 100) - 8);
    const line = message.length > width ? `${message.slice(0, width - 1)}…` : message;
    if (this.current) this.outputs.get(this.current)?.(line);
  }
}
