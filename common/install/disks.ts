import * as z from 'zod';
import type { CommandPlan } from '../exec.ts';
import type { ValidationIssue } from '../errors.ts';

/** A disk the installer could write, as lsblk and /dev/disk/by-* describe it. */
export interface Disk {
  /** /dev/sda, /dev/nvme0n1, /dev/vdb. */
  path: string;
  /** Names under /dev/disk/by-id and /dev/disk/by-path that point at this disk (basenames). */
  byId: string[];
  byPath: string[];
  serial: string;
  model: string;
  sizeBytes: number;
  /** nvme when the transport is NVMe, hdd when the kernel says it rotates, ssd otherwise. */
  type: DiskType;
  transport: string;
  removable: boolean;
  readOnly: boolean;
  /** Mount points of the disk and its partitions, as "/dev/sdb1 on /run/x". */
  mounts: string[];
}

export const DISK_TYPES = ['ssd', 'hdd', 'nvme'] as const;
export type DiskType = (typeof DISK_TYPES)[number];

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, KiB: 1024, M: 1024 ** 2, MiB: 1024 ** 2, G: 1024 ** 3, GiB: 1024 ** 3, T: 1024 ** 4, TiB: 1024 ** 4, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12 };

/** "64GiB", "500GB", "1T", "1048576" → bytes; undefined when it is not a size. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = SIZE_UNITS[m[2]!];
  return unit === undefined ? undefined : Math.round(Number(m[1]) * unit);
}

const sizeText = z.string().refine((s) => parseSize(s) !== undefined, { message: 'expected a size such as 64GiB, 500GB or 1T' });

/**
 * How the installer chooses its target disk: explicit rules, all of which must hold (AND). There
 * is no "auto": with no rule at all the installer refuses.
 */
export const DiskRulesSchema = z.strictObject({
  /** A device path: /dev/sda, or any /dev/disk/by-* link (resolved by the caller). */
  device: z.string().startsWith('/dev/').optional(),
  /** A name under /dev/disk/by-id (with or without that directory). */
  byId: z.string().min(1).optional(),
  /** A name under /dev/disk/by-path (with or without that directory). */
  byPath: z.string().min(1).optional(),
  serial: z.string().min(1).optional(),
  /** The disk's model; `*` and `?` match any text and any one character. */
  model: z.string().min(1).optional(),
  minSize: sizeText.optional(),
  maxSize: sizeText.optional(),
  type: z.enum(DISK_TYPES).optional(),
});
export type DiskRules = z.output<typeof DiskRulesSchema>;

/** What the installer reads from the kernel command line (geminik8s.install.*). */
export interface InstallArgs {
  /** Disk rules as given (checked later with validateDiskRules). */
  rules: Record<string, string>;
  dryRun: boolean;
  seedUrl?: string;
  imageUrl?: string;
  reportUrl?: string;
}

/** geminik8s.install.serial=…, .device, .by_id, .by_path, .model, .min_size, .max_size, .type, .dry_run, .seed_url, .image_url, .report_url (pure). */
export function rulesFromCmdline(cmdline: string): InstallArgs {
  const keys: Record<string, string> = { device: 'device', by_id: 'byId', by_path: 'byPath', serial: 'serial', model: 'model', min_size: 'minSize', max_size: 'maxSize', type: 'type' };
  const urls: Record<string, 'seedUrl' | 'imageUrl' | 'reportUrl'> = { seed_url: 'seedUrl', image_url: 'imageUrl', report_url: 'reportUrl' };
  const out: InstallArgs = { rules: {}, dryRun: false };
  for (const word of splitCmdline(cmdline)) {
    const m = /^geminik8s\.install\.([a-z_]+)=(.*)$/.exec(word);
    if (!m) continue;
    const [, key, value] = m as unknown as [string, string, string];
    if (key === 'dry_run') out.dryRun = value === '1' || value === 'true' || value === 'yes';
    else if (urls[key]) out[urls[key]] = value;
    else out.rules[keys[key] ?? key] = value;
  }
  return out;
}

/** The kernel's own splitting: spaces separate words, double quotes group them. */
function splitCmdline(cmdline: string): string[] {
  const words: string[] = [];
  let cur = '';
  let quoted = false;
  let any = false;
  for (const ch of cmdline) {
    if (ch === '"') {
      quoted = !quoted;
      any = true;
    } else if (/\s/.test(ch) && !quoted) {
      if (any) words.push(cur);
      cur = '';
      any = false;
    } else {
      cur += ch;
      any = true;
    }
  }
  if (any) words.push(cur);
  return words;
}

