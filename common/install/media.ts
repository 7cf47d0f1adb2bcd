import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ExitCode, GeminiError } from '../errors.ts';
import { runPlan, type CommandPlan } from '../exec.ts';
import type { RenderedFile } from '../render/node.ts';

const CHUNK = 4 * 1024 * 1024;

/** The device behind a mount source: /dev/vda1 → itself; anything not under /dev (overlay, tmpfs) → nothing. */
export function deviceOfSource(source: string): string | undefined {
  const s = source.trim().replace(/\[.*\]$/, '');
  return s.startsWith('/dev/') ? s : undefined;
}

/** Where a live boot from a medium (the installer ISO) mounts it: scripts/geminik8s-live in the initramfs. */
export const LIVE_MEDIUM = '/run/geminik8s/live/medium';

/** The block devices behind the running system: /, /boot, /boot/efi, /usr, the live medium, and swap, with the disks they are on. */
export async function systemDevices(): Promise<string[]> {
  const devs = new Set<string>();
  // The live installer's medium (an ISO on a USB stick is a disk like any other).
  for (const target of ['/', '/boot', '/boot/efi', '/usr', LIVE_MEDIUM]) {
    const r = await runPlan({ cmd: 'findmnt', args: ['-n', '-o', 'SOURCE', '--target', target] }, { allowFailure: true });
    const dev = r.exitCode === 0 ? deviceOfSource(r.stdout) : undefined;
    if (dev) devs.add(dev);
  }
  const swaps = existsSync('/proc/swaps') ? (await readFile('/proc/swaps', 'utf8')).split('\n').slice(1).map((l) => l.split(/\s+/)[0] ?? '').filter((d) => d.startsWith('/dev/')) : [];
  for (const d of swaps) devs.add(d);
  return withDisksUnder([...devs]);
}

/** `devs` with the disks each one is on (and through device-mapper, the disks under it): lsblk -s walks down. */
export async function withDisksUnder(devs: string[]): Promise<string[]> {
  const out = new Set(devs);
  for (const d of devs) {
    const r = await runPlan({ cmd: 'lsblk', args: ['-s', '-n', '-p', '-o', 'PATH', d] }, { allowFailure: true });
    for (const p of r.stdout.split('\n').map((x) => x.replace(/^[^/]*/, '').trim()).filter(Boolean)) out.add(p);
  }
  return [...out];
}

/**
 * The filesystem label of a second medium that carries an installer's seed beside an installer
 * without one (`geminik8s seed --format medium` writes it; any FAT stick so labelled will do).
 * FAT keeps labels in upper case, whatever was typed.
 */
export const SEED_MEDIUM_LABEL = 'GKSEED';

/** Where the seed is on that medium: the same JSON as the installer ISO's seed slot. */
export const SEED_MEDIUM_FILE = 'geminik8s/seed.json';

/** Every filesystem the kernel knows, probed now rather than from blkid's cache. */
export function blkidAllPlan(): CommandPlan {
  return { cmd: 'blkid', args: ['-c', '/dev/null', '-o', 'export'] };
}

/** The devices whose filesystem is labelled `label` (any case), with their type, from `blkid -o export` (pure). */
export function labelledDevices(blkidExport: string, label: string): { device: string; type: string }[] {
  return blkidExport
    .split(/\n\s*\n/)
    .map((block) => Object.fromEntries(block.split('\n').map((l) => l.trim()).filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])) as Record<string, string>)
    .filter((f) => f.DEVNAME && (f.LABEL ?? '').toUpperCase() === label.toUpperCase())
    .map((f) => ({ device: f.DEVNAME!, type: f.TYPE ?? '' }));
}


/** Copy files into a FAT image with mtools: no mount needed. `entries` map image paths to host files. */
export function mcopyPlans(image: string, entries: { from: string; to: string }[], sourceDateEpoch: number): CommandPlan[] {
  const env = { SOURCE_DATE_EPOCH: String(sourceDateEpoch), MTOOLS_SKIP_CHECK: '1' };
  const dirs = [...new Set(entries.flatMap((e) => {
    const parts = e.to.split('/').filter(Boolean).slice(0, -1);
    return parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  }))].sort();
  return [
    ...(dirs.length ? [{ cmd: 'mmd', args: ['-i', image, ...dirs.map((d) => `::${d}`)], env, title: 'mmd' }] : []),
    ...entries.map((e) => ({ cmd: 'mcopy', args: ['-i', image, '-m', '-o', e.from, `::${e.to}`], env, title: `mcopy ${e.to}` })),
  ];
}

