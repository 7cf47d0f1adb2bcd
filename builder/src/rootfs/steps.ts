import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { buildAgent } from '../../../agent/build.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { findTool, quoteCommand, requireTools, runPlan, type CommandPlan } from '#common/exec.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { encodePublicKey, keyIdHex, parsePublicKey, type MinisignPublicKey } from '#common/minisign.ts';
import type { Image } from '#common/schema/image.ts';
import { renderImageFiles } from '../render/index.ts';
import { artifactSources, artifactsFor } from '../components/catalog.ts';
import { fetchArtifacts } from '../components/fetch.ts';
import { readLock } from '../components/lock.ts';
import { say, type BuildContext, type Step } from '../build/steps.ts';
import { parseRootSource } from './sources/index.ts';
import { rootPackages } from './packages.ts';

const ROOT = new URL('../../../', import.meta.url).pathname;

export function rootfsName(ctx: BuildContext): string {
  return `${ctx.image.name}-${ctx.image.version}-${ctx.image.arch}`;
}

const staging = (ctx: BuildContext): string => join(ctx.workDir, 'staging');
const put = (ctx: BuildContext, path: string): string => join(staging(ctx), path.replace(/^\/+/, ''));

/** Units enabled in every image, and those of the Kubernetes layer. */
export function enabledUnits(ctx: Pick<BuildContext, 'image'>): string[] {
  const units = ['geminik8s-grow.service', 'geminik8s-agent.service', 'geminik8s-ready.service', 'geminik8s-install.service', 'systemd-networkd.service'];
  if (ctx.image.kubernetes.enabled) units.push('kine.service', 'k3s.service', 'kube-vip.service');
  if (ctx.image.boot.debugShell) units.push('geminik8s-debug-shell.service');
  return units;
}

/** Lines appended to Debian's os-release: our image on top of Debian's. */
export function osReleaseFragment(image: BuildContext['image']): string {
  return `VARIANT="geminik8s"\nVARIANT_ID=geminik8s\nIMAGE_ID=${image.name}\nIMAGE_VERSION=${image.version}\n`;
}

/** The steps of `geminik8s build --stage rootfs`. */
/** Where the image's trusted upgrade keys go in the root (the agent's first trustedKeyDirs entry). */
export const UPGRADE_KEYS_DIR = '/usr/share/geminik8s/upgrade-keys';

/** The image's `upgrade.trustedKeys`, read and parsed; a bad entry names the image file and field. */
export async function readTrustedKeys(image: Image, imageFile: string): Promise<MinisignPublicKey[]> {
  const keys: MinisignPublicKey[] = [];
  for (const [i, rel] of image.upgrade.trustedKeys.entries()) {
    const file = isAbsolute(rel) ? rel : join(dirname(imageFile), rel);
    const where = `${imageFile}: upgrade.trustedKeys.${i}`;
    const text = await readFile(file, 'utf8').catch((err: Error) => {
      throw new GeminiError(`${where}: cannot read ${file} (${err.message}); expected a minisign public key file (geminik8s keygen)`, ExitCode.invalidInput);
    });
    try {
      keys.push(parsePublicKey(text, file));
    } catch (err) {
      throw new GeminiError(`${where}: ${(err as Error).message}`, ExitCode.invalidInput);
    }
  }
  return keys;
}

export async function trustedKeyIds(image: Image, imageFile: string): Promise<string[]> {
  return (await readTrustedKeys(image, imageFile)).map((k) => keyIdHex(k.keyId));
}