/** Cross-field problems of rules that passed the schema (pure): sizes that contradict each other, no rule at all. */
export function diskRuleProblems(rules: DiskRules): { path: string; message: string; found?: string; expected?: string }[] {
  const problems: { path: string; message: string; found?: string; expected?: string }[] = [];
  const min = rules.minSize === undefined ? undefined : parseSize(rules.minSize);
  const max = rules.maxSize === undefined ? undefined : parseSize(rules.maxSize);
  if (min !== undefined && max !== undefined && min > max) problems.push({ path: 'minSize', message: 'minSize is larger than maxSize', found: `${rules.minSize} > ${rules.maxSize}` });
  if (Object.keys(rules).length === 0) problems.push({ path: '', message: 'no disk rule: the installer never picks a disk by itself', expected: 'at least one of device, byId, byPath, serial, model, minSize, maxSize, type' });
  return problems;
}

/** Check rules in stages (schema, then cross-field rules); every problem with its dotted path. */
export function validateDiskRules(input: unknown, file: string): { rules?: DiskRules; issues: ValidationIssue[] } {
  const r = DiskRulesSchema.safeParse(input);
  if (!r.success) {
    return { issues: r.error.issues.map((i) => ({ file, path: i.path.join('.'), message: i.message })) };
  }
  const issues: ValidationIssue[] = diskRuleProblems(r.data).map((p) => ({ file, ...p }));
  return issues.length ? { issues } : { rules: r.data, issues };
}

const glob = (pattern: string): RegExp => new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replaceAll('*', '.*').replaceAll('?', '.')}$`);
const base = (name: string, dir: string): string => (name.startsWith(`${dir}/`) ? name.slice(dir.length + 1) : name);

/** The rules `disk` fails, each as a short reason (pure). Empty when it matches them all. */
export function ruleMisses(disk: Disk, rules: DiskRules): string[] {
  const miss: string[] = [];
  if (rules.device !== undefined && disk.path !== rules.device) miss.push(`device is not ${rules.device}`);
  if (rules.byId !== undefined && !disk.byId.includes(base(rules.byId, '/dev/disk/by-id'))) miss.push(`no by-id name ${base(rules.byId, '/dev/disk/by-id')}`);
  if (rules.byPath !== undefined && !disk.byPath.includes(base(rules.byPath, '/dev/disk/by-path'))) miss.push(`no by-path name ${base(rules.byPath, '/dev/disk/by-path')}`);
  if (rules.serial !== undefined && disk.serial !== rules.serial.trim()) miss.push(`serial is not ${rules.serial}`);
  if (rules.model !== undefined && !glob(rules.model.trim()).test(disk.model)) miss.push(`model does not match ${rules.model}`);
  const min = rules.minSize === undefined ? undefined : parseSize(rules.minSize);
  const max = rules.maxSize === undefined ? undefined : parseSize(rules.maxSize);
  if (min !== undefined && disk.sizeBytes < min) miss.push(`smaller than ${rules.minSize}`);
  if (max !== undefined && disk.sizeBytes > max) miss.push(`larger than ${rules.maxSize}`);
  if (rules.type !== undefined && disk.type !== rules.type) miss.push(`type is ${disk.type}, not ${rules.type}`);
  return miss;
}

/** Why a disk may never be the target, whatever the rules say (pure). */
export function exclusions(disk: Disk, bootDisks: string[], imageBytes: number, seedDisks: string[] = []): string[] {
  const why: string[] = [];
  if (bootDisks.includes(disk.path)) why.push('the medium this installer booted from');
  if (seedDisks.includes(disk.path)) why.push('the medium the seed came from');
  if (disk.readOnly) why.push('read-only');
  if (disk.mounts.length) why.push(`in use (${disk.mounts.join(', ')})`);
  if (disk.sizeBytes < imageBytes) why.push(`${disk.sizeBytes} bytes, the image needs ${imageBytes}`);
  return why;
}

export interface DiskVerdict {
  disk: Disk;
  /** Rules it fails. */
  misses: string[];
  /** Reasons it may never be written, whatever the rules say. */
  excluded: string[];
}

export type DiskChoice = { ok: true; disk: Disk; verdicts: DiskVerdict[] } | { ok: false; reason: string; verdicts: DiskVerdict[] };

/**
 * Choose the one disk that matches every rule (pure). Zero or several matches refuse, listing
 * every disk with its attributes and why it was or was not taken. A disk that matches the rules
 * but is the boot medium, the seed's medium, read-only, mounted or too small is never taken, and is not counted as
 * a match: a rule that matches only the installer's own stick refuses rather than writing it.
 */
export function chooseDisk(disks: Disk[], rules: DiskRules, bootDisks: string[], imageBytes: number, seedDisks: string[] = []): DiskChoice {
  const verdicts = disks.map((disk) => ({ disk, misses: ruleMisses(disk, rules), excluded: exclusions(disk, bootDisks, imageBytes, seedDisks) }));
  const matched = verdicts.filter((v) => v.misses.length === 0);
  const usable = matched.filter((v) => v.excluded.length === 0);
  if (Object.keys(rules).length === 0) return { ok: false, reason: 'no disk rule was given: the installer never picks a disk by itself', verdicts };
  if (usable.length === 1) return { ok: true, disk: usable[0]!.disk, verdicts };
  if (usable.length > 1) return { ok: false, reason: `${usable.length} disks match the rules (${usable.map((v) => v.disk.path).join(', ')}): add a rule that tells them apart (serial, byId)`, verdicts };
  const blocked = matched.map((v) => `${v.disk.path} matches but is ${v.excluded.join(', ')}`);
  return { ok: false, reason: `no disk matches the rules${blocked.length ? `; ${blocked.join('; ')}` : ''}`, verdicts };
}

const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(1)} GiB`;

