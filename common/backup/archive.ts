import { createHash } from 'node:crypto';
import tarStream, { type Header, type Pack } from 'tar-stream';
import * as z from 'zod';
import { BackupIdentityShape } from './format.ts';

/**
 * The payload of a backup file: a tar whose first entry is the backup's metadata (with the K3s
 * server token, which is why the payload is encrypted when a key is given), then every entry
 * of PostgreSQL's base backup under `pgdata/`, its `backup_manifest` last.
 */
export const META_ENTRY = 'geminik8s/backup.json';
export const PGDATA_PREFIX = 'pgdata/';
const MANIFEST = 'backup_manifest';

export const BackupMetaSchema = z.strictObject({
  ...BackupIdentityShape,
  /** K3s cannot read a restored datastore without the server token it was written with. */
  k3sToken: z.string().min(1),
});
export type BackupMeta = z.infer<typeof BackupMetaSchema>;

/** What a verified payload held. */
export interface PayloadSummary {
  meta: BackupMeta;
  files: number;
  bytes: number;
}

interface ManifestFile {
  Path: string;
  Size: number;
  'Checksum-Algorithm'?: string;
  Checksum?: string;
}

const WAL_SEGMENT_BYTES = 16 * 1024 * 1024;

/** The WAL segment file names a range needs, with 16 MiB segments (initdb's default, and ours). */
export function walSegmentsFor(timeline: number, startLsn: string, endLsn: string): string[] {
  const lsn = (s: string): bigint => {
    const [hi, lo] = s.split('/');
    return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
  };
  const perId = 0x100000000n / BigInt(WAL_SEGMENT_BYTES);
  const hex = (n: bigint | number): string => n.toString(16).toUpperCase().padStart(8, '0');
  const out: string[] = [];
  const seg = BigInt(WAL_SEGMENT_BYTES);
  // The end LSN points just past the last record: a range ending exactly on a boundary does not need the next segment.
  const last = (lsn(endLsn) - 1n) / seg;
  for (let s = lsn(startLsn) / seg; s <= last; s++) out.push(`${hex(timeline)}${hex(s / perId)}${hex(s % perId)}`);
  return out;
}

/**
 * Checks a base backup against its `backup_manifest`, as pg_verifybackup does for files (the
 * WAL's content is pg_verifybackup's to check: `--verify`): the manifest's own checksum, every
 * listed file present with its size and SHA-256, nothing unlisted outside pg_wal/, and the WAL
 * segments the manifest's range needs present.
 */
export class ManifestCheck {
  private readonly seen = new Map<string, { size: number; sha256: string }>();
  private manifest?: Buffer;

  file(path: string, size: number, sha256: string): void {
    this.seen.set(path, { size, sha256 });
  }

  manifestText(text: Buffer): void {
    this.manifest = text;
  }

  /** Every problem found; empty when the backup is whole. */
  problems(): string[] {
    if (!this.manifest) return ['no backup_manifest in the base backup (taken without a manifest, or cut short)'];
    const text = this.manifest;
    const out: string[] = [];
    const at = text.lastIndexOf('"Manifest-Checksum"');
    let m: { Files?: ManifestFile[]; 'WAL-Ranges'?: { Timeline: number; 'Start-LSN': string; 'End-LSN': string }[]; 'Manifest-Checksum'?: string };
    try {
      m = JSON.parse(text.toString('utf8'));
    } catch {
      return ['backup_manifest is not JSON'];
    }
    if (at < 0 || createHash('sha256').update(text.subarray(0, at)).digest('hex') !== m['Manifest-Checksum']) out.push('backup_manifest does not match its own checksum');
    const listed = new Set<string>();
    for (const f of m.Files ?? []) {
      listed.add(f.Path);
      const got = this.seen.get(f.Path);
      if (!got) {
        out.push(`${f.Path}: listed in backup_manifest, missing from the backup`);
        continue;
      }
      if (got.size !== f.Size) out.push(`${f.Path}: ${got.size} bytes, backup_manifest says ${f.Size}`);
      else if (f['Checksum-Algorithm'] === 'SHA256' && f.Checksum !== got.sha256) out.push(`${f.Path}: SHA-256 does not match backup_manifest`);
      else if (f['Checksum-Algorithm'] !== 'SHA256') out.push(`${f.Path}: checksum algorithm ${f['Checksum-Algorithm'] ?? 'none'}, expected SHA256`);
    }
    for (const path of this.seen.keys()) {
      if (!listed.has(path) && !path.startsWith('pg_wal/')) out.push(`${path}: in the backup, not in backup_manifest`);
    }
    for (const r of m['WAL-Ranges'] ?? []) {
      for (const seg of walSegmentsFor(r.Timeline, r['Start-LSN'], r['End-LSN'])) {
        if (!this.seen.has(`pg_wal/${seg}`)) out.push(`pg_wal/${seg}: WAL the backup needs (timeline ${r.Timeline}, ${r['Start-LSN']}..${r['End-LSN']}) is missing`);
      }
    }
    return out;
  }
}

/** An entry's bytes passed through while hashed; the manifest's own text is kept whole. */
function hashing(entry: AsyncIterable<Buffer>, isManifest: boolean): { stream: AsyncGenerator<Buffer>; size: () => number; record: (name: string, check: ManifestCheck) => void } {
  const hash = createHash('sha256');
  const parts: Buffer[] = [];
  let size = 0;
  const stream = (async function* (): AsyncGenerator<Buffer> {
    for await (const c of entry) {
      hash.update(c);
      size += c.length;
      if (isManifest) parts.push(c);
      yield c;
    }
  })();
  return {
    stream,
    size: () => size,
    record: (name, check) => (isManifest ? check.manifestText(Buffer.concat(parts)) : check.file(name, size, hash.digest('hex'))),
  };
}

