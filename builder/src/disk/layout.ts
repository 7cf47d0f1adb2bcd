import { createHash } from 'node:crypto';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { PARTITION_NUMBERS } from '#common/render/paths.ts';
import type { Image } from '#common/schema/image.ts';
import { formatBytes } from '#common/schema/units.ts';

export const SECTOR = 512;
const MiB = 1024 ** 2;
/** Partitions start on 1 MiB boundaries; the first MiB holds the MBR and the primary GPT. */
const ALIGN = MiB;

export type PartitionRole = keyof typeof PARTITION_NUMBERS;

/** GPT partition type GUIDs (UEFI spec; Discoverable Partitions Specification for roots). */
export const GPT_TYPES = {
  biosBoot: '21686148-6449-6E6F-744E-656564454649',
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  basicData: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  linuxData: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  rootAmd64: '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
  rootArm64: 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE',
} as const;

export interface PartitionPlan {
  number: number;
  role: PartitionRole;
  /** GPT partition name (PARTLABEL): the initramfs and grub.cfg find slots by it. */
  name: string;
  type: string;
  uuid: string;
  /** Byte offset and size in the image; both multiples of 1 MiB. */
  offset: number;
  size: number;
  /** Filesystem made in the partition, and its label where it has one. */
  fs: 'none' | 'vfat' | 'squashfs' | 'erofs' | 'ext4';
  label?: string;
  /** Filesystem UUID (ext4) or volume id (vfat, 8 hex digits). */
  fsId?: string;
}

export interface DiskLayout {
  diskGuid: string;
  partitions: PartitionPlan[];
  /** Image size in bytes: partitions plus room for the backup GPT. */
  size: number;
}

/** A UUID derived from a seed and a purpose: the same inputs give the same image. */
export function derivedUuid(seed: string, purpose: string): string {
  const h = createHash('sha256').update(`${seed}\0${purpose}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex').toUpperCase();
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** A FAT volume id (8 hex digits), derived like `derivedUuid`. */
export function derivedVolumeId(seed: string, purpose: string): string {
  return createHash('sha256').update(`${seed}\0${purpose}`).digest('hex').slice(0, 8).toUpperCase();
}

/** The seed of every identifier in one image: its name, version, architecture and SOURCE_DATE_EPOCH. */
export function layoutSeed(image: Pick<Image, 'name' | 'version' | 'arch'>, sourceDateEpoch: number): string {
  return `geminik8s/${image.name}/${image.version}/${image.arch}/${sourceDateEpoch}`;
}

/**
 * The GPT of an image, a pure function of the image definition and the seed:
 * 1 BIOS boot (1 MiB), 2 ESP, 3 config (CIDATA), 4 ROOT_A, 5 ROOT_B, 6 PERSISTENT (last, so
 * first boot can grow it to the end of a larger disk).
 */
export function planDisk(image: Pick<Image, 'name' | 'version' | 'arch' | 'partitions' | 'rootfs'>, seed: string): DiskLayout {
  const rootType = image.arch === 'arm64' ? GPT_TYPES.rootArm64 : GPT_TYPES.rootAmd64;
  const slotFs = image.rootfs.type;
  const specs: Omit<PartitionPlan, 'number' | 'offset' | 'uuid'>[] = [
    { role: 'biosBoot', name: 'BIOS', type: GPT_TYPES.biosBoot, size: MiB, fs: 'none' },
    { role: 'esp', name: 'ESP', type: GPT_TYPES.esp, size: image.partitions.esp, fs: 'vfat', label: 'ESP', fsId: derivedVolumeId(seed, 'fs/esp') },
    // Basic data, so Windows and macOS show it to a person editing the seed after flashing.
    { role: 'config', name: 'CONFIG', type: GPT_TYPES.basicData, size: image.partitions.config, fs: 'vfat', label: 'CIDATA', fsId: derivedVolumeId(seed, 'fs/config') },
    { role: 'rootA', name: 'ROOT_A', type: rootType, size: image.partitions.root, fs: slotFs },
    { role: 'rootB', name: 'ROOT_B', type: rootType, size: image.partitions.root, fs: slotFs },
    { role: 'persistent', name: 'PERSISTENT', type: GPT_TYPES.linuxData, size: image.partitions.persistent, fs: 'ext4', label: 'PERSISTENT', fsId: derivedUuid(seed, 'fs/persistent').toLowerCase() },
  ];
  let offset = ALIGN;
  const partitions = specs.map((s) => {
    const p: PartitionPlan = { number: PARTITION_NUMBERS[s.role], offset, uuid: derivedUuid(seed, `part/${s.name}`), ...s };
    offset += Math.ceil(s.size / ALIGN) * ALIGN;
    return p;
  });
  return { diskGuid: derivedUuid(seed, 'disk'), partitions, size: offset + ALIGN };
}

/** The partition with this role. */
export function partition(layout: DiskLayout, role: PartitionRole): PartitionPlan {
  const p = layout.partitions.find((x) => x.role === role);
  if (!p) throw new GeminiError(`the disk layout has no ${role} partition`, ExitCode.internal);
  return p;
}

/** Refuse content that does not fit its partition, naming the partition and the bytes missing. */
export function assertFits(p: PartitionPlan, contentBytes: number, what: string): void {
  if (contentBytes <= p.size) return;
  const missing = contentBytes - p.size;
  throw new GeminiError(
    `${what} does not fit partition ${p.number} (${p.name}): ${formatBytes(contentBytes)} into ${formatBytes(p.size)}, ${missing} bytes (${formatBytes(missing)}) missing; raise partitions.${p.role === 'rootA' || p.role === 'rootB' ? 'root' : p.role} in the image definition`,
    ExitCode.invalidInput,
  );
}

/** The sfdisk script that writes this GPT (sizes and offsets in sectors). */
export function sfdiskScript(layout: DiskLayout): string {
  const lines = ['label: gpt', `label-id: ${layout.diskGuid}`, 'unit: sectors', 'first-lba: 2048', `last-lba: ${layout.size / SECTOR - 34}`, ''];
  for (const p of layout.partitions) {
    lines.push(`start=${p.offset / SECTOR}, size=${p.size / SECTOR}, type=${p.type}, uuid=${p.uuid}, name="${p.name}"`);
  }
  return `${lines.join('\n')}\n`;
}
