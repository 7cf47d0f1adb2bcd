import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as z from 'zod';
import { ExitCode, GeminiError } from '../errors.ts';

/**
 * The backup file (docs/backup.md): a header, then the payload in framed chunks. Every chunk
 * is authenticated against the header and its own index and position; the last one says it is
 * the last. So a flipped byte anywhere, a truncated file, reordered or spliced chunks, bytes
 * after the end and a wrong key are all refused, each with its own message.
 */
export const BACKUP_MAGIC = Buffer.from('GK8SBKUP', 'ascii');
export const BACKUP_FORMAT = 1;
/** Plaintext bytes per chunk. */
export const CHUNK_BYTES = 1 << 20;
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_CHUNK_BYTES = 16 << 20;
const GCM_TAG_BYTES = 16;
const DIGEST_BYTES = 32;
const FRAME_PREFIX_BYTES = 5;
const LAST = 1;

/** Whose backup it is: the cluster, when, and the node, generation and PostgreSQL identity at its start. */
export const BackupIdentityShape = {
  cluster: z.string().min(1),
  createdAt: z.iso.datetime(),
  node: z.string().min(1),
  generation: z.number().int().nonnegative(),
  systemIdentifier: z.string().regex(/^\d+$/),
  timeline: z.number().int().positive(),
  startLsn: z.string().regex(/^[0-9A-F]+\/[0-9A-F]+$/i),
  /** server_version_num, such as 150010. */
  pgVersion: z.number().int().positive(),
};

export const BackupHeaderSchema = z.strictObject({
  format: z.literal(BACKUP_FORMAT),
  ...BackupIdentityShape,
  chunkBytes: z.number().int().positive().max(MAX_CHUNK_BYTES),
  encryption: z.strictObject({
    alg: z.literal('aes-256-gcm'),
    /** Names the key without revealing it: a wrong key is refused before any decryption. */
    keyId: z.string().regex(/^[0-9a-f]{16}$/),
    noncePrefix: z.string().regex(/^[0-9a-f]{16}$/),
  }).nullable(),
});
export type BackupHeader = z.infer<typeof BackupHeaderSchema>;

/** A backup that cannot be trusted: damaged, truncated, for another key, or not a backup. */
export class BackupDamagedError extends GeminiError {
  constructor(file: string, what: string) {
    super(`${file}: ${what}`, ExitCode.artifact);
    this.name = 'BackupDamagedError';
  }
}

/** The id a key is known by in a header: the first 8 bytes of a hash, never the key. */
export function keyIdOf(key: Buffer): string {
  return createHash('sha256').update('geminik8s backup key id\0').update(key).digest('hex').slice(0, 16);
}

/**
 * An AES-256 key from a key file: 32 raw bytes, or 64 hex digits, or 32 bytes in base64 (a
 * trailing newline is allowed), as `openssl rand -hex 32` writes.
 */
export function parseBackupKey(content: Buffer, file: string): Buffer {
  if (content.length === 32) return Buffer.from(content);
  const text = content.toString('utf8').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const b = Buffer.from(text, 'base64');
    if (b.length === 32) return b;
  }
  throw new GeminiError(`${file}: expected a 256-bit key: 32 raw bytes, 64 hex digits or 44 base64 characters (openssl rand -hex 32), found ${content.length} bytes`, ExitCode.invalidInput);
}

/** A fresh header's encryption block for `key`, or null without one. */
export function encryptionFor(key: Buffer | undefined): BackupHeader['encryption'] {
  return key ? { alg: 'aes-256-gcm', keyId: keyIdOf(key), noncePrefix: randomBytes(8).toString('hex') } : null;
}

export function encodeHeader(header: BackupHeader): Buffer {
  const json = Buffer.from(JSON.stringify(BackupHeaderSchema.parse(header)), 'utf8');
  const fixed = Buffer.alloc(5);
  fixed.writeUInt8(BACKUP_FORMAT, 0);
  fixed.writeUInt32BE(json.length, 1);
  return Buffer.concat([BACKUP_MAGIC, fixed, json]);
}

/** What each frame's authentication covers besides its payload. */
function frameAad(headerDigest: Buffer, index: number, prefix: Buffer): Buffer {
  const i = Buffer.alloc(8);
  i.writeBigUInt64BE(BigInt(index));
  return Buffer.concat([headerDigest, i, prefix]);
}

