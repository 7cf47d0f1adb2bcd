import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { requireTools, runPlan, type CommandPlan } from '#common/exec.ts';
import { ensureBase, releaseDigest } from '../base-cache.ts';
import { fromBasePlan, mmdebstrapBasePlan, mmdebstrapPlan, stagingTarPlan } from '../mmdebstrap.ts';
import type { RootSource, RootSourceContext } from './source.ts';

/** Run an mmdebstrap plan, reporting each new `I:` status line as progress. */
export async function runMmdebstrap(plan: CommandPlan, progress: (message: string) => void): Promise<void> {
  let last = '';
  await runPlan(plan, {
    timeoutMs: 60 * 60_000,
    onStderrLine: (l) => {
      const m = /^I: (.*)$/.exec(l);
      if (m && m[1] !== last) {
        last = m[1]!;
        progress(last);
      }
    },
  });
}

/**
 * The default source: Debian 13 from the image's mirror with mmdebstrap, staging laid over by its
 * hooks. The packages come from the base root cache when their inputs are unchanged (see
 * base-cache.ts); `--no-base-cache` installs them in the same pass as before.
 */
export function mmdebstrapSource(): RootSource {
  return {
    name: 'mmdebstrap',
    origin: 'mmdebstrap',
    async check() {
      await requireTools(['mmdebstrap', 'tar']);
    },
    async produce(ctx: RootSourceContext, output: string) {
      const aptCache = join(ctx.cacheDir, 'apt', `${ctx.image.base.suite}-${ctx.image.arch}`);
      mkdirSync(aptCache, { recursive: true });
      const stagingTar = join(ctx.workDir, 'staging.tar');
      await runPlan(stagingTarPlan(ctx.staging, stagingTar));
      const common = { image: ctx.image, staging: ctx.staging, aptCache, sourceDateEpoch: ctx.sourceDateEpoch };
      const base = ctx.baseCache
        ? await ensureBase(
            { image: ctx.image, staging: ctx.staging, dir: join(ctx.cacheDir, 'base'), plan: (out) => mmdebstrapBasePlan({ ...common, output: out }) },
            {
              releaseDigest,
              mmdebstrapVersion: async () => (await runPlan({ cmd: 'mmdebstrap', args: ['--version'] })).stdout,
              run: (plan) => runMmdebstrap(plan, ctx.progress),
              progress: ctx.progress,
            },
          )
        : undefined;
      const plan = base
        ? fromBasePlan({ image: ctx.image, base, output, stagingTar, sourceDateEpoch: ctx.sourceDateEpoch })
        : mmdebstrapPlan({ ...common, output, stagingTar });
      await runMmdebstrap(plan, ctx.progress);
    },
  };
}
