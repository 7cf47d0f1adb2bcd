import type { CommandPlan } from '../../../common/exec.ts';
import type { Image } from '../../../common/schema/image.ts';
import { NODE_PATHS } from '../../../common/render/paths.ts';
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

/** mmdebstrap setup hooks that put `EARLY_STAGING_FILES` into the root before any package. */
export function earlyStagingHooks(staging: string): string[] {
  return EARLY_STAGING_FILES.map((f) => `--setup-hook=mkdir -p "$1/${f.slice(0, f.lastIndexOf('/'))}" && cp '${staging}/${f}' "$1/${f}"`);
}

/**
 * The hooks every mmdebstrap-run source ends with: the staging tree laid over the root, then
 * the customize script run inside it (the Containerfile does the same with COPY and RUN).
 */
export function stagingHooks(staging: string): string[] {
  return [
    `--customize-hook=sync-in ${staging} /`,
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
    '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
    ...stagingHooks(input.staging),
    image.base.suite,
    input.output,
    image.base.mirror,
  ];
  return { cmd: 'mmdebstrap', args, env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) }, title: `mmdebstrap ${image.base.suite} ${image.arch}` };
}
