import { closeSync, lstatSync, openSync, readSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** A path inside an unpacked root, its symlinks followed the way they resolve in that root (absolute targets are root-relative). */
export function inRoot(root: string, path: string): string {
  let p = join(root, path);
  for (let i = 0; i < 40; i++) {
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st?.isSymbolicLink()) return p;
    const target = readlinkSync(p);
    p = target.startsWith('/') ? join(root, target) : join(dirname(p), target);
  }
  throw new Error(`too many symlinks under ${path}`);
}

/** ELF e_machine values of the architectures images are built for. */
export const EM = { amd64: 62, arm64: 183 } as const;

/** The ELF header fields that tell the architecture: class, byte order, e_machine. */
export function elfHeader(file: string): { elfClass: number; data: number; machine: number } {
  const buf = Buffer.alloc(20);
  const fd = openSync(file, 'r');
  try {
    if (readSync(fd, buf, 0, 20, 0) < 20) throw new Error(`${file}: shorter than an ELF header`);
  } finally {
    closeSync(fd);
  }
  if (buf.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file}: not an ELF file`);
  const data = buf[5]!;
  return { elfClass: buf[4]!, data, machine: data === 1 ? buf.readUInt16LE(18) : buf.readUInt16BE(18) };
}
