import type { CommandPlan } from '#common/exec.ts';
import type { Image } from '#common/schema/image.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { rootPackages } from './packages.ts';

/** Paths dpkg never writes into the root: documentation, manuals, translations. */
export const DPKG_EXCLUDES = [
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/lintian/*',
];

/** apt settings of every root: no translations, no recommended packages. */
export const APT_OPTIONS = ['Acquire::Languages "none"', 'APT::Install-Recommends "false"'];

/**
 * Staging files that must be in the root before the packages install, so that their scripts
 * do less: Debian's default PostgreSQL cluster is never made (initdb, then deleted), and the
 * kernel's initramfs is made with MODULES=list instead of every storage driver (the customize
 * script makes the real one, with our hook).
 */
export const EARLY_STAGING_FILES = ['etc/postgresql-common/createcluster.d/geminik8s.conf', 'etc/initramfs-tools/conf.d/geminik8s'];

/**
 * mmdebstrap setup hooks that put `EARLY_STAGING_FILES` into the root before any package. The
 * copy is mmdebstrap's `copy-in`, which reads as the invoking user: in unshare mode (a rootless
 * build) a hook runs as the namespace's root, a subordinate uid that cannot read the builder's
 * private staging directory (a plain `cp` failed there with "Permission denied").
 */
export function earlyStagingHooks(staging: string): string[] {
  return EARLY_STAGING_FILES.flatMap((f) => {
    const dir = f.slice(0, f.lastIndexOf('/'));
    return [`--setup-hook=mkdir -p "$1/${dir}"`, `--setup-hook=copy-in ${staging}/${f} /${dir}`];
  });
}

/**
 * The staging tree packed with every entry owned by root, as a root build has it. mmdebstrap's
 * `sync-in` keeps the builder's uid: a rootless build (unshare mode) made /usr/bin, /etc/geminik8s
 * and the agent owned by the build user's uid in the image.
 */
export function stagingTarPlan(staging: string, output: string): CommandPlan {
  return {
    cmd: 'tar',
    args: ['--create', `--file=${output}`, `--directory=${staging}`, '--owner=0', '--group=0', '--numeric-owner', '--sort=name', '.'],
    title: 'pack the staging tree',
  };
}

/**
 * The hooks every mmdebstrap-run source ends with: the staging tree (packed by
 * `stagingTarPlan`) laid over the root, then the customize script run inside it (the
 * Containerfile does the same with COPY and RUN).
 */
export function stagingHooks(stagingTar: string): string[] {
  return [
    `--customize-hook=tar-in ${stagingTar} /`,
    // The same script the Containerfile runs: units, initramfs, kernel links, identity removed.
    `--customize-hook=chroot "$1" ${NODE_PATHS.customizeScript}`,
  ];
}

export interface RootfsPlanInput {
  image: Image;
  /** Where the finished tar goes (a temporary name; the caller renames it). */
  output: string;
  /** Files laid over the root after the packages: overlays, rendered units, agent, manifest. */
  staging: string;
  /** The same, packed by `stagingTarPlan`. */
  stagingTar: string;
  /** Reused between builds: downloaded .deb files. */
  aptCache: string;
  sourceDateEpoch: number;
}

/** The packages' part of every mmdebstrap call that installs them: options, apt cache, early files. */
function packageArgs(input: Pick<RootfsPlanInput, 'image' | 'staging' | 'aptCache'>): string[] {
  const { image } = input;
  return [
    '--variant=apt',
    // The output is a temporary name, so the format cannot come from its extension.
    '--format=tar',
    `--arch=${image.arch}`,
    '--components=main',
    `--include=${rootPackages(image).join(',')}`,
    ...APT_OPTIONS.map((o) => `--aptopt=${o}`),
    ...DPKG_EXCLUDES.map((o) => `--dpkgopt=${o}`),
    '--skip=download/empty',
    '--skip=essential/unlink',
    '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
    `--setup-hook=sync-in ${input.aptCache} /var/cache/apt/archives/`,
    ...earlyStagingHooks(input.staging),
    `--customize-hook=sync-out /var/cache/apt/archives ${input.aptCache}`,
    // The cache's apt lock goes too: synced in from the builder's cache, a rootless build left
    // it owned by the build user's uid in the root.
    '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/lock',
  ];
}

/**
 * The environment of an mmdebstrap run. A foreign arm64 root runs its maintainer scripts and the
 * customize script under qemu-user, whose default CPU emulates QARMA5 pointer authentication on
 * every call of Debian's branch-protected code; QEMU's own hash is 3x faster (python3 under
 * qemu-aarch64 here) and changes nothing in the root.
 */
export function mmdebstrapEnv(image: Pick<Image, 'arch'>, sourceDateEpoch: number): Record<string, string> {
  const env: Record<string, string> = { SOURCE_DATE_EPOCH: String(sourceDateEpoch) };
  if (image.arch === 'arm64' && process.arch !== 'arm64') env.QEMU_CPU = 'max,pauth-impdef=on';
  return env;
}

/**
 * The mmdebstrap call that builds a root tar in one pass (`--no-base-cache`, or when the mirror's
 * InRelease cannot be read). Rootless-friendly and reproducible (SOURCE_DATE_EPOCH); downloaded
 * packages are kept in `aptCache` for the next build, and neither the cache nor apt's lists end
 * up in the root.
 */
export function mmdebstrapPlan(input: RootfsPlanInput): CommandPlan {
  const { image } = input;
  const args = [...packageArgs(input), ...stagingHooks(input.stagingTar), image.base.suite, input.output, image.base.mirror];
  return { cmd: 'mmdebstrap', args, env: mmdebstrapEnv(image, input.sourceDateEpoch), title: `mmdebstrap ${image.base.suite} ${image.arch}` };
}

/**
 * The base root of the cache: the same packages as `mmdebstrapPlan`, nothing of the staging tree
 * but its early files, and no /dev (mmdebstrap makes its own when the base is laid in again).
 */
export function mmdebstrapBasePlan(input: Omit<RootfsPlanInput, 'stagingTar'>): CommandPlan {
  const { image } = input;
  const args = [...packageArgs(input), '--skip=output/dev', image.base.suite, input.output, image.base.mirror];
  return { cmd: 'mmdebstrap', args, env: mmdebstrapEnv(image, input.sourceDateEpoch), title: `mmdebstrap base ${image.base.suite} ${image.arch}` };
}

/**
 * mmdebstrap over a root that already has its packages: `--variant=custom` installs nothing and
 * `--skip=update` fetches no index; `hooks` bring the root in (setup) and adjust it, then the
 * same staging hooks as a one-pass build lay the staging tree over it and run the customize
 * script. mmdebstrap mounts /proc, /sys and /dev for the chroot and packs the tar as for a Debian build.
 */
export function overRootPlan(input: { image: Image; hooks: string[]; output: string; stagingTar: string; env: Record<string, string>; title: string }): CommandPlan {
  const { image } = input;
  const args = [
    '--variant=custom',
    '--format=tar',
    `--arch=${image.arch}`,
    // Nothing is installed, so no package index is fetched.
    '--skip=update',
    ...APT_OPTIONS.map((o) => `--aptopt=${o}`),
    ...DPKG_EXCLUDES.map((o) => `--dpkgopt=${o}`),
    ...input.hooks,
    ...stagingHooks(input.stagingTar),
    image.base.suite,
    input.output,
    image.base.mirror,
  ];
  return { cmd: 'mmdebstrap', args, env: input.env, title: input.title };
}

/**
 * A root from a cached base: mmdebstrap's `tar-in` unpacks the base as the invoking user (so a
 * rootless build reads its own cache), then `overRootPlan`'s staging hooks.
 */
export function fromBasePlan(input: { image: Image; base: string; output: string; stagingTar: string; sourceDateEpoch: number }): CommandPlan {
  return overRootPlan({
    image: input.image,
    hooks: [
      `--setup-hook=tar-in ${input.base} /`,
      // The base has no /dev. mmdebstrap then makes its device nodes in root mode, but in unshare
      // mode it binds the host's onto files in an existing /dev only (a rootless build stopped at
      // customize-root.sh's first `2>/dev/null`). Its own /dev entries go into the output either way.
      '--setup-hook=mkdir -p "$1/dev"',
    ],
    output: input.output,
    stagingTar: input.stagingTar,
    env: mmdebstrapEnv(input.image, input.sourceDateEpoch),
    title: `mmdebstrap ${input.image.arch} from the base ${input.base}`,
  });
}
