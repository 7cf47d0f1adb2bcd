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

/**
 * The mmdebstrap call that builds a root tar. Rootless-friendly and reproducible
 * (SOURCE_DATE_EPOCH); downloaded packages are kept in `aptCache` for the next build, and
 * neither the cache nor apt's lists end up in the root.
 */
export function mmdebstrapPlan(input: RootfsPlanInput): CommandPlan {
  const { image } = input;
  const args = [
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
    ...stagingHooks(input.stagingTar),
    image.base.suite,
    input.output,
    image.base.mirror,
  ];
  const env: Record<string, string> = { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) };
  // A foreign arm64 root runs its maintainer scripts under qemu-user, whose default CPU emulates
  // QARMA5 pointer authentication on every call of Debian's branch-protected code; QEMU's own
  // hash is 3x faster (python3 under qemu-aarch64 here) and changes nothing in the root.
  if (image.arch === 'arm64' && process.arch !== 'arm64') env.QEMU_CPU = 'max,pauth-impdef=on';
  return { cmd: 'mmdebstrap', args, env, title: `mmdebstrap ${image.base.suite} ${image.arch}` };
}