/** The byte offset of the partition named `name` in a disk's (or a raw image's) GPT, read with sfdisk. */
export async function partitionOffset(image: string, name: string): Promise<number> {
  const r = await runPlan({ cmd: 'sfdisk', args: ['-J', image] }, { allowFailure: true });
  if (r.exitCode !== 0) throw new GeminiError(`${image}: no partition table sfdisk can read (${r.stderr.trim().split('\n').pop()}); expected a raw image written by geminik8s build`, ExitCode.invalidInput);
  const table = JSON.parse(r.stdout).partitiontable as { sectorsize?: number; partitions: { name?: string; start: number }[] };
  const part = table.partitions.find((p) => p.name === name);
  if (!part) throw new GeminiError(`${image}: no partition named ${name}; expected a raw image written by geminik8s build`, ExitCode.invalidInput);
  return part.start * (table.sectorsize ?? 512);
}

/**
 * Write the seed files onto the FAT config partition at `offset` of `target` (an image file or
 * a block device) with mtools; `staging` is a private directory for the files on their way.
 */
export async function writeSeedFiles(target: string, offset: number, files: RenderedFile[], staging: string): Promise<void> {
  const entries = [];
  for (const f of files) {
    const local = join(staging, f.path.replaceAll('/', '_'));
    await writeFile(local, f.content, { mode: 0o600 });
    entries.push({ from: local, to: `/${f.path}` });
  }
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? Math.floor(Date.now() / 1000));
  for (const plan of mcopyPlans(`${target}@@${offset}`, entries, epoch)) {
    // A second seed into the same copy replaces files; mmd of an existing directory is not an error worth stopping for.
    await runPlan(plan, plan.cmd === 'mmd' ? { allowFailure: true } : {});
  }
}

/** Each seed file as the node will read it back from `target`'s config partition; the paths that differ. */
export async function seedFilesDiffering(target: string, offset: number, files: RenderedFile[]): Promise<string[]> {
  const bad: string[] = [];
  for (const f of files) {
    const got = await runPlan({ cmd: 'mtype', args: ['-i', `${target}@@${offset}`, `::/${f.path}`], env: { MTOOLS_SKIP_CHECK: '1' } }, { allowFailure: true });
    if (got.exitCode !== 0 || got.stdout !== f.content) bad.push(f.path);
  }
  return bad;
}

/** A progress callback for `writeStream` that calls `line` once per 10 % of `total` written. */
export function everyTenPercent(total: number, line: (pct: number, done: number) => void): (done: number) => void {
  let shown = -1;
  return (done) => {
    const pct = Math.floor((done / total) * 100);
    if (Math.floor(pct / 10) > Math.floor(shown / 10)) {
      shown = pct;
      line(pct, done);
    }
  };
}

const ZEROS = Buffer.alloc(CHUNK);

/** Zero runs at least this long are zeroed by the device instead of written: most of a disk image is empty (the test image: 316 MiB of data in 2.6 GiB). */
export const ZERO_RUN_BYTES = 1024 * 1024;

/** Zeroes `length` bytes of `device` at `offset` without sending them (BLKZEROOUT through blkdiscard); false when the device cannot. */
export type Zeroout = (device: string, offset: number, length: number) => Promise<boolean>;

/** blkdiscard --zeroout: the kernel's BLKZEROOUT, which reads back as zeros whatever the device (it writes them itself when it must). */
export const blkdiscardZeroout: Zeroout = async (device, offset, length) =>
  (await runPlan({ cmd: 'blkdiscard', args: ['--zeroout', '--offset', String(offset), '--length', String(length), device] }, { allowFailure: true })).exitCode === 0;

