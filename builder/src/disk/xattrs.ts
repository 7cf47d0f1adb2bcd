import { createReadStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { binarySafeExtract, rawPax } from '../rootfs/sources/tarfile.ts';

/** One extended attribute of an entry of a root tar, its value as bytes. */
export interface TarXattr {
  /** The entry's path as the tar names it (e.g. `./usr/bin/arping`). */
  path: string;
  name: string;
  value: Buffer;
}

const PREFIX = 'SCHILY.xattr.';

/** Every extended attribute a tar carries (GNU tar's `SCHILY.xattr.*` PAX records), read byte for byte. */
export async function tarXattrs(tar: string): Promise<TarXattr[]> {
  const found: TarXattr[] = [];
  const extract = binarySafeExtract();
  extract.on('entry', (header, stream, next) => {
    for (const [key, value] of rawPax(header) ?? []) {
      if (key.startsWith(PREFIX)) found.push({ path: header.name, name: key.slice(PREFIX.length), value });
    }
    stream.on('end', () => next());
    stream.resume();
  });
  await pipeline(createReadStream(tar), extract as unknown as Writable);
  return found;
}

// getfattr --dump quoting, which setfattr --restore undoes: bytes outside printable ASCII, and
// the backslash, as a backslash and three octal digits.
function quote(s: string | Buffer): string {
  let out = '';
  for (const b of Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8')) out += b <= 0x20 || b >= 0x7f || b === 0x5c || b === 0x3d ? `\\${b.toString(8).padStart(3, '0')}` : String.fromCharCode(b);
  return out;
}

/** The attributes in `getfattr --dump` format (values in hex), for `setfattr --restore`. */
export function setfattrDump(xattrs: TarXattr[]): string {
  const byPath = new Map<string, TarXattr[]>();
  for (const x of xattrs) byPath.set(x.path, [...(byPath.get(x.path) ?? []), x]);
  return [...byPath].map(([path, list]) => `# file: ${quote(path.replace(/\/$/, ''))}\n${list.map((x) => `${quote(x.name)}=0x${x.value.toString('hex')}\n`).join('')}\n`).join('');
}
