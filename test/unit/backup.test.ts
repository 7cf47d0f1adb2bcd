import test from 'ava';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { ManifestCheck, packPayload, readPayload, walSegmentsFor, type BackupMeta } from '#common/backup/archive.ts';
import { CHUNK_BYTES, decodeBackup, encodeBackup, encryptionFor, keyIdOf, parseBackupKey, readBackupHeader, type BackupHeader } from '#common/backup/format.ts';
import { runPlan } from '#common/exec.ts';
import { extractSink } from '#common/backup/extract.ts';
import { backupRefusal } from '#agent/backup.ts';
import { hostPgBinDir } from '../helpers/host-pg.ts';
import { tempDir } from '../helpers/fixtures.ts';

const meta: BackupMeta = { cluster: 'site-a', createdAt: '2026-12-01T10:00:00.000Z', node: 'node1', generation: 3, systemIdentifier: '7412345678901234567', timeline: 2, startLsn: '0/3000028', pgVersion: 150010, k3sToken: 'K10-k3s-token-value' };
const headerFor = (key?: Buffer, chunkBytes = 1000): BackupHeader => {
  const { k3sToken: _k, ...rest } = meta;
  return { format: 1, ...rest, chunkBytes, encryption: encryptionFor(key) };
};

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

const encode = (payload: Buffer, key?: Buffer, chunkBytes = 1000) => collect(encodeBackup(headerFor(key, chunkBytes), Readable.from([payload.subarray(0, 777), payload.subarray(777)]), key));
const decode = (file: Buffer, key?: Buffer) => collect(decodeBackup(Readable.from([file]), 'b.gkbackup', key));

test('format: encrypted and plain round trips, chunked; the key never appears, its id does', async (t) => {
  const payload = randomBytes(5500);
  const key = randomBytes(32);
  for (const k of [key, undefined]) {
    const file = await encode(payload, k);
    t.deepEqual(await decode(file, k), payload);
    t.is((await readBackupHeader(Readable.from([file]), 'b')).encryption?.keyId, k ? keyIdOf(k) : undefined);
  }
  const enc = await encode(payload, key);
  t.false(enc.includes(key));
  t.false(enc.includes(payload.subarray(100, 132)), 'the payload is not in clear');
  // A payload of exactly whole chunks still ends with a (empty) last chunk.
  const whole = randomBytes(3000);
  t.deepEqual(await decode(await encode(whole, key), key), whole);
  t.deepEqual(await decode(await encode(Buffer.alloc(0), key), key), Buffer.alloc(0));
});

test('format: every flipped bit, a cut at any point, bytes appended, chunks swapped and the wrong key are refused', async (t) => {
  const payload = randomBytes(2500);
  const key = randomBytes(32);
  for (const k of [key, undefined]) {
    const file = await encode(payload, k);
    // Every byte position, one bit each: nothing damaged may decode.
    for (let i = 0; i < file.length; i += 7) {
      const bad = Buffer.from(file);
      bad[i]! ^= 1 << (i % 8);
      const e = await t.throwsAsync(decode(bad, k));
      t.truthy(e?.message, `byte ${i}`);
    }
    for (const cut of [0, 5, 20, 200, 1010, file.length - 1]) {
      await t.throwsAsync(decode(file.subarray(0, cut), k), { message: /truncated|not a geminik8s backup/ }, `cut at ${cut}`);
    }
    await t.throwsAsync(decode(Buffer.concat([file, Buffer.from('x')]), k), { message: /after the last chunk/ });
  }
  await t.throwsAsync(decode(await encode(payload, key), randomBytes(32)), { message: /wrong --encryption-key/ });
  await t.throwsAsync(decode(await encode(payload, key)), { message: /encrypted .*give its key/ });
  await t.throwsAsync(decode(await encode(payload), key), { message: /not encrypted/ });
  // Two files joined at a chunk boundary: the second header is not a chunk of the first.
  const one = await encode(payload, key);
  await t.throwsAsync(decode(Buffer.concat([one, one]), key), { message: /after the last chunk/ });
});

test('format: keys from raw bytes, hex and base64; anything else named with the file', (t) => {
  const k = randomBytes(32);
  t.deepEqual(parseBackupKey(k, 'k'), k);
  t.deepEqual(parseBackupKey(Buffer.from(`${k.toString('hex')}\n`), 'k'), k);
  t.deepEqual(parseBackupKey(Buffer.from(k.toString('base64')), 'k'), k);
  t.throws(() => parseBackupKey(Buffer.from('short\n'), '/etc/backup.key'), { message: /^\/etc\/backup\.key: expected a 256-bit key/ });
  t.throws(() => parseBackupKey(Buffer.from('ab'.repeat(31)), 'k'), { message: /expected a 256-bit key/ });
});

