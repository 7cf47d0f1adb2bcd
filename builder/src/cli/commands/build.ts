import { mkdtempSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { loadImage } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { keyIdHex, parseSecretKey, secretKeyEncrypted, type MinisignSecretKey } from '#common/minisign.ts';
import { OUTPUT_FORMATS, type OutputFormat } from '#common/schema/image.ts';
import { trustedKeyIds } from '../../rootfs/steps.ts';
import { formatBytes } from '#common/schema/units.ts';
import { runSteps, type BuildContext, type StepEvent } from '../../build/steps.ts';
import { ROOTFS_STEPS, rootfsName } from '../../rootfs/steps.ts';
import { parseRootSource } from '../../rootfs/sources/index.ts';
import { DISK_STEPS, readManifest } from '../../disk/steps.ts';
import { buildReport, reportTable } from '../../disk/report.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import type { CliContext } from '../context.ts';
import { StepTaskList } from '../tasklist.ts';

interface BuildOptions {
  image: string;
  out: string;
  stage: 'rootfs' | 'disk' | 'all';
  rootfsTar?: string;
  rootfs: string;
  artifacts?: string;
  offline?: boolean;
  /** false with --no-base-cache. */
  baseCache?: boolean;
  cacheDir: string;
  json?: boolean;
  output?: string;
  signKey?: string;
  signPasswordFile?: string;
}

/** `--output raw,upgrade`: the formats to write instead of the image definition's `outputs`. */
export function parseOutputs(value: string): OutputFormat[] {
  const list = value.split(',').map((f) => f.trim()).filter(Boolean);
  const bad = list.filter((f) => !(OUTPUT_FORMATS as readonly string[]).includes(f));
  if (!list.length || bad.length) {
    throw new GeminiError(`--output: ${bad.length ? `unknown format ${bad.map((b) => JSON.stringify(b)).join(', ')}` : 'no format given'}; expected a comma-separated list of ${OUTPUT_FORMATS.join(', ')}`, ExitCode.invalidInput);
  }
  return [...new Set(list)] as OutputFormat[];
}

/** Read the signing key named by --sign-key, decrypting it with --sign-password-file when it is encrypted. */
export async function loadSignKey(file: string, passwordFile?: string): Promise<MinisignSecretKey> {
  const read = async (f: string, what: string): Promise<string> => readFile(f, 'utf8').catch((err: Error) => {
    throw new GeminiError(`cannot read ${what} ${f}: ${err.message}`, ExitCode.invalidInput);
  });
  const text = await read(file, 'the signing key');
  if (!secretKeyEncrypted(text, file)) return parseSecretKey(text, file);
  if (!passwordFile) throw new GeminiError(`${file}: the key is encrypted: give its password with --sign-password-file FILE`, ExitCode.invalidInput);
  return parseSecretKey(text, file, (await read(passwordFile, 'the password file')).replace(/\r?\n$/, ''));
}

/** SOURCE_DATE_EPOCH, or a fixed default so two builds of the same inputs can match. */
function sourceDateEpoch(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  return v && /^\d+$/.test(v) ? Number(v) : 1_700_000_000;
}

export function registerBuild(program: Command, ctx: () => CliContext): void {
  program
    .command('build')
    .description('build an image from its definition: the root tar (rootfs), then the A/B disk images (disk); both by default')
    .requiredOption('--image <file>', 'image definition (images/*.yaml)')
    .requiredOption('--out <dir>', 'output directory')
    .addOption(new Option('--stage <stage>', 'what to build: rootfs (root tar), disk (images from an existing root tar), all').choices(['rootfs', 'disk', 'all']).default('all'))
    .option('--rootfs <source>', 'rootfs stage: where the root comes from: mmdebstrap, docker[:BASE-IMAGE] (the Containerfile through a Docker engine, base debian:trixie) or tar:PATH (an existing root tarball)', 'mmdebstrap')
    .option('--rootfs-tar <file>', 'disk stage: the root tar to use (default: OUT/<name>-<version>-<arch>.rootfs.tar)')
    .option('--artifacts <dir>', 'air-gapped: pre-fetched upstream release files')
    .option('--offline', 'never open a connection for upstream artifacts')
    .option('--no-base-cache', 'rootfs stage: install the Debian packages in this build instead of taking them from the base root cache (CACHE/base, keyed by packages, mirror InRelease and mmdebstrap)')
    .option('--cache-dir <dir>', 'apt, base root and artifact cache', join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s'))
    .option('--json', 'one JSON line per step event on stdout')
    .option('--output <formats>', `disk stage: what to write, comma-separated (${OUTPUT_FORMATS.join(', ')}); default: the image definition's outputs`)
    .option('--sign-key <file>', 'minisign secret key that signs the upgrade bundle (geminik8s keygen)')
    .option('--sign-password-file <file>', 'password of an encrypted --sign-key')
    .action(async (opts: BuildOptions) => {
      const c = ctx();
      const rootSource = parseRootSource(opts.rootfs);
      const image = await loadImage(opts.image);
      const outputs = opts.output ? parseOutputs(opts.output) : image.outputs;
      const signKey = opts.signKey ? await loadSignKey(opts.signKey, opts.signPasswordFile) : undefined;
      if (signKey && (outputs.includes('upgrade') || outputs.includes('oci')) && image.upgrade.trustedKeys.length && !(await trustedKeyIds(image, opts.image)).includes(keyIdHex(signKey.keyId))) {
        c.logger.warn(`the signing key ${keyIdHex(signKey.keyId)} is not among this image's upgrade.trustedKeys: nodes running it will refuse the next bundle signed with the same key`);
      }
      await mkdir(opts.out, { recursive: true });
      const workDir = mkdtempSync(join(tmpdir(), 'gk-build-'));
      const build: BuildContext = {
        image, imageFile: opts.image, outDir: opts.out, workDir, cacheDir: opts.cacheDir, artifactsDir: opts.artifacts,
        offline: Boolean(opts.offline), baseCache: opts.baseCache !== false, sourceDateEpoch: sourceDateEpoch(), logger: c.logger, state: opts.rootfsTar ? { rootfsTar: opts.rootfsTar } : {},
        outputs, signKey,
      };
      build.state.rootSource = rootSource;
      const steps = [...(opts.stage === 'disk' ? [] : ROOTFS_STEPS), ...(opts.stage === 'rootfs' ? [] : DISK_STEPS)];
      // A task list on a terminal; plain lines in CI or through a pipe; JSON lines with --json.
      const list = c.interactive && !opts.json ? new StepTaskList(steps.map((s) => s.name), process.stderr) : undefined;
      let running = '';
      build.progress = (message) => {
        if (list) list.progress(message);
        else if (opts.json) c.print(JSON.stringify({ time: new Date().toISOString(), step: running, status: 'progress', message }));
        else c.logger.info(`  ${message}`);
      };
      const report = (e: StepEvent): void => {
        if (e.status === 'start') running = e.step;
        if (list) return list.event(e);
        if (opts.json) return c.print(JSON.stringify({ time: new Date().toISOString(), ...e }));
        if (e.status === 'start') c.logger.info(`▶ ${e.step}`);
        else if (e.status === 'done') c.logger.info(`✔ ${e.step} (${(e.ms! / 1000).toFixed(1)} s)`);
        else if (e.status === 'skipped') c.logger.info(`- ${e.step}: skipped (${e.reason})`);
        else c.logger.error(`✘ ${e.step}: ${e.reason}`);
      };
      const started = performance.now();
      try {
        const timings = await runSteps(steps, build, report).finally(() => list?.finished);
        const seconds = Number(((performance.now() - started) / 1000).toFixed(1));
        if (opts.stage === 'rootfs') {
          if (opts.json) c.print(JSON.stringify({ result: { rootfs: build.state.rootfsTar, manifest: build.state.manifestFile, bytes: build.state.rootfsBytes, seconds, steps: timings } }));
          else c.print(`${build.state.rootfsTar} (${formatBytes(build.state.rootfsBytes as number)}) in ${seconds} s\n${build.state.manifestFile}`);
          return;
        }
        const manifest = readManifest(join(opts.out, `${rootfsName(build)}.manifest.json`));
        const result = buildReport(build, timings, seconds, manifest);
        const reportFile = join(opts.out, `${rootfsName(build)}.report.json`);
        await writeFileAtomic(reportFile, `${JSON.stringify(result, null, 2)}\n`);
        if (opts.json) c.print(JSON.stringify({ result: { ...result, report: reportFile } }));
        else c.print(`${reportTable(result)}\n\n${reportFile}`);
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    });
}
