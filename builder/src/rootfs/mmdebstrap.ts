import type { CommandPlan } from '../../../common/exec.ts';
import type { Image } from '../../../common/schema/image.ts';
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

export interface RootfsPlanInput {
  image: Image;
  /** Where the finished tar goes (a temporary name; the caller renames it). */
  output: string;
  /** Files laid over the root after the packages: overlays, rendered units, agent, manifest. */
  staging: string;
  /** Reused between builds: downloaded .deb files. */
  aptCache: string;
  sourceDateEpoch: number;
  /** Units enabled in the image. */
  enableUnits: string[];
}

/**
 * The mmdebstrap call that builds a root tar. Rootless-friendly and reproducible
 * (SOURCE_DATE_EPOCH); downloaded packages are kept in `aptCache` for the next build, and
 * neither the cache nor apt's lists end up in the root.
 */
export function mmdebstrapPlan(input: RootfsPlanInput): CommandPlan {
  const { image } = input;
  const hook = (s: string): string => s;
  const args = [
    '--variant=apt',
    // The output is a temporary name, so the format cannot come from its extension.
    '--format=tar',
    `--arch=${image.arch}`,
    '--components=main',
    `--include=${rootPackages(image).join(',')}`,
    '--aptopt=Acquire::Languages "none"',
    '--aptopt=APT::Install-Recommends "false"',
    ...DPKG_EXCLUDES.map((o) => `--dpkgopt=${o}`),
    '--skip=download/empty',
    '--skip=essential/unlink',
    '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
    `--setup-hook=sync-in ${input.aptCache} /var/cache/apt/archives/`,
    `--customize-hook=sync-out /var/cache/apt/archives ${input.aptCache}`,
    hook('--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin'),
    hook('--customize-hook=rm -rf "$1"/var/lib/apt/lists/*'),
    // update-alternatives links manual pages that dpkg's path-exclude already dropped.
    hook('--customize-hook=rm -rf "$1"/usr/share/man'),
    `--customize-hook=sync-in ${input.staging} /`,
    `--customize-hook=chroot "$1" systemctl enable ${input.enableUnits.join(' ')}`,
    // Debian starts the packaged PostgreSQL cluster by default; the agent owns ours.
    hook('--customize-hook=chroot "$1" sh -c "systemctl mask postgresql.service; rm -rf /etc/postgresql/*/main /var/lib/postgresql/*/main"'),
    hook('--customize-hook=chroot "$1" sh -c "dpkg-query -W -f=\'\\${Package}\\t\\${Version}\\n\' > /usr/share/geminik8s/packages.tsv"'),
    // Per-machine identity is created on first boot (cloud-init makes SSH host keys), never baked in.
    hook('--customize-hook=rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id "$1"/etc/ssh/ssh_host_* && touch "$1"/etc/machine-id'),
    image.base.suite,
    input.output,
    image.base.mirror,
  ];
  return { cmd: 'mmdebstrap', args, env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) }, title: `mmdebstrap ${image.base.suite} ${image.arch}` };
}
