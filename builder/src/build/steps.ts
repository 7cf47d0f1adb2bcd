import type { Logger } from '#common/log.ts';
import type { Image, OutputFormat } from '#common/schema/image.ts';
import type { MinisignSecretKey } from '#common/minisign.ts';
import type { BundleManifest } from '#common/upgrade/bundle.ts';
import type { ResolvedArtifact } from '../components/fetch.ts';
import type { DiskState } from '../disk/steps.ts';
import type { RootSource } from '../rootfs/sources/index.ts';

/** The root's build manifest (/usr/share/geminik8s/manifest.json and `<name>.manifest.json`). */
export type RootManifest = Record<string, unknown> & { image: string; version: string; arch: string };

/** What the steps leave for later steps; each field names the step that fills it. */
export interface BuildState {
  /** From the command line: where the root comes from. */
  rootSource?: RootSource;
  /** fetch upstream components */
  artifacts?: ResolvedArtifact[];
  /** stage files, build the root */
  manifest?: RootManifest;
  /** build the root (or --rootfs-tar) */
  rootfsTar?: string;
  rootfsBytes?: number;
  /** write the manifest next to the root */
  manifestFile?: string;
  /** the disk steps */
  disk?: DiskState;
  /** write the upgrade bundle */
  upgrade?: { file: string; manifest: BundleManifest; signed: boolean };
  /** write the OCI image for the System Upgrade Controller */
  oci?: { file: string; manifestDigest: string };
}

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
  /** The mmdebstrap source may reuse a cached base root (`--no-base-cache` turns it off). */
  baseCache: boolean;
  sourceDateEpoch: number;
  logger: Logger;
  /** The upgrade bundle's signing key (`--sign-key`); unsigned bundles are refused by nodes. */
  signKey?: MinisignSecretKey;
  /** Output formats to write: the image definition's, or `--output`. */
  outputs: OutputFormat[];
  /** Filled in by the steps. */
  state: BuildState;
  /** How a running step says how far it is (a task list's line, a log line or JSON); default: an info log line. */
  progress?: (message: string) => void;
}

/** Tell the reporter how far the running step is. */
export function say(ctx: Pick<BuildContext, 'progress' | 'logger'>, message: string): void {
  if (ctx.progress) ctx.progress(message);
  else ctx.logger.info(`  ${message}`);
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
