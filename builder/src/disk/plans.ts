import { quoteCommand, shellQuote, type CommandPlan } from '#common/exec.ts';
import type { Image } from '#common/schema/image.ts';
import type { PartitionPlan } from './layout.ts';

/** Modules built into every GRUB core image: enough to read the ESP and a slot, and run grub.cfg. */
export const GRUB_MODULES = [
  'part_gpt', 'part_msdos', 'fat', 'squash4', 'ext2', 'gzio', 'xzio', 'lzopio',
  'normal', 'configfile', 'linux', 'boot', 'loadenv', 'regexp', 'test', 'echo', 'search', 'search_fs_uuid',
  'serial', 'terminal', 'reboot', 'halt', 'sleep', 'cat', 'ls',
];
const PLATFORM_MODULES: Record<GrubTarget, string[]> = {
  'i386-pc': ['biosdisk'],
  'x86_64-efi': ['efi_gop', 'all_video'],
  'arm64-efi': ['efi_gop', 'all_video'],
};

export type GrubTarget = 'i386-pc' | 'x86_64-efi' | 'arm64-efi';

/** Where GRUB finds its configuration: the ESP, found by its FAT volume id (as grub-install's load.cfg does). */
export function grubEarlyConfig(espVolumeId: string): string {
  const id = `${espVolumeId.slice(0, 4)}-${espVolumeId.slice(4)}`;
  return `search --no-floppy --fs-uuid --set=root ${id}\nset prefix=($root)/grub\n`;
}

/** grub-mkimage for one target; `moduleDir` holds that target's modules (the arm64 root's for arm64-efi). */
export function grubMkimagePlan(input: { target: GrubTarget; moduleDir: string; earlyConfig: string; output: string; sourceDateEpoch: number }): CommandPlan {
  return {
    cmd: 'grub-mkimage',
    args: ['-O', input.target, '-d', input.moduleDir, '-c', input.earlyConfig, '-p', '/grub', '-o', input.output, ...GRUB_MODULES, ...PLATFORM_MODULES[input.target]],
    env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) },
    title: `grub-mkimage ${input.target}`,
  };
}

/**
 * Extract a root tar with owners, modes, device nodes and capabilities intact; without the
 * extended attributes when `xattrs` is false (a rootless build sets them afterwards).
 */
export function extractRootPlan(tar: string, dir: string, xattrs = true): CommandPlan {
  return { cmd: 'tar', args: ['--numeric-owner', '--same-owner', ...(xattrs ? ['--xattrs', '--xattrs-include=*'] : []), '-xpf', tar, '-C', dir], title: 'extract the root' };
}

/**
 * `plan`, preceded in the same process tree by setting the extended attributes of a
 * `getfattr --dump` file (paths relative to `dir`) on that tree. fakeroot keeps faked extended
 * attributes only for the session that set them (its saved state has owners and modes, not
 * xattrs), so a rootless build sets them in the session that reads them.
 */
export function restoreXattrsThen(dump: string, dir: string, plan: CommandPlan): CommandPlan {
  return {
    cmd: 'sh',
    args: ['-ec', `cd ${shellQuote(dir)} && setfattr --restore=${shellQuote(dump)} && cd / && exec ${quoteCommand(plan)}`],
    env: plan.env,
    title: `${plan.title ?? plan.cmd} (with the root's extended attributes)`,
  };
}

/**
 * mksquashfs of a slot: every timestamp is SOURCE_DATE_EPOCH and entries are sorted, so one tree
 * gives one image. `-quiet` keeps only its progress bar (`[===|] 812/9421   8%`, redrawn with
 * carriage returns on stdout), which the build shows as the step's progress.
 */
export function squashfsPlan(input: { dir: string; output: string; compression: Image['rootfs']['compression'] | 'lzo'; sourceDateEpoch: number; blockSize?: Image['rootfs']['blockSize'] | string }): CommandPlan {
  return {
    cmd: 'mksquashfs',
    args: [input.dir, input.output, '-noappend', '-comp', input.compression, '-b', input.blockSize ?? '128K', '-quiet', '-wildcards', '-e', 'proc/*', 'sys/*', 'dev/*', 'run/*', 'tmp/*'],
    env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) },
    title: `mksquashfs (${input.compression})`,
  };
}