test('WAL segments a manifest range needs, as PostgreSQL names them', (t) => {
  t.deepEqual(walSegmentsFor(1, '0/2000028', '0/2000100'), ['000000010000000000000002']);
  t.deepEqual(walSegmentsFor(3, '0/FF000028', '1/01000000'), ['0000000300000000000000FF', '000000030000000100000000']);
  t.deepEqual(walSegmentsFor(2, '0/2000028', '0/4000000'), ['000000020000000000000002', '000000020000000000000003']);
});

test('backupRefusal: only the leader\'s writable primary, one at a time', (t) => {
  const ok = { role: 'leader', pgUp: true, inRecovery: false, readOnly: false, running: false };
  t.is(backupRefusal(ok), undefined);
  t.regex(backupRefusal({ ...ok, role: 'follower' })!, /not the leader/);
  t.regex(backupRefusal({ ...ok, pgUp: false })!, /does not answer/);
  t.regex(backupRefusal({ ...ok, inRecovery: true })!, /standby/);
  t.regex(backupRefusal({ ...ok, readOnly: true })!, /read-only/);
  t.regex(backupRefusal({ ...ok, running: true })!, /already running/);
});

// A real base backup from a PostgreSQL on the host (root and postgresql-15 needed, as in CI).
const BIN = hostPgBinDir();
const runnable = process.getuid?.() === 0 && BIN !== undefined && existsSync(join(BIN, 'pg_basebackup'));
const real = runnable ? test.serial : test.serial.skip;