/** Every disk with its attributes and verdict, for a refusal or a dry run (pure). */
export function describeDisks(verdicts: DiskVerdict[], rules: DiskRules): string {
  const lines = [`rules: ${Object.entries(rules).map(([k, v]) => `${k}=${v}`).join(' AND ') || '(none)'}`];
  if (verdicts.length === 0) lines.push('  no disks found');
  for (const { disk: d, misses, excluded } of verdicts) {
    const verdict = excluded.length ? `never: ${excluded.join(', ')}` : misses.length ? `no: ${misses.join(', ')}` : 'matches';
    lines.push(`  ${d.path}  ${d.type}  ${gib(d.sizeBytes)} (${d.sizeBytes} B)  model "${d.model}"  serial "${d.serial}"${d.transport ? `  ${d.transport}` : ''}${d.removable ? '  removable' : ''}`);
    if (d.byId.length) lines.push(`      by-id: ${d.byId.join(' ')}`);
    if (d.byPath.length) lines.push(`      by-path: ${d.byPath.join(' ')}`);
    lines.push(`      ${verdict}`);
  }
  return lines.join('\n');
}

/** lsblk of every whole disk, with what the rules and exclusions read; sizes in bytes. */
export function lsblkDisksPlan(): CommandPlan {
  return { cmd: 'lsblk', args: ['-J', '-b', '-p', '-o', 'NAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,RO,RM,TRAN,MOUNTPOINTS'] };
}

interface LsblkNode {
  path: string;
  type: string;
  size: number | string;
  model?: string | null;
  serial?: string | null;
  rota?: boolean | string | null;
  ro?: boolean | string | null;
  rm?: boolean | string | null;
  tran?: string | null;
  mountpoints?: (string | null)[];
  children?: LsblkNode[];
}

const flag = (v: boolean | string | null | undefined): boolean => v === true || v === '1';

/**
 * `lsblk -J` output and the /dev/disk/by-id and by-path links (name → target device path) →
 * the whole disks (pure). CD drives, loop, zram and RAM disks are not install targets.
 */
export function parseDisks(lsblkJson: string, links: { byId: Record<string, string>; byPath: Record<string, string> }): Disk[] {
  const parsed = JSON.parse(lsblkJson) as { blockdevices?: LsblkNode[] };
  const disks: Disk[] = [];
  for (const n of parsed.blockdevices ?? []) {
    if (n.type !== 'disk' || /^\/dev\/(zram|ram)\d/.test(n.path)) continue;
    const tree = [n, ...(n.children ?? []).flatMap((c) => [c, ...(c.children ?? [])])];
    const mounts = tree.flatMap((x) => (x.mountpoints ?? []).filter((m): m is string => Boolean(m)).map((m) => `${x.path} on ${m}`));
    const transport = n.tran ?? '';
    disks.push({
      path: n.path,
      byId: Object.entries(links.byId).filter(([, t]) => t === n.path).map(([name]) => name).sort(),
      byPath: Object.entries(links.byPath).filter(([, t]) => t === n.path).map(([name]) => name).sort(),
      serial: (n.serial ?? '').trim(),
      model: (n.model ?? '').trim(),
      sizeBytes: Number(n.size),
      type: transport === 'nvme' || n.path.startsWith('/dev/nvme') ? 'nvme' : flag(n.rota) ? 'hdd' : 'ssd',
      transport,
      removable: flag(n.rm),
      readOnly: flag(n.ro),
      mounts,
    });
  }
  return disks;
}