/** Bytes of a size written as in the image definition's `rootfs.blockSize` (`64K`, `1M`). */
function sizeBytes(size: string): number {
  const m = /^(\d+)([KM])$/.exec(size);
  if (!m) throw new Error(`not a size such as 64K or 1M: ${size}`);
  return Number(m[1]) * (m[2] === 'M' ? 1024 ** 2 : 1024);
}

/**
 * mkfs.erofs of a slot. `-T` gives every inode and the superblock SOURCE_DATE_EPOCH and `-U` a
 * fixed UUID, so one tree gives one image. `blockSize` is the largest physical cluster: a cold
 * read decompresses one cluster, as squashfs decompresses one block. lz4hc at level 12, the
 * densest that erofs-utils 1.5 (Debian 12) makes; Linux decompresses lz4 and lz4hc alike.
 */
export function erofsPlan(input: { dir: string; output: string; compression: 'lz4' | 'lz4hc'; uuid: string; sourceDateEpoch: number; blockSize?: Image['rootfs']['blockSize'] }): CommandPlan {
  return {
    cmd: 'mkfs.erofs',
    args: [
      `-z${input.compression === 'lz4hc' ? 'lz4hc,12' : 'lz4'}`, `-C${sizeBytes(input.blockSize ?? '128K')}`, `-T${input.sourceDateEpoch}`, `-U${input.uuid}`,
      '--quiet', '--exclude-regex=^(proc|sys|dev|run|tmp)/.', input.output, input.dir,
    ],
    env: { SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) },
    title: `mkfs.erofs (${input.compression})`,
  };
}

/** The percentage in a line of mksquashfs's progress bar, or undefined. */
export function squashfsPercent(line: string): number | undefined {
  const m = /\]\s+\d+\/\d+\s+(\d{1,3})%\s*$/.exec(line);
  return m ? Number(m[1]) : undefined;
}

/** mkfs.ext4 of a file, optionally filled from a directory; UUID, hash seed and times fixed. */
export function ext4Plan(input: { output: string; part: PartitionPlan; dir?: string; sourceDateEpoch: number; readOnly?: boolean }): CommandPlan {
  const uuid = input.part.fsId ?? '';
  return {
    cmd: 'mkfs.ext4',
    args: [
      '-q', '-F', '-t', 'ext4', '-L', input.part.label ?? input.part.name, '-U', uuid,
      '-E', `hash_seed=${uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0`,
      ...(input.readOnly ? ['-O', '^has_journal'] : []),
      ...(input.dir ? ['-d', input.dir] : []),
      input.output, `${input.part.size / 1024}k`,
    ],
    // mke2fs takes its clock from here when set, so timestamps in the image are fixed.
    env: { E2FSPROGS_FAKE_TIME: String(input.sourceDateEpoch), SOURCE_DATE_EPOCH: String(input.sourceDateEpoch) },
    title: `mkfs.ext4 ${input.part.name}`,
  };
}

/** mkfs.vfat of a new file the size of the partition; --invariant first, so that -i still sets the volume id. */
export function vfatPlan(input: { output: string; part: PartitionPlan; fat32: boolean }): CommandPlan {
  return {
    cmd: 'mkfs.vfat',
    args: ['-C', '--invariant', ...(input.fat32 ? ['-F', '32', '-s', '1'] : []), '-n', input.part.label ?? input.part.name, '-i', input.part.fsId ?? '', input.output, String(input.part.size / 1024)],
    title: `mkfs.vfat ${input.part.name}`,
  };
}

/** Write the GPT described by `script` (see sfdiskScript) into an image file. */
export function sfdiskPlan(image: string, script: string): CommandPlan {
  return { cmd: 'sfdisk', args: ['--no-reread', '--no-tell-kernel', '-q', image], input: script, title: 'sfdisk: write the GPT' };
}

export function qcow2Plan(raw: string, output: string): CommandPlan {
  return { cmd: 'qemu-img', args: ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zlib', raw, output], title: 'qemu-img convert to qcow2' };
}

export function zstdPlan(raw: string, output: string): CommandPlan {
  // --sparse on decompression restores holes; -T0 output does not depend on the thread count.
  return { cmd: 'zstd', args: ['-q', '-f', '-T0', '-10', '--no-progress', raw, '-o', output], title: 'zstd' };
}