function nonceOf(prefixHex: string, index: number): Buffer {
  const n = Buffer.alloc(12);
  Buffer.from(prefixHex, 'hex').copy(n, 0);
  n.writeUInt32BE(index, 8);
  return n;
}

/** Frame (and with a key, encrypt) a payload stream into the bytes of a backup file. */
export async function* encodeBackup(header: BackupHeader, payload: AsyncIterable<Uint8Array>, key?: Buffer): AsyncGenerator<Buffer> {
  if (Boolean(key) !== Boolean(header.encryption)) throw new Error('the header\'s encryption and the key disagree');
  if (key && header.encryption!.keyId !== keyIdOf(key)) throw new Error('the header names another key');
  const head = encodeHeader(header);
  const digest = createHash('sha256').update(head).digest();
  yield head;
  let index = 0;
  const frame = (data: Buffer, last: boolean): Buffer => {
    if (index > 0xffffffff) throw new Error('backup too large for one file');
    const prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
    prefix.writeUInt8(last ? LAST : 0, 0);
    prefix.writeUInt32BE(data.length, 1);
    const aad = frameAad(digest, index, prefix);
    let out: Buffer;
    if (key) {
      const c = createCipheriv('aes-256-gcm', key, nonceOf(header.encryption!.noncePrefix, index));
      c.setAAD(aad);
      out = Buffer.concat([prefix, c.update(data), c.final(), c.getAuthTag()]);
    } else {
      out = Buffer.concat([prefix, data, createHash('sha256').update(aad).update(data).digest()]);
    }
    index++;
    return out;
  };
  let pending: Buffer[] = [];
  let size = 0;
  for await (const chunk of payload) {
    pending.push(Buffer.from(chunk));
    size += chunk.length;
    if (size < header.chunkBytes) continue;
    let all = Buffer.concat(pending);
    while (all.length >= header.chunkBytes) {
      yield frame(all.subarray(0, header.chunkBytes), false);
      all = all.subarray(header.chunkBytes);
    }
    pending = [all];
    size = all.length;
  }
  yield frame(Buffer.concat(pending), true);
}

/** Reads exact byte counts from a stream, knowing its position (for messages). */
class ByteSource {
  // Pieces as they arrived: joined once per read, never re-copied piece by piece.
  private pieces: Buffer[] = [];
  private buffered = 0;
  private done = false;
  position = 0;
  constructor(private readonly it: AsyncIterator<Uint8Array>) {}