export const ROOTFS_STEPS: Step[] = [
  {
    name: 'check host tools',
    async run(ctx) {
      // The docker source needs an engine (checked by the source), not mmdebstrap.
      const source = ctx.state.rootSource?.name ?? 'mmdebstrap';
      await requireTools(source === 'docker' ? ['tar'] : ['mmdebstrap', 'tar']);
      if (ctx.image.arch === hostArch()) return;
      // mmdebstrap refuses a foreign architecture without arch-test.
      if (!(await findTool('arch-test'))) {
        throw new GeminiError(`building an ${ctx.image.arch} root on ${hostArch()} needs \`arch-test\` (mmdebstrap's foreign-architecture check): install the Debian packages arch-test qemu-user-static binfmt-support (apt-get install arch-test qemu-user-static binfmt-support), or run scripts/install-host-deps.sh`, ExitCode.missingTool);
      }
      // A foreign root runs its maintainer scripts through qemu-user's binfmt entry. On a fresh
      // machine (CI, containers without systemd as PID 1) binfmt_misc may be unmounted or the
      // entry missing: mount it and register the entry before giving up. QEMU 8 and later ship
      // the entry for systemd-binfmt (/usr/lib/binfmt.d); 7.2's qemu-user-static for binfmt-support.
      const binfmt = '/proc/sys/fs/binfmt_misc';
      const entry = `qemu-${ctx.image.arch === 'arm64' ? 'aarch64' : 'x86_64'}`;
      const enabled = (): boolean => existsSync(`${binfmt}/${entry}`) && readFileSync(`${binfmt}/${entry}`, 'utf8').startsWith('enabled');
      if (!enabled()) {
        const conf = `/usr/lib/binfmt.d/${entry}.conf`;
        const plans: CommandPlan[] = [
          ...(existsSync(`${binfmt}/register`) ? [] : [{ cmd: 'mount', args: ['-t', 'binfmt_misc', 'binfmt_misc', binfmt] }]),
          existsSync(conf) ? { cmd: '/usr/lib/systemd/systemd-binfmt', args: [conf] } : { cmd: 'update-binfmts', args: ['--enable', entry] },
        ];
        for (const plan of plans) {
          ctx.logger.info(`  ${quoteCommand(plan)}`);
          await runPlan(plan, { allowFailure: true }).catch(() => undefined);
        }
      }
      if (!enabled()) {
        throw new GeminiError(`building an ${ctx.image.arch} root on ${hostArch()} needs binfmt emulation (${binfmt}/${entry}), and enabling it failed: install qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support), then run \`/usr/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/${entry}.conf\` (QEMU 8 and later) or \`update-binfmts --enable ${entry}\` as root`, ExitCode.missingTool);
      }
    },
  },
  {
    name: 'fetch upstream components',
    skip: (ctx) => (ctx.image.kubernetes.enabled ? false : 'the Kubernetes layer is off'),
    async run(ctx) {
      const specs = artifactsFor(ctx.image, artifactSources());
      ctx.state.artifacts = await fetchArtifacts(specs, {
        cacheDir: join(ctx.cacheDir, 'artifacts'), artifactsDir: ctx.artifactsDir, offline: ctx.offline,
        lock: readLock(join(dirname(ctx.imageFile), 'components.lock.json')),
        onProgress: (name, got, total) => say(ctx, `download ${name}: ${Math.round(got / 1048576)} MiB${total ? ` of ${Math.round(total / 1048576)} MiB (${Math.floor((got / total) * 100)}%)` : ''}`),
      });
    },
  },
  {
    name: 'stage files: overlays, units, agent, components, manifest',
    async run(ctx) {
      const dir = staging(ctx);
      await rm(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      cpSync(join(ROOT, 'overlays'), dir, { recursive: true });
      for (const f of renderImageFiles(ctx.image).filter((x) => x.scope === 'image')) {
        mkdirSync(dirname(put(ctx, f.path)), { recursive: true });
        writeFileSync(put(ctx, f.path), f.content, { mode: f.mode });
      }
      mkdirSync(put(ctx, '/usr/lib/geminik8s'), { recursive: true });
      await buildAgent(put(ctx, '/usr/lib/geminik8s/agent.mjs'));
      const artifacts = ctx.state.artifacts ?? [];
      for (const a of artifacts) {
        const dest = put(ctx, a.spec.installPath);
        await mkdir(dirname(dest), { recursive: true });
        await copyFile(a.path, dest);
        await chmod(dest, a.spec.mode);
      }
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      const manifest = {
        image: ctx.image.name, version: ctx.image.version, arch: ctx.image.arch, base: `debian/${ctx.image.base.suite}`,
        kubernetes: ctx.image.kubernetes.enabled,
        components: {
          postgresql: { major: ctx.image.components.postgresql.major, source: 'debian' },
          ...Object.fromEntries(artifacts.map((a) => [`${a.spec.component}:${a.spec.name}`, { version: a.spec.version, sha256: a.sha256 }])),
        },
        packages: rootPackages(ctx.image),
        builder: `geminik8s ${pkg.version}`,
        buildTime: new Date(ctx.sourceDateEpoch * 1000).toISOString(),
      };
      mkdirSync(put(ctx, '/usr/share/geminik8s'), { recursive: true });
      // Upgrade bundles signed by these keys are accepted by nodes running this image.
      for (const key of await readTrustedKeys(ctx.image, ctx.imageFile)) {
        mkdirSync(put(ctx, UPGRADE_KEYS_DIR), { recursive: true });
        writeFileSync(put(ctx, `${UPGRADE_KEYS_DIR}/${keyIdHex(key.keyId)}.pub`), encodePublicKey(key), { mode: 0o644 });
      }
      writeFileSync(put(ctx, '/usr/share/geminik8s/manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
      // Inputs of customize-root.sh, which every root source runs inside the root.
      mkdirSync(put(ctx, NODE_PATHS.buildDir), { recursive: true });
      writeFileSync(put(ctx, `${NODE_PATHS.buildDir}/enabled-units`), `${enabledUnits(ctx).join('\n')}\n`);
      writeFileSync(put(ctx, `${NODE_PATHS.buildDir}/os-release`), osReleaseFragment(ctx.image));
      ctx.state.manifest = manifest;
    },
  },
  {
    name: 'build the root',
    async run(ctx) {
      // --rootfs: mmdebstrap (default), docker[:BASE] or tar:PATH; each lays the staging tree over
      // its root and runs customize-root.sh inside, so all make the same node OS.
      const source = ctx.state.rootSource ?? parseRootSource('mmdebstrap');
      const sourceCtx = { image: ctx.image, staging: staging(ctx), cacheDir: ctx.cacheDir, workDir: ctx.workDir, sourceDateEpoch: ctx.sourceDateEpoch, baseCache: ctx.baseCache, logger: ctx.logger, progress: (m: string) => say(ctx, m) };
      ctx.logger.info(`  root source: ${source.origin}`);
      await source.check(sourceCtx);
      // The manifest, in the root and next to it, records how the root was made.
      const manifest = { ...ctx.state.manifest!, rootSource: { name: source.name, origin: source.origin } };
      writeFileSync(put(ctx, '/usr/share/geminik8s/manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
      ctx.state.manifest = manifest;
      const tmp = join(ctx.outDir, `.${rootfsName(ctx)}.rootfs.tar.tmp-${process.pid}`);
      try {
        await source.produce(sourceCtx, tmp);
      } catch (err) {
        await rm(tmp, { force: true });
        throw err;
      }
      const final = join(ctx.outDir, `${rootfsName(ctx)}.rootfs.tar`);
      await rename(tmp, final);
      ctx.state.rootfsTar = final;
      ctx.state.rootfsBytes = (await stat(final)).size;
    },
  },
  {
    name: 'write the manifest next to the root',
    async run(ctx) {
      const out = join(ctx.outDir, `${rootfsName(ctx)}.manifest.json`);
      await writeFileAtomic(out, `${JSON.stringify({ ...ctx.state.manifest, rootfsTar: `${rootfsName(ctx)}.rootfs.tar`, rootfsBytes: ctx.state.rootfsBytes }, null, 2)}\n`);
      ctx.state.manifestFile = out;
    },
  },
];

function hostArch(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}