async function realBaseBackup(): Promise<Buffer> {
  const root = tempDir('gk-bb-');
  chmodSync(root, 0o755);
  const data = join(root, 'data');
  mkdirSync(data, { mode: 0o700 });
  await runPlan({ cmd: 'chown', args: ['postgres', root, data] });
  const as = (cmd: string, args: string[]) => runPlan({ cmd: 'runuser', args: ['-u', 'postgres', '--', join(BIN!, cmd), ...args] }, { timeoutMs: 120_000, binaryStdout: cmd === 'pg_basebackup' });
  await as('initdb', ['-D', data, '-A', 'peer', '--no-sync']);
  await as('pg_ctl', ['-D', data, '-o', `-k ${root} -c listen_addresses=''`, '-l', join(root, 'log'), '-w', 'start']);
  try {
    const r = await as('pg_basebackup', ['-h', root, '-D', '-', '-F', 'tar', '-X', 'fetch', '-c', 'fast', '--manifest-checksums=SHA256']);
    return Buffer.from(r.stdout as unknown as Uint8Array);
  } finally {
    await as('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
  }
}

/** Rewrite one entry of a tar (or drop it) and return the new tar. */
async function editTar(tar: Buffer, edit: (name: string, data: Buffer) => Buffer | null, extra?: { name: string; data: Buffer }): Promise<Buffer> {
  const extract = tarStream.extract();
  const pack = tarStream.pack();
  const out = collect(pack as unknown as AsyncIterable<Uint8Array>);
  const src = Readable.from([tar]);
  src.pipe(extract as unknown as NodeJS.WritableStream);
  for await (const entry of extract) {
    const data = await collect(entry as AsyncIterable<Uint8Array>);
    const next = entry.header.type === 'file' ? edit(entry.header.name, data) : data;
    if (next !== null) pack.entry({ ...entry.header, size: next.length }, next);
  }
  if (extra) pack.entry({ name: extra.name, size: extra.data.length, type: 'file', mode: 0o600 }, extra.data);
  pack.finalize();
  return out;
}

real('a real pg_basebackup tar: packed and read back whole; an altered, missing or extra file and missing WAL are named', async (t) => {
  t.timeout(180_000);
  const tar = await realBaseBackup();
  const payload = await collect(packPayload(meta, Readable.from([tar])));
  const summary = await readPayload(Readable.from([payload]));
  t.like(summary, { meta });
  t.true(summary.files > 900);

  const flip = (name: string) => (n: string, d: Buffer) => {
    if (n !== name) return d;
    const b = Buffer.from(d);
    b[b.length >> 1]! ^= 1;
    return b;
  };
  const problems = async (edited: Buffer) => {
    const e = await t.throwsAsync(collect(packPayload(meta, Readable.from([edited]))));
    return e?.message ?? '';
  };
  t.regex(await problems(await editTar(tar, flip('global/pg_control'))), /global\/pg_control: SHA-256 does not match backup_manifest/);
  t.regex(await problems(await editTar(tar, (n, d) => (n === 'PG_VERSION' ? null : d))), /PG_VERSION: listed in backup_manifest, missing from the backup/);
  t.regex(await problems(await editTar(tar, (n, d) => d, { name: 'planted', data: Buffer.from('x') })), /planted: in the backup, not in backup_manifest/);
  t.regex(await problems(await editTar(tar, (n, d) => (/^pg_wal\/0/.test(n) ? null : d))), /pg_wal\/[0-9A-F]{24}: WAL the backup needs .* is missing/);
  t.regex(await problems(await editTar(tar, flip('backup_manifest'))), /backup_manifest (does not match its own checksum|is not JSON)/);
  t.regex(await problems(await editTar(tar, (n, d) => (n === 'backup_manifest' ? null : d))), /no backup_manifest/);

  // The same checks on the reading side (a backup file altered before it was encrypted).
  const check = new ManifestCheck();
  t.deepEqual(check.problems(), ['no backup_manifest in the base backup (taken without a manifest, or cut short)']);
  // The manifest's own checksum, computed by PostgreSQL, is what the check relies on.
  const manifest = await (async () => {
    const ex = tarStream.extract();
    Readable.from([tar]).pipe(ex as unknown as NodeJS.WritableStream);
    let m: Buffer = Buffer.alloc(0);
    for await (const e of ex) {
      const d = await collect(e as AsyncIterable<Uint8Array>);
      if (e.header.name === 'backup_manifest') m = d;
    }
    return m;
  })();
  t.regex(manifest.toString('utf8'), /"Manifest-Checksum": "[0-9a-f]{64}"/);
});

test('the encoded file of a packed payload has the header outside, the token inside', async (t) => {
  const key = randomBytes(32);
  const payload = Buffer.from(`${JSON.stringify(meta)}`);
  const file = await collect(encodeBackup(headerFor(key, CHUNK_BYTES), Readable.from([payload]), key));
  const header = await readBackupHeader(Readable.from([file]), 'f');
  t.is(header.cluster, 'site-a');
  t.false(file.includes(Buffer.from(meta.k3sToken)));
  t.false(JSON.stringify(header).includes(meta.k3sToken));
});

test('extraction refuses names that climb out, absolute names and links, writing nothing outside', async (t) => {
  const root = tempDir('gk-extract-');
  const target = join(root, 'data');
  mkdirSync(target);
  const payload = async (entries: { name: string; type?: 'file' | 'symlink' | 'directory'; linkname?: string; data?: string }[]) => {
    const pack = tarStream.pack();
    const out = collect(pack as unknown as AsyncIterable<Uint8Array>);
    const metaJson = Buffer.from(JSON.stringify(meta));
    pack.entry({ name: 'geminik8s/backup.json', size: metaJson.length, type: 'file' }, metaJson);
    for (const e of entries) {
      const data = Buffer.from(e.data ?? '');
      const isFile = !e.type || e.type === 'file';
      pack.entry({ name: e.name, type: e.type ?? 'file', size: isFile ? data.length : 0, ...(e.linkname ? { linkname: e.linkname } : {}) }, isFile ? data : Buffer.alloc(0));
    }
    pack.finalize();
    return out;
  };
  const outside = join(root, 'outside');
  await t.throwsAsync(readPayload(Readable.from([await payload([{ name: 'pgdata/../outside', data: 'x' }])]), extractSink(target)), { message: /unsafe path/ });
  await t.throwsAsync(readPayload(Readable.from([await payload([{ name: '/etc/evil', data: 'x' }])]), extractSink(target)), { message: /outside pgdata\/|unsafe path/ });
  await t.throwsAsync(readPayload(Readable.from([await payload([{ name: 'pgdata/pg_tblspc/1', type: 'symlink', linkname: root }, { name: 'pgdata/pg_tblspc/1/outside', data: 'x' }])]), extractSink(target)), { message: /unexpected entry type symlink/ });
  t.false(existsSync(outside));
  t.false(existsSync(join(target, 'pg_tblspc', '1')));
});
