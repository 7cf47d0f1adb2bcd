import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import tarStream, { type Extract, type Header } from 'tar-stream';

// A small tar writer and a binary-safe PAX reader. tar-stream (used to read) decodes PAX values
// as UTF-8 and writes them the same way, which mangles binary extended attributes such as
// security.capability (arping's cap_net_raw) and POSIX ACLs; these keep the bytes as they are.

const BLOCK = 512;
const TYPEFLAG: Record<string, string> = {
  file: '0', link: '1', symlink: '2', 'character-device': '3', 'block-device': '4', directory: '5', fifo: '6', 'pax-header': 'x',
};

/** One entry of a tar being written. */
export interface TarHeader {
  /** Path inside the archive, as written (e.g. `./etc/hosts`, `./etc/`). */
  name: string;
  type: 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extra PAX records kept byte for byte, e.g. `SCHILY.xattr.security.capability`. */
  pax?: Map<string, Buffer>;
}

// One `LEN key=value\n` PAX record; LEN counts itself.
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** Parse PAX records without decoding the values. */
export function decodePaxRecords(buf: Uint8Array): Map<string, Buffer> {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < b.length) {
    const sp = b.indexOf(0x20, i);
    if (sp < 0) break;
    const len = Number(b.toString('latin1', i, sp));
    if (!Number.isInteger(len) || len <= 0 || i + len > b.length) break;
    const record = b.subarray(sp + 1, i + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq > 0) out.set(record.toString('utf8', 0, eq), Buffer.from(record.subarray(eq + 1)));
    i += len;
  }
  return out;
}

const RAW_PAX = Symbol('raw PAX records');

/** The PAX records of an entry read by `binarySafeExtract`, bytes as in the archive. */
export function rawPax(header: Header): Map<string, Buffer> | undefined {
  const pax = (header as { pax?: Record<string | symbol, unknown> }).pax;
  return pax?.[RAW_PAX] as Map<string, Buffer> | undefined;
}

/** A tar-stream extractor that also keeps each entry's PAX records as bytes (see `rawPax`). */
export function binarySafeExtract(): Extract {
  const extract = tarStream.extract();
  const x = extract as unknown as {
    _decodeLongHeader?: (buf: Buffer) => void;
    _header: { type: string };
    _pax: unknown;
    _paxGlobal: Record<string, string> | null;
  };
  const original = x._decodeLongHeader;
  if (typeof original !== 'function') throw new Error('tar-stream no longer has Extract._decodeLongHeader; binary PAX values cannot be kept');
  x._decodeLongHeader = function (this: typeof x, buf: Buffer) {
    if (this._header.type !== 'pax-header') return original.call(this, buf);
    const raw = decodePaxRecords(buf);
    const pax: Record<string, string> = { ...(this._paxGlobal ?? {}) };
    for (const [k, v] of raw) pax[k] = v.toString('utf8');
    Object.defineProperty(pax, RAW_PAX, { value: raw });
    this._pax = pax;
  };
  return extract;
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

type RawHeader = Omit<TarHeader, 'type'> & { type: TarHeader['type'] | 'pax-header' };

// A ustar header; what does not fit in it goes to the PAX records in `pax`.
function ustar(h: RawHeader, pax: Map<string, Buffer>): Buffer {
  const buf = Buffer.alloc(BLOCK);
  const ascii = (s: string): boolean => /^[\x20-\x7e]*$/.test(s);
  let name = h.name;
  let prefix = '';
  if (!ascii(name) || name.length > 100) {
    let cut = name.indexOf('/');
    while (cut > 0 && name.length - cut - 1 > 100) cut = name.indexOf('/', cut + 1);
    if (ascii(name) && cut > 0 && cut <= 155 && name.length - cut - 1 > 0) {
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
    } else {
      pax.set('path', Buffer.from(h.name, 'utf8'));
      name = h.name.replace(/[^\x20-\x7e]/g, '_').slice(-100);
    }
  }
  let linkname = h.linkname ?? '';
  if (!ascii(linkname) || linkname.length > 100) {
    pax.set('linkpath', Buffer.from(linkname, 'utf8'));
    linkname = linkname.replace(/[^\x20-\x7e]/g, '_').slice(0, 100);
  }
  const size = h.type === 'file' || h.type === 'pax-header' ? (h.size ?? 0) : 0;
  if (size >= 8 ** 11) pax.set('size', Buffer.from(String(size)));
  buf.write(name, 0, 100, 'latin1');
  buf.write(octal(h.mode & 0o7777, 8), 100, 'latin1');
  buf.write(octal(h.uid, 8), 108, 'latin1');
  buf.write(octal(h.gid, 8), 116, 'latin1');
  buf.write(octal(size >= 8 ** 11 ? 0 : size, 12), 124, 'latin1');
  buf.write(octal(Math.max(0, Math.floor(h.mtime)), 12), 136, 'latin1');
  buf.write(TYPEFLAG[h.type]!, 156, 'latin1');
  buf.write(linkname, 157, 100, 'latin1');
  buf.write('ustar\x0000', 257, 'latin1');
  buf.write(octal(h.devmajor ?? 0, 8), 329, 'latin1');
  buf.write(octal(h.devminor ?? 0, 8), 337, 'latin1');
  buf.write(prefix, 345, 155, 'latin1');
  buf.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of buf) sum += byte;
  buf.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return buf;
}

/** Writes a POSIX (ustar + PAX) tar to a stream, honouring backpressure. */
export class TarWriter {
  constructor(private readonly out: Writable) {}

  private async put(buf: Buffer): Promise<void> {
    if (!this.out.write(buf)) await once(this.out, 'drain');
  }

  /** Add one entry; a file's body is `size` bytes from `body`. */
  async add(h: TarHeader, body?: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<void> {
    const pax = new Map(h.pax ?? []);
    const header = ustar(h, pax);
    if (pax.size) {
      const records = Buffer.concat([...pax].map(([k, v]) => paxRecord(k, v)));
      const base = h.name.replace(/\/+$/, '').split('/').pop() ?? 'entry';
      await this.put(ustar({ name: `./PaxHeaders/${base}`.slice(0, 100), type: 'pax-header', mode: 0o644, uid: 0, gid: 0, mtime: h.mtime, size: records.length }, new Map()));
      await this.put(padded(records));
    }
    await this.put(header);
    if (h.type !== 'file') return;
    const size = h.size ?? 0;
    let written = 0;
    if (body) {
      for await (const chunk of (Buffer.isBuffer(body) ? [body] : body) as AsyncIterable<Buffer>) {
        written += chunk.length;
        if (written > size) throw new Error(`${h.name}: more data than its size of ${size} bytes`);
        await this.put(Buffer.from(chunk));
      }
    }
    if (written !== size) throw new Error(`${h.name}: ${written} bytes of data for a size of ${size}`);
    if (size % BLOCK) await this.put(Buffer.alloc(BLOCK - (size % BLOCK)));
  }

  /** End the archive (two zero blocks) and wait until everything is written. */
  async close(): Promise<void> {
    await this.put(Buffer.alloc(2 * BLOCK));
    this.out.end();
    await finished(this.out);
  }
}

function padded(buf: Buffer): Buffer {
  return buf.length % BLOCK ? Buffer.concat([buf, Buffer.alloc(BLOCK - (buf.length % BLOCK))]) : buf;
}
