import { statSync } from 'node:fs';
import { join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { fileHead } from '#common/fsutil.ts';
import { CommandFailedError, lastLines, requireTools, runPlan, shellQuote, type CommandPlan } from '#common/exec.ts';
import type { Image } from '#common/schema/image.ts';
import { overRootPlan, stagingTarPlan } from '../mmdebstrap.ts';
import { rootPackages } from '../packages.ts';
import { runMmdebstrap } from './mmdebstrap.ts';
import type { RootSource, RootSourceContext } from './source.ts';

/** The os-release keys the build appends (osReleaseFragment); dropped first so a geminik8s root can be re-made. */
export const OS_RELEASE_KEYS = ['VARIANT', 'VARIANT_ID', 'IMAGE_ID', 'IMAGE_VERSION'];

export type Compression = 'gzip' | 'xz' | 'zstd' | 'bzip2';

/** The compression of a tarball from its first bytes (GNU tar detects it the same way). */
export function compressionOf(head: Uint8Array): Compression | undefined {
  const b = Buffer.from(head);
  if (b.subarray(0, 2).equals(Buffer.from([0x1f, 0x8b]))) return 'gzip';
  if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (b.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zstd';
  if (b.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  return undefined;
}

const DECOMPRESSOR: Record<Compression, string> = { gzip: 'gzip', xz: 'xz', zstd: 'zstd', bzip2: 'bzip2' };

// Member names as paths relative to the root: no `./`, no leading or trailing slash.
function normalizeMember(name: string): string {
  return name.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
}

/** What keeps a tarball's member list from being the root of `image`; empty when it can be. */
export function rootTarProblems(members: string[], image: Pick<Image, 'arch' | 'packages' | 'components'>): string[] {
  const have = new Set(members.map(normalizeMember));
  const problems: string[] = [];
  if (!have.has('usr/bin/dpkg') && !have.has('bin/dpkg')) problems.push('no usr/bin/dpkg: not a Debian root');
  if (!have.has('var/lib/dpkg/status')) problems.push('no var/lib/dpkg/status: no Debian package database');
  const libc = [...have].map((m) => /^var\/lib\/dpkg\/info\/libc6:([a-z0-9]+)\.list$/.exec(m)?.[1]).find(Boolean);
  if (libc && libc !== image.arch) problems.push(`the root is ${libc}, the image is ${image.arch}`);
  if (![...have].some((m) => /^boot\/vmlinuz-/.test(m))) problems.push('no kernel (boot/vmlinuz-*)');
  const info = (p: string): boolean => have.has(`var/lib/dpkg/info/${p}.list`) || have.has(`var/lib/dpkg/info/${p}:${image.arch}.list`);
  const missing = rootPackages(image).filter((p) => !info(p));
  if (missing.length) problems.push(`Debian packages not installed: ${missing.join(', ')}`);
  return problems;
}

/**
 * Check that `tarball` can be the root of `image`: a Debian root of the right architecture
 * with the image's packages installed. Unusable input exits 2, naming the file and what is missing.
 */
export async function validateRootTar(tarball: string, image: Image): Promise<void> {
  const st = statSync(tarball, { throwIfNoEntry: false });
  if (!st) throw new GeminiError(`--rootfs tar:${tarball}: no such file`, ExitCode.invalidInput);
  if (!st.isFile()) throw new GeminiError(`--rootfs tar:${tarball}: not a file; expected a root tarball (.tar, .tar.gz, .tar.xz or .tar.zst)`, ExitCode.invalidInput);
  const compression = compressionOf(fileHead(tarball, 8));
  await requireTools(['mmdebstrap', 'tar', ...(compression ? [DECOMPRESSOR[compression]] : [])]);
  let listing: string;
  try {
    listing = (await runPlan({ cmd: 'tar', args: ['--list', '--file', tarball] }, { timeoutMs: 30 * 60_000 })).stdout;
  } catch (err) {
    if (!(err instanceof CommandFailedError)) throw err;
    throw new GeminiError(`--rootfs tar:${tarball}: not a readable tarball:\n${lastLines(err.stderrTail, 5)}`, ExitCode.invalidInput);
  }
  const problems = rootTarProblems(listing.split('\n').filter(Boolean), image);
  if (problems.length) {
    throw new GeminiError(
      `${tarball} cannot be the root of image ${image.name} (${image.arch}):\n${problems.map((p) => `  - ${p}`).join('\n')}\n` +
        'a root for --rootfs tar:PATH needs the Debian packages of builder/src/rootfs/packages.ts installed (--rootfs mmdebstrap or --rootfs docker make one)',
      ExitCode.invalidInput,
    );
  }
}

export interface TarPlanInput {
  image: Image;
  /** The existing root tarball (absolute path), optionally compressed. */
  tarball: string;
  /** Where the finished tar goes (a temporary name; the caller renames it). */
  output: string;
  /** The staging tree, packed by `stagingTarPlan`. */
  stagingTar: string;
  sourceDateEpoch: number;
}

/**
 * The mmdebstrap call that makes a root from an existing tarball: `--variant=custom` installs
 * nothing, the setup hook unpacks the tarball (GNU tar detects gzip, xz, zstd; mmdebstrap's own
 * /dev is kept), then the same hooks as the mmdebstrap source lay the staging tree over it and
 * run the customize script inside. mmdebstrap mounts /proc, /sys and /dev for the chroot,
 * cleans up and packs the tar with SOURCE_DATE_EPOCH exactly as for a Debian build.
 */
export function tarSourcePlan(input: TarPlanInput): CommandPlan {
  const { image } = input;
  const untar = [
    'tar', '--extract', `--file=${input.tarball}`, '--directory="$1"',
    '--numeric-owner', '--preserve-permissions', '--xattrs', '--xattrs-include=*',
    '--anchored', '--exclude=./dev/*', '--exclude=dev/*',
  ].map((w) => (w === '--directory="$1"' ? w : shellQuote(w))).join(' ');
  const dropOsRelease = `/^(${OS_RELEASE_KEYS.join('|')})=/d`;
  return overRootPlan({
    image,
    hooks: [`--setup-hook=${untar}`, `--customize-hook=chroot "$1" sed -i -E ${shellQuote(dropOsRelease)} /usr/lib/os-release`],
    output: input.output,
    stagingTar: input.stagingTar,
    env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) },
    title: `mmdebstrap ${image.arch} from ${input.tarball}`,
  });
}

/** `--rootfs tar:PATH`: an existing root tarball with the image's packages installed. */
export function tarSource(tarball: string): RootSource {
  return {
    name: 'tar',
    origin: tarball,
    async check(ctx: RootSourceContext) {
      await validateRootTar(tarball, ctx.image);
    },
    async produce(ctx: RootSourceContext, output: string) {
      const stagingTar = join(ctx.workDir, 'staging.tar');
      await runPlan(stagingTarPlan(ctx.staging, stagingTar));
      await runMmdebstrap(tarSourcePlan({ image: ctx.image, tarball, output, stagingTar, sourceDateEpoch: ctx.sourceDateEpoch }), ctx.progress);
    },
  };
}
