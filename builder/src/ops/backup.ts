import { createReadStream, existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import * as z from 'zod';
import { packPayload, readPayload, type BackupMeta, type EntrySink, type PayloadSummary } from '#common/backup/archive.ts';
import { extractSink } from '#common/backup/extract.ts';
import { CHUNK_BYTES, decodeBackup, encodeBackup, encryptionFor, readBackupHeader, type BackupHeader } from '#common/backup/format.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { findTool, runPlan, type CommandPlan } from '#common/exec.ts';
import { syncDirectory } from '#common/fsutil.ts';
import { httpStream, type ClientTls } from '#common/httpclient.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { agentUrl, collectStatus, type Fetcher } from './status.ts';

/** The identity the agent sends ahead of a backup's bytes (agent/src/backup.ts). */
const IdentitySchema = z.strictObject({
  cluster: z.string(), node: z.string(), generation: z.number().int().nonnegative(), systemIdentifier: z.string().regex(/^\d+$/),
  timeline: z.number().int().positive(), startLsn: z.string(), pgVersion: z.number().int().positive(),
});

export interface BackupRequest {
  output: string;
  key?: Buffer;
  force?: boolean;
  /** Progress lines (bytes so far), at most every few seconds. */
  progress?: (line: string) => void;
  now?: () => Date;
}

export interface BackupResult {
  file: string;
  header: BackupHeader;
  bytesWritten: number;
  seconds: number;
}

/** Counts bytes going through, for progress and the figures at the end. */
async function* counted(src: AsyncIterable<Uint8Array>, onBytes: (n: number) => void): AsyncGenerator<Uint8Array> {
  for await (const c of src) {
    onBytes(c.length);
    yield c;
  }
}

/**
 * Write `bytes` to `file` safely: a hidden partial file (0600, never others'), fsync'ed, renamed
 * into place only when the whole stream succeeded; removed on any failure.
 */
async function writeWhole(file: string, bytes: AsyncIterable<Uint8Array>, force: boolean): Promise<number> {
  if (existsSync(file) && !force) throw new GeminiError(`${file} exists: give another --output, or --force to replace it`, ExitCode.refused);
  await mkdir(dirname(file), { recursive: true });
  const partial = join(dirname(file), `.${basename(file)}.partial-${process.pid}`);
  const handle = await open(partial, 'wx', 0o600);
  let written = 0;
  try {
    for await (const c of bytes) {
      await handle.write(c);
      written += c.length;
    }
    await handle.sync();
    await handle.close();
    await rename(partial, file);
    await syncDirectory(dirname(file));
    return written;
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
}

/**
 * Take a backup of the pair: find the leader, stream its base backup (POST /v1/backup with the
 * admin token), check it against its manifest while writing, and write it as a backup file
 * (docs/backup.md) with the K3s server token inside, encrypted when a key is given.
 */
export async function takeBackup(cluster: Cluster, secrets: Secrets, tls: ClientTls | undefined, fetcher: Fetcher, req: BackupRequest): Promise<BackupResult> {
  const status = await collectStatus(cluster, secrets, fetcher);
  if (!status.leader) throw new GeminiError(`no node of ${cluster.name} leads a writable primary (${status.reasons.join('; ') || status.health}): nothing to back up`, ExitCode.refused);
  const node = cluster.nodes.find((n) => n.name === status.leader)!;
  const started = performance.now();
  const answer = await httpStream(agentUrl(cluster, node.ip, '/v1/backup'), {
    method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: '{}',
    connectTimeoutMs: 120_000, idleTimeoutMs: 300_000, ...(tls ? { tls } : {}),
  });
  if (answer.status !== 200) {
    const chunks: Buffer[] = [];
    for await (const c of answer.body) chunks.push(c as Buffer);
    let reason = Buffer.concat(chunks).toString('utf8');
    try {
      const j = JSON.parse(reason) as { reason?: string; error?: string };
      reason = j.reason ?? j.error ?? reason;
    } catch {
      // not JSON: the text is the reason
    }
    throw new GeminiError(`${node.name} refused the backup (HTTP ${answer.status}): ${reason}`, answer.status === 409 ? ExitCode.refused : ExitCode.commandFailed);
  }
  const identity = IdentitySchema.safeParse(JSON.parse(String(answer.headers['x-geminik8s-backup'] ?? 'null')));
  if (!identity.success) {
    answer.body.destroy();
    throw new GeminiError(`${node.name} sent a backup without its identity header`, ExitCode.commandFailed);
  }
  if (identity.data.cluster !== cluster.name) {
    answer.body.destroy();
    throw new GeminiError(`${node.ip} says it belongs to cluster ${identity.data.cluster}, not ${cluster.name}`, ExitCode.refused);
  }
  const createdAt = (req.now ?? (() => new Date()))().toISOString();
  const meta: BackupMeta = { ...identity.data, createdAt, k3sToken: secrets.k3sToken };
  const header: BackupHeader = { format: 1, ...identity.data, createdAt, chunkBytes: CHUNK_BYTES, encryption: encryptionFor(req.key) };
  let received = 0;
  let lastReport = performance.now();
  const source = counted(answer.body, (n) => {
    received += n;
    if (req.progress && performance.now() - lastReport > 5000) {
      lastReport = performance.now();
      req.progress(`${(received / 1e6).toFixed(0)} MB received from ${node.name}`);
    }
  });
  const bytes = await writeWhole(resolve(req.output), (async function* () {
    yield* encodeBackup(header, packPayload(meta, source), req.key);
    // The agent's last word: pg_basebackup exited 0. A stream cut short never gets its final name.
    const trailers = await answer.ended;
    if (trailers['x-geminik8s-result'] !== 'ok') throw new GeminiError(`the base backup on ${node.name} failed: ${trailers['x-geminik8s-result'] ?? 'the stream ended without a result'}`, ExitCode.commandFailed);
  })(), Boolean(req.force));
  return { file: resolve(req.output), header, bytesWritten: bytes, seconds: (performance.now() - started) / 1000 };
}

/** Read a whole backup file back: authenticate every chunk and check every file against the manifest. */
export async function verifyBackupFile(file: string, key: Buffer | undefined, sink?: EntrySink, onHeader?: (h: BackupHeader) => void): Promise<PayloadSummary & { header: BackupHeader }> {
  let header: BackupHeader | undefined;
  try {
    const summary = await readPayload(decodeBackup(createReadStream(file), file, key, (h) => {
      header = h;
      onHeader?.(h);
    }), sink);
    if (summary.meta.cluster !== header!.cluster || summary.meta.systemIdentifier !== header!.systemIdentifier) {
      throw new GeminiError(`${file}: its header and its contents name different clusters: damaged or altered`, ExitCode.artifact);
    }
    return { ...summary, header: header! };
  } catch (err) {
    if (err instanceof GeminiError) throw err;
    throw new GeminiError(`${file}: ${(err as Error).message}`, ExitCode.artifact);
  }
}

/** pg_verifybackup on the host: on PATH, else the newest /usr/lib/postgresql/N/bin. */
export async function findPgVerifyBackup(): Promise<string | undefined> {
  const onPath = await findTool('pg_verifybackup');
  if (onPath) return onPath;
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).filter((v) => /^\d+$/.test(v) && existsSync(join(base, v, 'bin', 'pg_verifybackup'))).map(Number).sort((a, b) => b - a);
  return versions[0] === undefined ? undefined : join(base, String(versions[0]), 'bin', 'pg_verifybackup');
}

export function verifyBackupPlan(tool: string, dir: string): CommandPlan {
  return { cmd: tool, args: ['--quiet', dir], title: 'pg_verifybackup' };
}

/** --verify: the whole file read back, extracted to a scratch directory beside it, then pg_verifybackup (WAL included). */
export async function verifyWithPostgres(file: string, key: Buffer | undefined): Promise<{ summary: PayloadSummary; tool: string }> {
  const tool = await findPgVerifyBackup();
  if (!tool) throw new GeminiError('--verify needs pg_verifybackup: install the Debian package postgresql-client (apt-get install postgresql-client)', ExitCode.missingTool);
  const scratch = await mkdtemp(join(dirname(file), '.gk-verify-'));
  try {
    const dir = join(scratch, 'pgdata');
    await mkdir(dir, { mode: 0o700 });
    const summary = await verifyBackupFile(file, key, extractSink(dir));
    await runPlan(verifyBackupPlan(tool, dir), { timeoutMs: 60 * 60_000 });
    return { summary, tool };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * Keep the newest `keep` backups of `cluster` in `dir` (by the time in their headers); delete
 * the older ones. Files that are not backups of this cluster are never touched.
 */
export async function pruneBackups(dir: string, cluster: string, keep: number): Promise<string[]> {
  const found: { file: string; at: string }[] = [];
  for (const name of await readdir(dir)) {
    if (name.startsWith('.')) continue;
    const file = join(dir, name);
    if (!(await stat(file)).isFile()) continue;
    try {
      const h = await readBackupHeader(Readable.from(createReadStream(file, { end: 70_000 })), file);
      if (h.cluster === cluster) found.push({ file, at: h.createdAt });
    } catch {
      // not one of ours
    }
  }
  found.sort((a, b) => b.at.localeCompare(a.at));
  const old = found.slice(keep).map((f) => f.file);
  for (const f of old) await rm(f);
  if (old.length > 0) await syncDirectory(dir);
  return old;
}