/**
 * Write `input` onto `device` from its first byte, fsync, and return the sha256 of what was
 * written. Fails when the input does not come to exactly `total` bytes. Runs of zeros of
 * ZERO_RUN_BYTES or more go to `zeroout` (sector-aligned), as bmaptool skips holes: the device
 * reads them back as zeros, which the caller's read-back checks; where it cannot, they are written.
 */
export async function writeStream(input: AsyncIterable<Buffer | Uint8Array>, device: string, total: number, progress: (done: number) => void, what = 'the image', zeroout: Zeroout = blkdiscardZeroout): Promise<{ sha256: string; zeroedOut: number }> {
  const hash = createHash('sha256');
  const fd = await open(device, 'r+');
  let written = 0;
  // The zero run not yet on the device: [zeroFrom, written).
  let zeroFrom = 0;
  let zeroedOut = 0;
  let canZeroout = true;
  const put = async (buf: Buffer, at: number): Promise<void> => {
    let off = 0;
    while (off < buf.length) {
      const { bytesWritten } = await fd.write(buf, off, buf.length - off, at + off);
      off += bytesWritten;
    }
  };
  const flushZeros = async (): Promise<void> => {
    let from = zeroFrom;
    const to = written;
    zeroFrom = written;
    if (to - from >= ZERO_RUN_BYTES && canZeroout) {
      // BLKZEROOUT takes whole 512-byte sectors; the odd ends are written.
      const start = Math.ceil(from / 512) * 512;
      const end = Math.floor(to / 512) * 512;
      if (await zeroout(device, start, end - start)) {
        zeroedOut += end - start;
        if (start > from) await put(ZEROS.subarray(0, start - from), from);
        from = end;
      } else {
        canZeroout = false;
      }
    }
    for (let at = from; at < to; at += CHUNK) await put(ZEROS.subarray(0, Math.min(CHUNK, to - at)), at);
  };
  try {
    for await (const raw of input) {
      const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
      hash.update(chunk);
      if (isZero(chunk)) {
        written += chunk.length;
      } else {
        await flushZeros();
        await put(chunk, written);
        written += chunk.length;
        zeroFrom = written;
      }
      progress(written);
    }
    await flushZeros();
    if (written !== total) throw new GeminiError(`${what}: ${written} bytes came out, ${total} were expected`, ExitCode.artifact);
    await fd.sync();
  } finally {
    await fd.close();
  }
  return { sha256: hash.digest('hex'), zeroedOut };
}

function isZero(b: Buffer): boolean {
  for (let at = 0; at < b.length; at += CHUNK) {
    const part = b.subarray(at, Math.min(b.length, at + CHUNK));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

/** Read the first `bytes` of `device` back, past the page cache, and hash them. */
export async function readBack(device: string, bytes: number): Promise<string> {
  // Drop the device's buffers so that the read comes from the medium, not from memory.
  await runPlan({ cmd: 'blockdev', args: ['--flushbufs', device] });
  const hash = createHash('sha256');
  const fd = await open(device, 'r');
  try {
    const buf = Buffer.alloc(CHUNK);
    let pos = 0;
    while (pos < bytes) {
      const { bytesRead } = await fd.read(buf, 0, Math.min(CHUNK, bytes - pos), pos);
      if (bytesRead === 0) throw new GeminiError(`${device}: ended after ${pos} bytes while reading back ${bytes}`, ExitCode.commandFailed);
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fd.close();
  }
  return hash.digest('hex');
}

/**
 * The decompressed size a zstd frame header records (pure), from the first bytes of the file;
 * undefined when the frame does not record it (zstd writes it for a file it compressed).
 */
export function zstdFrameContentSize(head: Uint8Array): number | undefined {
  const b = Buffer.from(head);
  if (b.length < 6 || b.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const dictIdFlag = fhd & 3;
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (fcsBytes === 0) return undefined;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictIdFlag]!;
  if (b.length < at + fcsBytes) return undefined;
  if (fcsBytes === 1) return b[at]!;
  if (fcsBytes === 2) return b.readUInt16LE(at) + 256;
  if (fcsBytes === 4) return b.readUInt32LE(at);
  return Number(b.readBigUInt64LE(at));
}