/** Reject names a restore must never write: absolute, or climbing out of the data directory. */
function safeName(name: string): string {
  const n = name.replace(/^\.\//, '');
  if (n.startsWith('/') || n.split('/').includes('..')) throw new Error(`unsafe path in the base backup: ${JSON.stringify(name)}`);
  return n;
}

/** The writable side of a tar-stream (streamx) stream, as this module uses it. */
interface Sink {
  write(chunk: Uint8Array): boolean;
  end(): void;
  once(event: 'drain', fn: () => void): void;
  destroy(err?: Error): void;
}

/** Write a source into a tar-stream stream with backpressure; a failing source destroys it. */
async function feedInto(target: unknown, source: AsyncIterable<Uint8Array>): Promise<void> {
  const w = target as Sink;
  try {
    for await (const chunk of source) {
      if (!w.write(chunk)) await new Promise<void>((r) => w.once('drain', () => r()));
    }
    w.end();
  } catch (err) {
    w.destroy(err as Error);
  }
}

async function writeEntry(pack: Pack, header: Header, body: AsyncIterable<Uint8Array> | Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const entry = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    void (async () => {
      try {
        if (Buffer.isBuffer(body)) {
          entry.end(body);
          return;
        }
        await feedInto(entry, body);
      } catch (err) {
        entry.destroy(err as Error);
        reject(err);
      }
    })();
  });
}

/**
 * The payload of a new backup: the metadata, then pg_basebackup's tar (`-D - -Ft`) with every
 * name under pgdata/. Each file is hashed on the way; at the end the manifest check must pass,
 * or the stream fails (and the caller never gives the file its final name).
 */
export function packPayload(meta: BackupMeta, baseTar: AsyncIterable<Uint8Array>): AsyncIterable<Buffer> {
  const pack = tarStream.pack();
  const metaJson = Buffer.from(`${JSON.stringify(BackupMetaSchema.parse(meta), null, 2)}\n`);
  void (async () => {
    const check = new ManifestCheck();
    const extract = tarStream.extract();
    let feed: Promise<void> | undefined;
    try {
      await writeEntry(pack, { name: META_ENTRY, size: metaJson.length, mode: 0o600, mtime: new Date(meta.createdAt), type: 'file' } as Header, metaJson);
      // Fed only once the loop below reads it: fed earlier, a source that yields at once stalled
      // the extractor for good (a 40 MB tar from memory, test/unit/backup.test.ts).
      feed = feedInto(extract, baseTar);
      for await (const entry of extract) {
        const h = entry.header;
        const name = safeName(h.name);
        if (h.type === 'file') {
          const tee = hashing(entry as AsyncIterable<Buffer>, name === MANIFEST);
          await writeEntry(pack, { ...h, name: `${PGDATA_PREFIX}${name}` }, tee.stream);
          tee.record(name, check);
        } else {
          for await (const _ of entry as AsyncIterable<Buffer>) {
            // directories and links carry no data
          }
          await writeEntry(pack, { ...h, name: `${PGDATA_PREFIX}${name}` }, Buffer.alloc(0));
        }
      }
      await feed;
      const problems = check.problems();
      if (problems.length > 0) throw new Error(`the base backup does not match its manifest:\n  ${problems.slice(0, 20).join('\n  ')}`);
      pack.finalize();
    } catch (err) {
      pack.destroy(err as Error);
    }
  })();
  return pack as unknown as AsyncIterable<Buffer>;
}

/** What a restore does with each entry of pgdata/ (the name is relative to the data directory). */
export type EntrySink = (name: string, header: Header, body: AsyncIterable<Buffer>) => Promise<void>;

/**
 * Read a payload to its end, checking everything: the metadata first, every file of pgdata/
 * against the manifest. `sink` receives each entry (a restore writes them out); without it the
 * data is only hashed. Throws on the first thing that is wrong.
 */
export async function readPayload(payload: AsyncIterable<Uint8Array>, sink?: EntrySink): Promise<PayloadSummary> {
  const extract = tarStream.extract();
  const feed = feedInto(extract, payload);
  const check = new ManifestCheck();
  let meta: BackupMeta | undefined;
  let files = 0;
  let bytes = 0;
  for await (const entry of extract) {
    const h = entry.header;
    if (!meta) {
      if (h.name !== META_ENTRY) throw new Error(`the payload starts with ${JSON.stringify(h.name)}, not ${META_ENTRY}`);
      const parts: Buffer[] = [];
      for await (const c of entry as AsyncIterable<Buffer>) parts.push(c);
      const r = BackupMetaSchema.safeParse(JSON.parse(Buffer.concat(parts).toString('utf8')));
      if (!r.success) throw new Error(`${META_ENTRY}: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
      meta = r.data;
      continue;
    }
    if (!h.name.startsWith(PGDATA_PREFIX)) throw new Error(`unexpected entry ${JSON.stringify(h.name)} outside ${PGDATA_PREFIX}`);
    const name = safeName(h.name.slice(PGDATA_PREFIX.length));
    const tee = hashing(entry as AsyncIterable<Buffer>, name === MANIFEST);
    if (sink) await sink(name, h, tee.stream);
    else for await (const _ of tee.stream) {
      // hashed only
    }
    if (h.type === 'file') {
      files++;
      bytes += tee.size();
      tee.record(name, check);
    }
  }
  await feed;
  if (!meta) throw new Error('the payload is empty');
  const problems = check.problems();
  if (problems.length > 0) throw new Error(`the base backup does not match its manifest:\n  ${problems.slice(0, 20).join('\n  ')}`);
  return { meta, files, bytes };
}
