import type { CommandPlan } from '#common/exec.ts';

/** One device as `lsblk -J -b` describes it, with its partitions. */
export interface BlockDevice {
  name: string;
  path: string;
  type: string;
  size: number;
  model: string | null;
  serial: string | null;
  mountpoints: (string | null)[];
  fstype?: string | null;
  label?: string | null;
  partlabel?: string | null;
  rm?: boolean | null;
  tran?: string | null;
  children?: BlockDevice[];
}

/** lsblk with every column flash shows or checks; sizes in bytes. */
export function lsblkPlan(device: string): CommandPlan {
  return { cmd: 'lsblk', args: ['-J', '-b', '-o', 'NAME,PATH,TYPE,SIZE,MODEL,SERIAL,MOUNTPOINTS,FSTYPE,LABEL,PARTLABEL,RM,TRAN', device] };
}

/** `lsblk -J` output → the one device asked for (pure). */
export function parseLsblk(json: string): BlockDevice | undefined {
  const parsed = JSON.parse(json) as { blockdevices?: BlockDevice[] };
  return parsed.blockdevices?.[0];
}

/** Whole-disk kinds flash writes to: a disk, a loop device, an NVMe namespace or an MMC card. */
const WHOLE = new Set(['disk', 'loop']);

const mounts = (d: BlockDevice): string[] => [d, ...(d.children ?? []).flatMap((c) => [c, ...(c.children ?? [])])].flatMap((x) => x.mountpoints.filter((m): m is string => Boolean(m)).map((m) => `${x.path} on ${m}`));

const paths = (d: BlockDevice): string[] => [d, ...(d.children ?? []).flatMap((c) => [c, ...(c.children ?? [])])].map((x) => x.path);

/**
 * Why flash must not write `target` (pure): empty when it may. `systemDevices` are the block
 * devices behind the running system's /, /boot, /boot/efi, /usr and swap.
 */
export function refusals(target: BlockDevice, imageBytes: number, systemDevices: string[]): string[] {
  const why: string[] = [];
  if (!WHOLE.has(target.type)) why.push(`${target.path} is a ${target.type}, not a whole disk${target.type === 'part' ? ': give the disk it belongs to (for /dev/sdb1, /dev/sdb)' : ''}`);
  const m = mounts(target);
  if (m.length) why.push(`${target.path} is in use: ${m.join(', ')} (unmount it first)`);
  const sys = paths(target).filter((p) => systemDevices.includes(p));
  if (sys.length) why.push(`${target.path} holds the running system (${sys.join(', ')})`);
  if (target.size < imageBytes) why.push(`${target.path} has ${target.size} bytes, the image needs ${imageBytes}`);
  return why;
}

const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(1)} GiB`;

/** What the operator sees before saying yes (pure). */
export function describeTarget(d: BlockDevice): string {
  const lines = [`${d.path}: ${d.model?.trim() || 'unknown model'}, serial ${d.serial?.trim() || 'unknown'}, ${gib(d.size)} (${d.size} bytes)${d.tran ? `, ${d.tran}` : ''}${d.rm ? ', removable' : ''}`];
  const parts = d.children ?? [];
  if (parts.length === 0) lines.push('  no partitions');
  for (const p of parts) lines.push(`  ${p.path}  ${gib(p.size)}  ${p.fstype ?? '-'}  ${p.label ?? p.partlabel ?? ''}`.trimEnd());
  return lines.join('\n');
}