  /** `n` bytes, or fewer only at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length > 0) {
        this.pieces.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.length));
        this.buffered += r.value.length;
      }
    }
    const all = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces, this.buffered);
    const out = all.subarray(0, Math.min(n, all.length));
    const rest = all.subarray(out.length);
    this.pieces = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    this.position += out.length;
    return out;
  }
}

/** Read and check a backup file's header: the first bytes of `source`. */
async function readHeaderFrom(src: ByteSource, file: string): Promise<{ header: BackupHeader; digest: Buffer }> {
  const fixed = await src.read(BACKUP_MAGIC.length + 5);
  if (fixed.length < BACKUP_MAGIC.length || !fixed.subarray(0, BACKUP_MAGIC.length).equals(BACKUP_MAGIC)) {
    throw new BackupDamagedError(file, 'not a geminik8s backup (no GK8SBKUP signature at its start)');
  }
  if (fixed.length < BACKUP_MAGIC.length + 5) throw new BackupDamagedError(file, 'truncated inside its header');
  const version = fixed.readUInt8(BACKUP_MAGIC.length);
  if (version !== BACKUP_FORMAT) throw new BackupDamagedError(file, `backup format ${version}; this geminik8s reads format ${BACKUP_FORMAT}`);
  const len = fixed.readUInt32BE(BACKUP_MAGIC.length + 1);
  if (len > MAX_HEADER_BYTES) throw new BackupDamagedError(file, `header length ${len} is over ${MAX_HEADER_BYTES}: damaged`);
  const json = await src.read(len);
  if (json.length < len) throw new BackupDamagedError(file, 'truncated inside its header');
  let parsed: unknown;
  try {
    parsed = JSON.parse(json.toString('utf8'));
  } catch {
    throw new BackupDamagedError(file, 'its header is not JSON: damaged');
  }
  const r = BackupHeaderSchema.safeParse(parsed);
  if (!r.success) throw new BackupDamagedError(file, `its header is damaged: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return { header: r.data, digest: createHash('sha256').update(fixed).update(json).digest() };
}

/** Only the header of a backup file (retention, a restore's plan): nothing is authenticated yet. */
export async function readBackupHeader(bytes: AsyncIterable<Uint8Array>, file: string): Promise<BackupHeader> {
  const it = bytes[Symbol.asyncIterator]();
  try {
    return (await readHeaderFrom(new ByteSource(it), file)).header;
  } finally {
    await it.return?.();
  }
}

/**
 * The authenticated payload of a backup file, chunk by chunk. Nothing is yielded before its
 * chunk is authenticated; the stream ends normally only after the last chunk and the end of
 * the file. `onHeader` sees the header first (to refuse a backup of another cluster early).
 */
export async function* decodeBackup(bytes: AsyncIterable<Uint8Array>, file: string, key: Buffer | undefined, onHeader?: (h: BackupHeader) => void): AsyncGenerator<Buffer> {
  const src = new ByteSource(bytes[Symbol.asyncIterator]());
  const { header, digest } = await readHeaderFrom(src, file);
  const enc = header.encryption;
  if (enc && !key) throw new GeminiError(`${file}: the backup is encrypted (key id ${enc.keyId}): give its key with --encryption-key`, ExitCode.invalidInput);
  if (!enc && key) throw new GeminiError(`${file}: the backup is not encrypted, but --encryption-key was given`, ExitCode.invalidInput);
  if (enc && key && keyIdOf(key) !== enc.keyId) throw new BackupDamagedError(file, `encrypted with the key whose id is ${enc.keyId}; the key given has id ${keyIdOf(key)}: wrong --encryption-key`);
  onHeader?.(header);
  const trailer = enc ? GCM_TAG_BYTES : DIGEST_BYTES;
  for (let index = 0; ; index++) {
    const at = src.position;
    const prefix = await src.read(FRAME_PREFIX_BYTES);
    if (prefix.length === 0) throw new BackupDamagedError(file, `truncated: ends after chunk ${index - 1} at byte ${at}, before the last chunk`);
    if (prefix.length < FRAME_PREFIX_BYTES) throw new BackupDamagedError(file, `truncated inside chunk ${index} at byte ${at}`);
    const flags = prefix.readUInt8(0);
    const len = prefix.readUInt32BE(1);
    if ((flags & ~LAST) !== 0 || len > header.chunkBytes) throw new BackupDamagedError(file, `chunk ${index} at byte ${at} is damaged (flags ${flags}, length ${len})`);
    const body = await src.read(len + trailer);
    if (body.length < len + trailer) throw new BackupDamagedError(file, `truncated inside chunk ${index} at byte ${at}`);
    const data = body.subarray(0, len);
    const tag = body.subarray(len);
    const aad = frameAad(digest, index, prefix);
    let plain: Buffer;
    if (enc) {
      const d = createDecipheriv('aes-256-gcm', key!, nonceOf(enc.noncePrefix, index));
      d.setAAD(aad);
      d.setAuthTag(tag);
      try {
        plain = Buffer.concat([d.update(data), d.final()]);
      } catch {
        throw new BackupDamagedError(file, `chunk ${index} at byte ${at} does not authenticate: the file is damaged or was altered`);
      }
    } else {
      const want = createHash('sha256').update(aad).update(data).digest();
      if (!timingSafeEqual(want, tag)) throw new BackupDamagedError(file, `chunk ${index} at byte ${at} does not match its checksum: the file is damaged`);
      plain = Buffer.from(data);
    }
    if (plain.length > 0) yield plain;
    if (flags & LAST) break;
  }
  const extra = await src.read(1);
  if (extra.length > 0) throw new BackupDamagedError(file, `${src.position - 1 > 0 ? 'bytes' : 'a byte'} after the last chunk (at byte ${src.position - 1}): damaged or two files joined`);
}
