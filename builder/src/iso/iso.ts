import { closeSync, existsSync, mkdirSync, openSync, realpathSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { fileHead } from '#common/fsutil.ts';
import { LIVE_MEDIUM } from '#common/install/media.ts';
import { editedCopy } from '../seed/into-image.ts';

/**
 * Where the installer ISO keeps what it boots and installs. The live boot reads `root` from the
 * medium (scripts/geminik8s-live), the installer reads `image` and `seed` from it.
 */
export const ISO_FILES = {
  kernel: 'live/vmlinuz',
  initrd: 'live/initrd.img',
  root: 'live/root.squashfs',
  image: 'live/image.raw.zst',
  /** Filled by `geminik8s seed --into ISO`; in the ISO that `build` writes, an empty slot (JSON `null`). */
  seed: 'geminik8s/seed.json',
} as const;

/**
 * The ISO's volume ID (pure): the live boot finds its medium by this label. ISO 9660 allows
 * A-Z, 0-9 and _, and at most 32 of them.
 */
export function isoVolumeId(name: string, version: string): string {
  return `GK_${name}_${version}`.toUpperCase().replace(/[^A-Z0-9_]/g, '_').slice(0, 32);
}

export interface IsoBoot {
  arch: 'amd64' | 'arm64';
  volumeId: string;
  /** The image definition's kernel arguments (kernelCmdline). */
  cmdline: string;
  rootfsType: string;
  /** The root image's sha256: the live boot checks it before mounting. */
  rootSha256: string;
  title: string;
}

/** The kernel arguments of the ISO's live installer (pure). */
export function isoKernelArgs(o: IsoBoot, dryRun: boolean): string[] {
  return [
    'boot=geminik8s-live',
    `geminik8s.live=file:/${ISO_FILES.root}`,
    `geminik8s.live.label=${o.volumeId}`,
    `geminik8s.live.sha256=${o.rootSha256}`,
    `rootfstype=${o.rootfsType}`,
    'ro',
    `geminik8s.install.image_url=file://${LIVE_MEDIUM}/${ISO_FILES.image}`,
    `geminik8s.install.seed_url=file://${LIVE_MEDIUM}/${ISO_FILES.seed}`,
    ...(dryRun ? ['geminik8s.install.dry_run=1'] : []),
    o.cmdline,
  ];
}

/**
 * The ISO's grub.cfg (pure, text): install, or a dry run that shows the disk the rules choose
 * and writes nothing. The menu waits 5 s on the console and, on amd64, the first serial port
 * (arm64 firmware brings its serial console through EFI's, as the disk image's menu does).
 */
export function isoGrubCfg(o: IsoBoot): string {
  const entry = (title: string, dryRun: boolean): string[] => [
    `menuentry '${title.replaceAll("'", '')}' {`,
    `  linux /${ISO_FILES.kernel} ${isoKernelArgs(o, dryRun).join(' ')}`,
    `  initrd /${ISO_FILES.initrd}`,
    '}',
  ];
  return [
    `# ${o.title}: written by geminik8s build --output iso`,
    ...(o.arch === 'amd64' ? ['serial --unit=0 --speed=115200', 'terminal_input console serial', 'terminal_output console serial'] : []),
    'set default=0',
    'set timeout=5',
    ...entry(`Install ${o.title} onto the disk its seed names`, false),
    ...entry('Dry run: show the disk the rules choose, write nothing', true),
    '',
  ].join('\n');
}

/**
 * The seed's place in the ISO: a file of this many bytes that `seed --into` overwrites in a copy,
 * in place. (Adding a file with xorriso's boot replay fails on grub-mkrescue's GPT: "GPT
 * partitions 1 and 2 overlap", xorriso 1.5.4.) JSON allows the padding: trailing whitespace.
 */
export const SEED_SLOT_BYTES = 1024 * 1024;

/** The seed slot of an ISO that carries no seed yet: `null`, padded (pure). */
export function emptySeedSlot(): Buffer {
  const b = Buffer.alloc(SEED_SLOT_BYTES, 0x20);
  b.write('null', 0, 'latin1');
  b[SEED_SLOT_BYTES - 1] = 0x0a;
  return b;
}

/** `text` padded to the seed slot (pure); undefined when it does not fit. */
export function fillSeedSlot(text: string): Buffer | undefined {
  const body = Buffer.from(text, 'utf8');
  if (body.length > SEED_SLOT_BYTES - 1) return undefined;
  const b = Buffer.alloc(SEED_SLOT_BYTES, 0x20);
  body.copy(b);
  b[SEED_SLOT_BYTES - 1] = 0x0a;
  return b;
}

/** Escapes a path for xorriso's `-graft-points` (`=` and `\` are special). */
const graft = (p: string): string => p.replaceAll('\\', '\\\\').replaceAll('=', '\\=');

/**
 * grub-mkrescue's hybrid ISO (pure): El Torito for BIOS, an EFI system image for UEFI, and an
 * MBR so that the same file boots written to a USB stick. `files` map ISO paths to host files
 * (graft points, no copies); what follows `--` goes to xorriso. Without `moduleDir` it takes
 * every GRUB platform installed on the host (i386-pc and x86_64-efi for amd64); with it, that
 * one platform only: the arm64 root's arm64-efi, so that no x86 boot record lands on an arm64 ISO.
 */
export function grubMkrescuePlan(tree: string, files: Record<string, string>, out: string, volumeId: string, sourceDateEpoch: number, moduleDir?: string): CommandPlan {
  return {
    cmd: 'grub-mkrescue',
    args: [...(moduleDir ? ['--directory', moduleDir] : []), '--output', out, tree, ...Object.entries(files).map(([to, from]) => `${graft(to)}=${graft(from)}`), '--', '-volid', volumeId],
    env: { SOURCE_DATE_EPOCH: String(sourceDateEpoch) },
    title: `grub-mkrescue ${basename(out)}`,
  };
}

/** Where a file's data starts in an ISO, and its size: xorriso's report_lba (pure plan). */
export function reportLbaPlan(iso: string, path: string): CommandPlan {
  return { cmd: 'xorriso', args: ['-indev', iso, '-find', `/${path}`, '-exec', 'report_lba', '--'], title: `xorriso report_lba /${path}` };
}

/** The byte offset and size of `path` from report_lba's output (pure); undefined when absent or in several extents. */
export function parseReportLba(stdout: string, path: string): { offset: number; bytes: number } | undefined {
  const rows = stdout.split('\n').filter((l) => l.startsWith('File data lba:') && l.includes(`'/${path}'`));
  if (rows.length !== 1) return undefined;
  const m = /^File data lba:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,/.exec(rows[0]!);
  if (!m || m[1] !== '0') return undefined;
  return { offset: Number(m[2]) * 2048, bytes: Number(m[4]) };
}

/**
 * The host files the ISO grafts, by their ISO path: the kernel and initrd of the root tree
 * `tree` (its boot/vmlinuz and boot/initrd.img are symlinks, which a graft would carry into the
 * ISO as links to nothing), the slot image and the compressed disk image.
 */
export function isoFiles(tree: string, rootImage: string, imageZst: string): Record<string, string> {
  return { [ISO_FILES.kernel]: realpathSync(join(tree, 'boot/vmlinuz')), [ISO_FILES.initrd]: realpathSync(join(tree, 'boot/initrd.img')), [ISO_FILES.root]: rootImage, [ISO_FILES.image]: imageZst };
}

/** The tree grub-mkrescue starts from (imperative): the menu and the empty seed slot; the big files are grafted. */
export function stageIsoTree(dir: string, boot: IsoBoot): void {
  mkdirSync(join(dir, 'boot/grub'), { recursive: true });
  writeFileSync(join(dir, 'boot/grub/grub.cfg'), isoGrubCfg(boot));
  mkdirSync(join(dir, dirname(ISO_FILES.seed)), { recursive: true });
  writeFileSync(join(dir, ISO_FILES.seed), emptySeedSlot());
}

/** True when `file` starts like an ISO 9660 image (its primary volume descriptor at 32 KiB). */
export function isIso9660(file: string): boolean {
  return fileHead(file, 32774).subarray(32769, 32774).toString('latin1') === 'CD001';
}

/**
 * Copy the installer ISO `iso` to `out` with `payload` (the seed, as JSON) in its seed slot,
 * written in place: the boot records are untouched (see editedCopy for the copy).
 */
export async function seedIntoIso(iso: string, out: string, payload: string, force: boolean): Promise<void> {
  if (existsSync(out) && !force) throw new GeminiError(`${out} already exists; pass --force to replace it`, ExitCode.refused);
  const at = parseReportLba((await runPlan(reportLbaPlan(iso, ISO_FILES.seed), { allowFailure: true })).stdout, ISO_FILES.seed);
  if (!at || at.bytes !== SEED_SLOT_BYTES) throw new GeminiError(`--into ${iso}: an ISO 9660 image without a ${SEED_SLOT_BYTES}-byte /${ISO_FILES.seed}; give an ISO that geminik8s build --output iso wrote`, ExitCode.invalidInput);
  const slot = fillSeedSlot(payload);
  if (!slot) throw new GeminiError(`the seed is ${Buffer.byteLength(payload)} bytes; the ISO's seed slot holds ${SEED_SLOT_BYTES - 1}`, ExitCode.invalidInput);
  await editedCopy(iso, out, async (copy) => {
    const fd = openSync(copy, 'r+');
    try {
      writeSync(fd, slot, 0, slot.length, at.offset);
    } finally {
      closeSync(fd);
    }
  });
}
