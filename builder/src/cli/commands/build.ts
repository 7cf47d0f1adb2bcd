import { mkdtempSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { loadImage } from '../../../../common/config.ts';
import { formatBytes } from '../../../../common/schema/units.ts';
import { runSteps, type BuildContext, type StepEvent } from '../../build/steps.ts';
import { ROOTFS_STEPS } from '../../rootfs/steps.ts';
import type { CliContext } from '../context.ts';

interface BuildOptions {
  image: string;
  out: string;
  stage: 'rootfs';
  artifacts?: string;
  offline?: boolean;
  cacheDir: string;
  json?: boolean;
}

/** SOURCE_DATE_EPOCH, or a fixed default so two builds of the same inputs can match. */
function sourceDateEpoch(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  return v && /^\d+$/.test(v) ? Number(v) : 1_700_000_000;
}

export function registerBuild(program: Command, ctx: () => CliContext): void {
  program
    .command('build')
    .description('build an image stage from its definition (rootfs: a Debian 13 root tar with everything baked in)')
    .requiredOption('--image <file>', 'image definition (images/*.yaml)')
    .requiredOption('--out <dir>', 'output directory')
    .addOption(new Option('--stage <stage>', 'what to build').choices(['rootfs']).makeOptionMandatory())
    .option('--artifacts <dir>', 'air-gapped: pre-fetched upstream release files')
    .option('--offline', 'never open a connection for upstream artifacts')
    .option('--cache-dir <dir>', 'apt and artifact cache', join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s'))
    .option('--json', 'one JSON line per step event on stdout')
    .action(async (opts: BuildOptions) => {
      const c = ctx();
      const image = await loadImage(opts.image);
      await mkdir(opts.out, { recursive: true });
      const workDir = mkdtempSync(join(tmpdir(), 'gk-build-'));
      const build: BuildContext = {
        image, imageFile: opts.image, outDir: opts.out, workDir, cacheDir: opts.cacheDir, artifactsDir: opts.artifacts,
        offline: Boolean(opts.offline), sourceDateEpoch: sourceDateEpoch(), logger: c.logger, state: {},
      };
      const report = (e: StepEvent): void => {
        if (opts.json) return c.print(JSON.stringify({ time: new Date().toISOString(), ...e }));
        if (e.status === 'start') c.logger.info(`▶ ${e.step}`);
        else if (e.status === 'done') c.logger.info(`✔ ${e.step} (${(e.ms! / 1000).toFixed(1)} s)`);
        else if (e.status === 'skipped') c.logger.info(`- ${e.step}: skipped (${e.reason})`);
        else c.logger.error(`✘ ${e.step}: ${e.reason}`);
      };
      const started = performance.now();
      try {
        const timings = await runSteps(ROOTFS_STEPS, build, report);
        const total = ((performance.now() - started) / 1000).toFixed(1);
        if (opts.json) c.print(JSON.stringify({ result: { rootfs: build.state.rootfsTar, manifest: build.state.manifestFile, bytes: build.state.rootfsBytes, seconds: Number(total), steps: timings } }));
        else c.print(`${build.state.rootfsTar} (${formatBytes(build.state.rootfsBytes as number)}) in ${total} s\n${build.state.manifestFile}`);
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    });
}
