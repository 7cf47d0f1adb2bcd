import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { CommandPlan, RunResult } from '#common/exec.ts';
import { runPlan } from '#common/exec.ts';
import { libpqTlsParams, pgHbaConf, pgIdentConf, pgTlsConf, pgTlsDir, postgresqlConf, PG_TLS_FILES, REPLICATION_USER, slotNameFor, KINE_DATABASE, KINE_USER } from '#common/render/postgresql.ts';
import { kinePassword } from '#common/render/k3s.ts';
import type { NodeContext } from './context.ts';
import { formatLsn, lsnToBigInt } from './core/lsn.ts';
import type { HistoryEntry, LeaderTimeline, LocalWal, WalStretch } from './core/rejoin.ts';

/** What a query of the local server says about itself. */
export interface LocalPgStatus {
  up: boolean;
  inRecovery?: boolean;
  /** Current WAL position (primary: insert LSN; standby: replay LSN). */
  lsn?: string;
  timeline?: number;
  /** Standby: the WAL receiver is streaming from the peer. */
  receiverStreaming?: boolean;
  /** Primary: the peer's replication state as seen in pg_stat_replication. */
  peerReplication?: { state: string; syncState: string; replayLsn: string | null; flushLsn: string | null };
  synchronousStandbyNames?: string;
  readOnly?: boolean;
  error?: string;
}

// The plans below are pure: the executor runs them through the process seam.

function asPostgres(ctx: NodeContext, cmd: string, args: string[], env: Record<string, string> = {}): CommandPlan {
  // runuser keeps the environment we pass (PGPASSFILE) and drops root for PostgreSQL tools.
  return { cmd: 'runuser', args: ['-u', ctx.config.postgresql.osUser, '--', join(ctx.config.postgresql.binDir, cmd), ...args], env };
}

export function initdbPlan(ctx: NodeContext, pwfile: string): CommandPlan {
  return asPostgres(ctx, 'initdb', [
    '-D', ctx.config.postgresql.dataDir,
    '--data-checksums',
    '--encoding=UTF8', '--locale=C',
    '--username=postgres',
    `--pwfile=${pwfile}`,
    '--auth-local=peer', '--auth-host=scram-sha-256',
  ]);
}

export function pgCtlStartPlan(ctx: NodeContext): CommandPlan {
  if (ctx.config.serviceManager === 'systemd') return { cmd: 'systemctl', args: ['start', 'geminik8s-postgresql.service'] };
  return asPostgres(ctx, 'pg_ctl', ['-D', ctx.config.postgresql.dataDir, '-l', join(pgLogDir(ctx), 'postgresql.log'), '-w', '-t', '60', '-o', `-k ${ctx.config.postgresql.socketDir}`, 'start']);
}

/**
 * Stop the server: a fast shutdown (SIGINT to the postmaster) or an immediate one (SIGQUIT).
 * Under systemd by a signal rather than a stop job, which returns at once (the caller waits for
 * the postmaster to go): during the agent's own stop the unit's stop job is queued behind the
 * agent's (Before=), so `systemctl stop` would wait for the agent that waits for it.
 */
export function pgCtlStopPlan(ctx: NodeContext, mode: 'fast' | 'immediate'): CommandPlan {
  if (ctx.config.serviceManager === 'systemd') {
    return mode === 'immediate'
      ? { cmd: 'systemctl', args: ['kill', '--signal=SIGQUIT', 'geminik8s-postgresql.service'] }
      : { cmd: 'systemctl', args: ['kill', '--kill-whom=main', '--signal=SIGINT', 'geminik8s-postgresql.service'] };
  }
  return asPostgres(ctx, 'pg_ctl', ['-D', ctx.config.postgresql.dataDir, '-m', mode, '-w', '-t', '30', 'stop']);
}

/** Clone the peer's data directory as a standby, streaming through this node's slot. */
export function basebackupPlan(ctx: NodeContext): CommandPlan {
  return asPostgres(
    ctx,
    'pg_basebackup',
    ['-h', ctx.peer.ip, '-p', String(ctx.spec.postgresql.port), '-U', REPLICATION_USER, '-D', ctx.config.postgresql.dataDir, '-X', 'stream', '-c', 'fast', '--no-password', '-S', slotNameFor(ctx.self.name)],
    { PGPASSFILE: pgpassFile(ctx), PGCONNECT_TIMEOUT: '5', ...envTls(ctx) },
  );
}

/**
 * A base backup of this node's own server to stdout, over the local socket as the postgres
 * role (peer authentication): tar format, the WAL it needs fetched into pg_wal/, and a backup
 * manifest with a SHA-256 per file, which pg_basebackup appends to the tar as its last entry.
 */
export function backupPlan(ctx: NodeContext): CommandPlan {
  return asPostgres(ctx, 'pg_basebackup', [
    '-h', localHost(ctx), '-p', String(ctx.spec.postgresql.port), '-U', 'postgres', '--no-password',
    '-D', '-', '-F', 'tar', '-X', 'fetch', '-c', 'fast', '--manifest-checksums=SHA256',
  ]);
}

/**
 * Rewind this node's diverged data directory onto the peer's timeline. Without
 * `--no-ensure-shutdown`: a directory left by a crash or an immediate shutdown (a fence) is
 * first brought to a clean state by pg_rewind itself (single-user crash recovery).
 */
export function rewindPlan(ctx: NodeContext): CommandPlan {
  return asPostgres(
    ctx,
    'pg_rewind',
    // --progress: pg_rewind says how much it copies ("need to copy N MB") only with it.
    ['--progress', '-D', ctx.config.postgresql.dataDir, `--source-server=host=${ctx.peer.ip} port=${ctx.spec.postgresql.port} user=postgres dbname=postgres connect_timeout=5${conninfoTls(ctx)}`],
    { PGPASSFILE: pgpassFile(ctx) },
  );
}

/** `pg_controldata` of the data directory, in English whatever the locale, to read its cluster state. */
export function controlDataPlan(ctx: NodeContext): CommandPlan {
  return asPostgres(ctx, 'pg_controldata', ['-D', ctx.config.postgresql.dataDir], { LC_ALL: 'C' });
}

/** The "Database cluster state" line of `pg_controldata`'s output ("in production", "shut down", ...). */
export function clusterState(controlData: string): string | undefined {
  return controlField(controlData, 'Database cluster state');
}

/** pg_control's DBState values (catalog/pg_control.h), the same since PostgreSQL 9.x. */
const DB_SHUTDOWNED_IN_RECOVERY = 2;
const DB_IN_ARCHIVE_RECOVERY = 5;

/**
 * The cluster state pg_control records, read from the file itself rather than through
 * `pg_controldata` (a program start costs most of a second under TCG): the `state` field comes
 * after the 8-byte system identifier and two 4-byte version numbers, in the machine's byte order.
 * Undefined when the file cannot be read.
 */
export function controlStateCode(dataDir: string): number | undefined {
  try {
    const b = readFileSync(join(dataDir, 'global', 'pg_control'));
    if (b.length < 20) return undefined;
    return endianness() === 'LE' ? b.readInt32LE(16) : b.readInt32BE(16);
  } catch {
    return undefined;
  }
}

/**
 * A promotion that died midway: the server was in recovery when it stopped ("in archive
 * recovery", "shut down in recovery") and neither standby.signal nor recovery.signal is left.
 * PostgreSQL removes the signal file after "selected new timeline ID" and before its
 * end-of-recovery record (StartupXLOG). Started like that, crash recovery ends as a primary on
 * the old timeline: the promotion skipped, and with it the agent's work after it (the peer's
 * slot, the timeline's record), so the old leader could never stream from it.
 */
export function interruptedPromotion(dataDir: string): boolean {
  if (existsSync(join(dataDir, 'standby.signal')) || existsSync(join(dataDir, 'recovery.signal'))) return false;
  const state = controlStateCode(dataDir);
  return state === DB_IN_ARCHIVE_RECOVERY || state === DB_SHUTDOWNED_IN_RECOVERY;
}

/** One `Name: value` line of `pg_controldata`'s output. */
function controlField(controlData: string, name: string): string | undefined {
  return new RegExp(`^${name}:\\s*(.+?)\\s*$`, 'm').exec(controlData)?.[1];
}

/** What `pg_controldata` says of the WAL: the system, the latest checkpoint's location and timeline, and the WAL's page and segment sizes. */
export function controlWal(controlData: string): { systemId: string; checkpoint: string; timeline: number; blockBytes: number; segmentBytes: number } | undefined {
  const systemId = controlField(controlData, 'Database system identifier');
  const checkpoint = controlField(controlData, 'Latest checkpoint location');
  const timeline = Number(controlField(controlData, "Latest checkpoint's TimeLineID"));
  const blockBytes = Number(controlField(controlData, 'WAL block size'));
  const segmentBytes = Number(controlField(controlData, 'Bytes per WAL segment'));
  const sizes = Number.isInteger(blockBytes) && blockBytes > 0 && Number.isInteger(segmentBytes) && segmentBytes >= blockBytes;
  return systemId && checkpoint && Number.isInteger(timeline) && timeline > 0 && sizes ? { systemId, checkpoint, timeline, blockBytes, segmentBytes } : undefined;
}

/**
 * Read the WAL of `timeline` from `start` to its end, printing nothing but the reason it
 * stopped (`-q`): "error in WAL record at X: ..." names the last record it could read.
 */
export function walDumpPlan(ctx: NodeContext, timeline: number, start: string): CommandPlan {
  return asPostgres(ctx, 'pg_waldump', ['-q', '-p', join(ctx.config.postgresql.dataDir, 'pg_wal'), '-t', String(timeline), '-s', start], { LC_ALL: 'C' });
}

// What xlogreader says where valid WAL ends; recovery stops at the same place for the same reasons.
const END_OF_WAL = [/invalid record length at /, /invalid magic number /, /unexpected pageaddr /, /record with incorrect prev-link /, /invalid resource manager ID /, /incorrect resource manager data checksum /, /there is no contrecord flag at /, /invalid contrecord length /];

/**
 * The start of the last record pg_waldump read, when it stopped at the end of valid WAL. Any other
 * stop (a segment missing or unreadable, nothing read at all) says nothing of where the WAL ends.
 */
export function walDumpLastRecord(stderr: string): bigint | undefined {
  const m = /error in WAL record at ([0-9A-F]+\/[0-9A-F]+): (.*)$/m.exec(stderr);
  if (!m || !END_OF_WAL.some((r) => r.test(m[2]!))) return undefined;
  return lsnToBigInt(m[1]!);
}

/** A timeline history file: `parent<TAB>switchpoint<TAB>reason` per line. */
export function parseHistory(text: string): HistoryEntry[] {
  const out: HistoryEntry[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t || t.startsWith('#')) continue;
    const [parent, at] = t.split(/\s+/);
    out.push({ parent: Number(parent), switchpoint: lsnToBigInt(at!) });
  }
  return out;
}

/** A timeline or segment number as WAL file names spell it: 8 upper-case hex digits. */
const hex8 = (n: bigint | number): string => n.toString(16).toUpperCase().padStart(8, '0');

/** `0000000A.history`: the history file of a timeline. */
export const historyFile = (timeline: number): string => `${hex8(timeline)}.history`;

/** A primary's system identifier, current timeline and that timeline's history, over a superuser connection. */
export async function leaderTimelineOf(c: pg.Client): Promise<LeaderTimeline> {
  // pg_control_checkpoint() lags a promotion until the next checkpoint; the WAL file name does not.
  const row = (await c.query(`SELECT (SELECT system_identifier FROM pg_control_system())::text AS sysid,
      ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tli`)).rows[0] as { sysid: string; tli: number };
  const history = row.tli > 1 ? parseHistory((await c.query(`SELECT pg_read_file($1) AS h`, [`pg_wal/${historyFile(row.tli)}`])).rows[0].h as string) : [];
  return { systemId: row.sysid, timeline: row.tli, history };
}

/** The peer's `leaderTimelineOf`. */
export const leaderTimeline = (ctx: NodeContext): Promise<LeaderTimeline> => withClient(ctx, ctx.peer.ip, leaderTimelineOf, 5000);

/** One record of `timeline` at `start`, printed (`pg_waldump -n 1`): its total length. */
export function walRecordPlan(ctx: NodeContext, timeline: number, start: string): CommandPlan {
  return asPostgres(ctx, 'pg_waldump', ['-p', join(ctx.config.postgresql.dataDir, 'pg_wal'), '-t', String(timeline), '-s', start, '-n', '1'], { LC_ALL: 'C' });
}

/** The total length pg_waldump prints for a record ("len (rec/tot): 54/ 54"). */
export function walRecordLength(stdout: string): number | undefined {
  const m = /len \(rec\/tot\):\s*\d+\/\s*(\d+)/.exec(stdout);
  return m ? Number(m[1]) : undefined;
}

/** Where a record of `length` bytes starting at `start` ends: a record goes on past a page's end after the next page's header (40 bytes at a segment's start, else 24). */
export function recordEnd(start: bigint, length: number, blockBytes: number, segmentBytes: number): bigint {
  const block = BigInt(blockBytes);
  const seg = BigInt(segmentBytes);
  let at = start;
  let left = BigInt(length);
  for (;;) {
    const pageEnd = (at / block + 1n) * block;
    const take = left < pageEnd - at ? left : pageEnd - at;
    at += take;
    left -= take;
    if (left === 0n) return at;
    at = pageEnd + (pageEnd % seg === 0n ? 40n : 24n);
  }
}

/** `000000020000000000000003`: the WAL segment file of `timeline` that holds `lsn`. */
export function walFileName(timeline: number, lsn: bigint, segmentBytes: number): string {
  const segno = lsn / BigInt(segmentBytes);
  const perId = 0x1_0000_0000n / BigInt(segmentBytes);
  return `${hex8(timeline)}${hex8(segno / perId)}${hex8(segno % perId)}`;
}

/** Where a stretch lies in its segment file. */
function stretchBytes(stretch: WalStretch, segmentBytes: number): { offset: number; length: number } {
  return { offset: Number(stretch.from % BigInt(segmentBytes)), length: Number(stretch.to - stretch.from) };
}

/**
 * The leader's files that may hold its copy of a stretch of timeline T: T's own segment, and the
 * same segment of each later timeline, which begins with a copy of its parent's up to the switch.
 */
export function leaderCopies(stretch: WalStretch, leader: LeaderTimeline, segmentBytes: number): string[] {
  const later = [...leader.history.map((h) => h.parent), leader.timeline].filter((t) => t > stretch.timeline);
  return [...new Set([stretch.timeline, ...later])].map((t) => walFileName(t, stretch.from, segmentBytes));
}

/** sha256 of a stretch of this node's WAL; undefined when its file is missing or short. */
export async function localStretchDigest(ctx: NodeContext, stretch: WalStretch, segmentBytes: number): Promise<string | undefined> {
  const file = join(ctx.config.postgresql.dataDir, 'pg_wal', walFileName(stretch.timeline, stretch.from, segmentBytes));
  const { offset, length } = stretchBytes(stretch, segmentBytes);
  const fh = await open(file, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return bytesRead === length ? createHash('sha256').update(buf).digest('hex') : undefined;
  } finally {
    await fh.close();
  }
}

/** sha256 of the leader's copy of a stretch, from the first of `files` it still holds; undefined when none. */
export async function leaderStretchDigestOf(c: pg.Client, stretch: WalStretch, files: string[], segmentBytes: number): Promise<string | undefined> {
  const { offset, length } = stretchBytes(stretch, segmentBytes);
  for (const f of files) {
    const r = await c.query(`SELECT encode(sha256(b), 'hex') AS h, length(b) AS n FROM pg_read_binary_file($1::text, $2::bigint, $3::bigint, true) AS b`, [`pg_wal/${f}`, offset, length]);
    const row = r.rows[0] as { h: string | null; n: number | null };
    if (row.h !== null && row.n === length) return row.h;
  }
  return undefined;
}

/** Whether the leader's copy of a stretch of our WAL is ours byte for byte; undefined when either side no longer holds it. */
export async function sameWal(ctx: NodeContext, stretch: WalStretch, leader: LeaderTimeline, segmentBytes: number): Promise<boolean | undefined> {
  const ours = await localStretchDigest(ctx, stretch, segmentBytes);
  if (ours === undefined) return undefined;
  const theirs = await withClient(ctx, ctx.peer.ip, (c) => leaderStretchDigestOf(c, stretch, leaderCopies(stretch, leader, segmentBytes), segmentBytes), 30_000);
  return theirs === undefined ? undefined : theirs === ours;
}

/** The stopped data directory's WAL as `rejoinPath` weighs it. Throws when pg_controldata cannot be read. */
export async function localWal(ctx: NodeContext): Promise<LocalWal> {
  const cd = controlWal((await run(controlDataPlan(ctx))).stdout);
  if (!cd) throw new Error('pg_controldata names no system identifier, checkpoint, timeline or WAL sizes');
  // Up to max_wal_size of WAL since the checkpoint: what recovery would read anyway.
  const dump = await runPlan(walDumpPlan(ctx, cd.timeline, cd.checkpoint), { allowFailure: true, timeoutMs: 10 * 60_000 });
  const names = await readdir(join(ctx.config.postgresql.dataDir, 'pg_wal'));
  const laterTimeline = names.some((n) => /^[0-9A-F]{8}\.history$/.test(n) && parseInt(n.slice(0, 8), 16) > cd.timeline);
  const lastRecord = walDumpLastRecord(dump.stderr);
  let lastRecordEnd: bigint | undefined;
  if (lastRecord !== undefined) {
    const one = await runPlan(walRecordPlan(ctx, cd.timeline, formatLsn(lastRecord)), { allowFailure: true, timeoutMs: 60_000 });
    const length = walRecordLength(one.stdout);
    if (length !== undefined) lastRecordEnd = recordEnd(lastRecord, length, cd.blockBytes, cd.segmentBytes);
  }
  return { systemId: cd.systemId, timeline: cd.timeline, lastRecord, lastRecordEnd, laterTimeline, segmentBytes: cd.segmentBytes };
}

/**
 * A data directory a crashed or fenced primary left ("in production", "in crash recovery",
 * "shutting down", "starting up"): it needs crash recovery before pg_rewind can read it.
 * A standby's ("in archive recovery") is left to pg_rewind as before.
 */
export function needsCrashRecovery(state: string | undefined): boolean {
  return state === 'in production' || state === 'in crash recovery' || state === 'shutting down' || state === 'starting up';
}

/**
 * The crash recovery pg_rewind would run itself (`postgres --single`), but keeping every WAL
 * segment in pg_wal. pg_rewind walks the target's WAL back from the divergence point to the
 * last checkpoint before it; the checkpoint that ends its own crash recovery removes segments
 * older than wal_keep_size (512 MB) from the end, and after a bulk write the last checkpoint
 * lies further back than that ("could not find previous WAL record"): the node then re-clones.
 * The next checkpoint of the rewound standby removes what is no longer needed.
 */
export function crashRecoveryPlan(ctx: NodeContext): CommandPlan {
  return { ...asPostgres(ctx, 'postgres', ['--single', '-D', ctx.config.postgresql.dataDir, '-c', 'wal_keep_size=1TB', 'template1']), input: '', title: 'crash recovery (postgres --single)' };
}

/** PostgreSQL's own log (direct mode), in a postgres-owned directory under the state dir. */
export function pgLogDir(ctx: NodeContext): string {
  return join(ctx.config.stateDir, 'pglog');
}

export function pgpassFile(ctx: NodeContext): string {
  return join(ctx.config.stateDir, 'pgpass');
}

/** Write the files PostgreSQL reads that come from the seed: conf fragment, pg_hba, pgpass. */
export async function writeNodeConfig(ctx: NodeContext): Promise<void> {
  const data = ctx.config.postgresql.dataDir;
  const { uid, gid } = await osUserIds(ctx.config.postgresql.osUser);
  await mkdir(join(data, 'conf.d'), { recursive: true, mode: 0o700 });
  await writeFile(join(data, 'conf.d', 'geminik8s.conf'), postgresqlConf(ctx.spec) + (ctx.config.postgresql.confFragment ? `${ctx.config.postgresql.confFragment}\n` : ''));
  await writeFile(join(data, 'pg_hba.conf'), pgHbaConf(ctx.spec, ctx.self.name), { mode: 0o600 });
  await writeFile(join(data, 'pg_ident.conf'), pgIdentConf(ctx.config.postgresql.osUser), { mode: 0o600 });
  await writePgTls(ctx, data, uid, gid);
  const conf = join(data, 'postgresql.conf');
  const text = await readFile(conf, 'utf8');
  if (!text.includes("include_dir = 'conf.d'")) await writeFile(conf, `${text}\ninclude_dir = 'conf.d'\n`);
  for (const f of [join(data, 'conf.d'), join(data, 'conf.d', 'geminik8s.conf'), join(data, 'pg_hba.conf'), join(data, 'pg_ident.conf')]) await chown(f, uid, gid);
  await writePgpass(ctx);
}

export async function writePgpass(ctx: NodeContext): Promise<void> {
  const { uid, gid } = await osUserIds(ctx.config.postgresql.osUser);
  const esc = (s: string): string => s.replaceAll('\\', '\\\\').replaceAll(':', '\\:');
  const port = ctx.spec.postgresql.port;
  const lines = [
    `*:${port}:replication:${REPLICATION_USER}:${esc(ctx.secrets.replicationPassword)}`,
    `*:${port}:*:postgres:${esc(ctx.secrets.postgresPassword)}`,
  ];
  const file = pgpassFile(ctx);
  await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  await chown(file, uid, gid);
}

/**
 * PostgreSQL's TLS: the node's certificate and key and the cluster CA from the seed, copied to
 * files the PostgreSQL user owns, 0600 (the server and libpq refuse a key others can read), and
 * the settings that use them. Without TLS material (development plaintext) both are removed.
 */
async function writePgTls(ctx: NodeContext, data: string, uid: number, gid: number): Promise<void> {
  const conf = join(data, 'conf.d', 'geminik8s-tls.conf');
  await writePgTlsFiles(ctx);
  if (!ctx.tls) {
    await rm(conf, { force: true });
    return;
  }
  await writeFile(conf, pgTlsConf(pgTlsDir(ctx.config.stateDir)));
  await chown(conf, uid, gid);
}

/** The TLS files alone: a clone or a rewind needs them before there is a data directory to configure. */
export async function writePgTlsFiles(ctx: NodeContext): Promise<void> {
  const dir = pgTlsDir(ctx.config.stateDir);
  if (!ctx.tls) {
    await rm(dir, { recursive: true, force: true });
    return;
  }
  const { uid, gid } = await osUserIds(ctx.config.postgresql.osUser);
  // Ours, readable by the server's group: were it the server's own, whoever runs code as the
  // database user could plant a symlink under a name we write as root.
  await mkdir(dir, { recursive: true, mode: 0o750 });
  await chown(dir, process.getuid?.() ?? 0, gid);
  await chmod(dir, 0o750);
  const files: [string, string][] = [[PG_TLS_FILES.cert, ctx.tls.cert], [PG_TLS_FILES.key, ctx.tls.key], [PG_TLS_FILES.ca, ctx.tls.ca]];
  for (const [name, text] of files) {
    const file = join(dir, name);
    // Written aside and renamed: a running server never reads half a key.
    await writeFile(`${file}.tmp`, text, { mode: 0o600 });
    await chown(`${file}.tmp`, uid, gid);
    await rename(`${file}.tmp`, file);
  }
}

/** libpq's TLS settings for this node's connections to its peer, as key=value conninfo words; empty without TLS. */
function conninfoTls(ctx: NodeContext): string {
  if (!ctx.tls) return '';
  return Object.entries(libpqTlsParams(pgTlsDir(ctx.config.stateDir))).map(([k, v]) => ` ${k}=${v}`).join('');
}

/** The same settings as libpq environment variables (PGSSLMODE…), for pg_basebackup. */
function envTls(ctx: NodeContext): Record<string, string> {
  if (!ctx.tls) return {};
  const p = libpqTlsParams(pgTlsDir(ctx.config.stateDir));
  return { PGSSLMODE: p.sslmode, PGSSLROOTCERT: p.sslrootcert, PGSSLCERT: p.sslcert, PGSSLKEY: p.sslkey };
}

/** Standby settings: where to stream from and through which slot (no password: passfile). */
export async function configureStandby(ctx: NodeContext): Promise<void> {
  const data = ctx.config.postgresql.dataDir;
  const conninfo = `host=${ctx.peer.ip} port=${ctx.spec.postgresql.port} user=${REPLICATION_USER} passfile=${pgpassFile(ctx)} application_name=${ctx.self.name} connect_timeout=3 keepalives_idle=5 keepalives_interval=2 keepalives_count=2${conninfoTls(ctx)}`;
  // default_transaction_read_only: the old leader of a switchover set it on; once promoted, this
  // standby must take writes without one more reload on the way.
  await setAutoConf(ctx, { primary_conninfo: conninfo, primary_slot_name: slotNameFor(ctx.self.name), synchronous_standby_names: '', default_transaction_read_only: 'off' });
  await writeFile(join(data, 'standby.signal'), '');
  const { uid, gid } = await osUserIds(ctx.config.postgresql.osUser);
  await chown(join(data, 'standby.signal'), uid, gid);
}

/** Edit postgresql.auto.conf while the server is stopped (ALTER SYSTEM needs it running). */
export async function setAutoConf(ctx: NodeContext, settings: Record<string, string>): Promise<void> {
  const file = join(ctx.config.postgresql.dataDir, 'postgresql.auto.conf');
  const existing = existsSync(file) ? await readFile(file, 'utf8') : '# Do not edit this file manually!\n';
  const keep = existing.split('\n').filter((l) => !Object.keys(settings).some((k) => new RegExp(`^\\s*${k}\\s*=`).test(l)));
  const added = Object.entries(settings).map(([k, v]) => `${k} = '${v.replaceAll("'", "''")}'`);
  await writeFile(file, `${[...keep.filter((l, i) => l !== '' || i < keep.length - 1), ...added].join('\n')}\n`);
  const { uid, gid } = await osUserIds(ctx.config.postgresql.osUser);
  await chown(file, uid, gid);
}

export async function removeStandbySignal(ctx: NodeContext): Promise<void> {
  await rm(join(ctx.config.postgresql.dataDir, 'standby.signal'), { force: true });
}

export function hasData(ctx: NodeContext): boolean {
  return existsSync(join(ctx.config.postgresql.dataDir, 'PG_VERSION'));
}

const idCache = new Map<string, { uid: number; gid: number }>();
export async function osUserIds(user: string): Promise<{ uid: number; gid: number }> {
  const hit = idCache.get(user);
  if (hit) return hit;
  const passwd = await readFile('/etc/passwd', 'utf8');
  const line = passwd.split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`OS user ${user} does not exist`);
  const [, , uid, gid] = line.split(':');
  const ids = { uid: Number(uid), gid: Number(gid) };
  idCache.set(user, ids);
  return ids;
}

/**
 * A short-lived connection to a PostgreSQL server as the superuser: the peer's over TCP with the
 * password, or, when `host` is a directory (`localHost(ctx)`), this node's over its socket by
 * peer authentication (pg_ident.conf maps root to postgres), without a SCRAM exchange.
 */
export async function withClient<T>(ctx: NodeContext, host: string, fn: (c: pg.Client) => Promise<T>, timeoutMs = ctx.spec.failover.checkTimeout): Promise<T> {
  const client = newClient(ctx, host, timeoutMs, Math.max(timeoutMs, 2000));
  try {
    return await withDeadline(client, host, clientLimitMs(timeoutMs), async () => {
      await client.connect();
      return fn(client);
    });
  } finally {
    // Not awaited: on a cut link the goodbye would wait for TCP too.
    client.end().catch(() => undefined);
  }
}

/** withClient's whole deadline: `timeoutMs` for the connection, then as long again (at least 2 s) for the queries. */
const clientLimitMs = (timeoutMs: number): number => timeoutMs + Math.max(timeoutMs, 2000);

function newClient(ctx: NodeContext, host: string, connectMs: number, statementMs: number): pg.Client {
  const client = new pg.Client({
    host,
    port: ctx.spec.postgresql.port,
    user: 'postgres',
    password: host.startsWith('/') ? undefined : ctx.secrets.postgresPassword,
    database: 'postgres',
    connectionTimeoutMillis: connectMs,
    statement_timeout: statementMs,
    application_name: 'geminik8s-agent',
    // The peer over TCP: TLS against the cluster CA, with this node's certificate (pg_hba asks for it).
    ...(ctx.tls && !host.startsWith('/') ? { ssl: { ca: ctx.tls.ca, cert: ctx.tls.cert, key: ctx.tls.key } } : {}),
  });
  client.on('error', () => undefined);
  return client;
}

/** pg keeps its socket private; the deadline and the kept session need it. */
const socketOf = (client: pg.Client): { destroy(): void; unref?(): void } | undefined => (client as unknown as { connection?: { stream?: { destroy(): void; unref?(): void } } }).connection?.stream;

/** Our own deadline ran out (never retried: a retry would double a check's wait). */
class DeadlineError extends Error {}

/**
 * Run `work` on `client` within `limitMs` (withClient: clientLimitMs); past that the socket is
 * torn down. statement_timeout is enforced by the server, but a link cut mid-query would leave
 * us waiting for TCP to give up (minutes).
 */
async function withDeadline<T>(client: pg.Client, host: string, limitMs: number, work: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new DeadlineError(`PostgreSQL at ${host} did not answer within ${limitMs} ms`));
      socketOf(client)?.destroy();
    }, limitMs);
  });
  expired.catch(() => undefined);
  try {
    return await Promise.race([work(), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** The connection itself failed (closed, reset, the server shutting down), not the statement. */
function connectionBroke(err: unknown): boolean {
  if (err instanceof DeadlineError) return false;
  const code = (err as { code?: unknown }).code;
  // SQLSTATE classes 08 (connection exception) and 57P (operator intervention: shutdown, terminated).
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code.startsWith('08') || code.startsWith('57P');
  return true;
}

/**
 * One kept connection to a PostgreSQL server, for calls the agent makes every round or inside a
 * switchover's write pause: this node's own server over its socket (the status checks, the
 * catch-up polls, read-only), and the peer's over TCP (is it a primary?). Under TCG a new
 * connection costs a backend's fork and start-up, and to the peer also a TLS handshake and a
 * SCRAM exchange on both sides, each round.
 *
 * A call made while the session is in use goes over a new connection, as `withClient`'s would,
 * so a long statement never holds up a check. A kept connection that broke since its last use
 * (the server restarted, or ended our backend) is replaced, and the call made once more on the
 * new one: a restart never shows as a failed check. An error of the statement is not retried.
 * A call on a kept connection has `timeoutMs` for its queries (with `strictTimeout`) or
 * withClient's whole deadline; a new connection gets withClient's deadline.
 */
export class KeptSession {
  private client: pg.Client | undefined;
  private clientHost = '';
  private inUse = false;

  constructor(
    private readonly ctx: NodeContext,
    /** Per call: a replaced peer (geminik8s replace-node) moves to a new address at run time. */
    private readonly hostOf: () => string,
    /** Peer checks: a silent peer must fail the round at its timeout, not seconds later. */
    private readonly strictTimeout = false,
  ) {}

  async run<T>(fn: (c: pg.Client) => Promise<T>, timeoutMs = this.ctx.spec.failover.checkTimeout): Promise<T> {
    const host = this.hostOf();
    if (this.inUse) return withClient(this.ctx, host, fn, timeoutMs);
    this.inUse = true;
    try {
      if (this.client && this.clientHost !== host) this.close();
      const kept = this.client;
      if (kept) {
        try {
          return await this.attempt(kept, fn, this.strictTimeout ? timeoutMs : clientLimitMs(timeoutMs));
        } catch (err) {
          if (!connectionBroke(err)) throw err;
        }
      }
      const fresh = newClient(this.ctx, host, timeoutMs, SESSION_STATEMENT_MS);
      const forget = (): void => {
        if (this.client === fresh) this.client = undefined;
      };
      fresh.on('end', forget);
      fresh.on('error', forget);
      const limitMs = clientLimitMs(timeoutMs);
      const started = performance.now();
      await withDeadline(fresh, host, limitMs, () => fresh.connect()).catch((err: unknown) => {
        socketOf(fresh)?.destroy();
        throw err;
      });
      // An idle kept connection must not keep the process alive (a test, a CLI that is done).
      socketOf(fresh)?.unref?.();
      this.client = fresh;
      this.clientHost = host;
      return await this.attempt(fresh, fn, Math.max(1, limitMs - (performance.now() - started)));
    } finally {
      this.inUse = false;
    }
  }

  /** End the kept connection, if any. */
  close(): void {
    const c = this.client;
    this.client = undefined;
    c?.end().catch(() => undefined);
  }

  private async attempt<T>(client: pg.Client, fn: (c: pg.Client) => Promise<T>, limitMs: number): Promise<T> {
    try {
      return await withDeadline(client, this.clientHost, limitMs, () => fn(client));
    } catch (err) {
      // Whatever state a failed call left the connection in, the next call starts on a new one.
      if (this.client === client) this.client = undefined;
      socketOf(client)?.destroy();
      throw err;
    }
  }
}

/** The kept session's statement_timeout: read-only's three statements, as withClient gave them. */
const SESSION_STATEMENT_MS = 5000;

/** This node's server, as `withClient` reaches it: its socket directory. */
export const localHost = (ctx: NodeContext): string => ctx.config.postgresql.socketDir;

/** Query the local server's role, position and replication state. */
export async function localStatus(ctx: NodeContext): Promise<LocalPgStatus> {
  try {
    return await withClient(ctx, localHost(ctx), async (c) => {
      const r = await c.query(`SELECT pg_is_in_recovery() AS rec,
          CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END AS lsn,
          (SELECT timeline_id FROM pg_control_checkpoint()) AS tli,
          current_setting('synchronous_standby_names') AS ssn,
          current_setting('default_transaction_read_only') AS ro`);
      const row = r.rows[0] as { rec: boolean; lsn: string; tli: number; ssn: string; ro: string };
      const status: LocalPgStatus = { up: true, inRecovery: row.rec, lsn: row.lsn, timeline: Number(row.tli), synchronousStandbyNames: row.ssn, readOnly: row.ro === 'on' };
      if (row.rec) {
        const w = await c.query(`SELECT status, received_tli FROM pg_stat_wal_receiver`);
        status.receiverStreaming = w.rows[0]?.status === 'streaming';
        if (w.rows[0]?.received_tli) status.timeline = Math.max(status.timeline ?? 0, Number(w.rows[0].received_tli));
      } else {
        const rep = await c.query(`SELECT state, sync_state, replay_lsn::text AS replay, flush_lsn::text AS flush FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1`, [ctx.peer.name]);
        const p = rep.rows[0] as { state: string; sync_state: string; replay: string | null; flush: string | null } | undefined;
        if (p) status.peerReplication = { state: p.state, syncState: p.sync_state, replayLsn: p.replay, flushLsn: p.flush };
      }
      return status;
    });
  } catch (err) {
    return { up: false, error: (err as Error).message };
  }
}

/** First start of the bootstrap leader: roles, Kine's database and the peer's slot. */
export async function bootstrapPrimaryObjects(ctx: NodeContext): Promise<void> {
  await withClient(ctx, localHost(ctx), async (c) => {
    const ident = (s: string): string => `"${s.replaceAll('"', '""')}"`;
    const lit = (s: string): string => `'${s.replaceAll("'", "''")}'`;
    const roles = await c.query(`SELECT rolname FROM pg_roles WHERE rolname = ANY($1)`, [[REPLICATION_USER, KINE_USER]]);
    const have = new Set(roles.rows.map((r: { rolname: string }) => r.rolname));
    if (!have.has(REPLICATION_USER)) await c.query(`CREATE ROLE ${ident(REPLICATION_USER)} WITH REPLICATION LOGIN PASSWORD ${lit(ctx.secrets.replicationPassword)}`);
    if (!have.has(KINE_USER)) await c.query(`CREATE ROLE ${ident(KINE_USER)} WITH LOGIN PASSWORD ${lit(kinePassword(ctx.secrets.postgresPassword))}`);
    const db = await c.query(`SELECT 1 FROM pg_database WHERE datname = $1`, [KINE_DATABASE]);
    if (db.rowCount === 0) await c.query(`CREATE DATABASE ${ident(KINE_DATABASE)} OWNER ${ident(KINE_USER)}`);
  }, 10_000);
  await ensurePeerSlot(ctx);
}

/** The primary keeps a physical slot for its peer so WAL the peer needs is never recycled. */
export async function ensurePeerSlot(ctx: NodeContext): Promise<void> {
  await withClient(ctx, localHost(ctx), async (c) => {
    const slot = slotNameFor(ctx.peer.name);
    const r = await c.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
    if (r.rowCount === 0) await c.query(`SELECT pg_create_physical_replication_slot($1, true)`, [slot]);
  }, 5000);
}

/**
 * A fresh slot for a replaced peer: the old box's slot holds WAL from where that box stopped,
 * which the new box (a fresh clone) never needs. Dropped only while nobody streams through it.
 * Returns whether an old slot was dropped.
 */
export async function resetPeerSlot(ctx: NodeContext): Promise<{ dropped: boolean; restartLsn: string | null }> {
  return withClient(ctx, localHost(ctx), async (c) => {
    const slot = slotNameFor(ctx.peer.name);
    const r = await c.query(`SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
    const old = r.rows[0] as { active: boolean } | undefined;
    if (old?.active) throw new Error(`the slot ${slot} is in use: something streams through it; nothing was changed`);
    if (old) await c.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
    const made = await c.query(`SELECT lsn::text AS lsn FROM pg_create_physical_replication_slot($1, true)`, [slot]);
    return { dropped: Boolean(old), restartLsn: (made.rows[0] as { lsn: string | null }).lsn };
  }, 10_000);
}

/** Re-read pg_hba.conf and the configuration files: no restart, no dropped session. */
export async function reloadConfig(ctx: NodeContext): Promise<void> {
  await withClient(ctx, localHost(ctx), async (c) => {
    // PostgreSQL keeps the old pg_hba.conf when the new one has errors: say so instead.
    const bad = await c.query(`SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL`);
    if (bad.rowCount) throw new Error(`pg_hba.conf: ${bad.rows.map((r: { line_number: number; error: string }) => `line ${r.line_number}: ${r.error}`).join('; ')}`);
    const r = await c.query(`SELECT pg_reload_conf() AS ok`);
    if (!(r.rows[0] as { ok: boolean }).ok) throw new Error('pg_reload_conf() returned false');
  }, 5000);
}

/**
 * ALTER SYSTEM a setting, reload, and return once this backend applies it. pg_reload_conf()
 * only signals the postmaster, which reloads and then signals every backend; a backend applies
 * it before its next command only if the signal has arrived. Seeing the value here means the
 * postmaster has it, so every backend forked afterwards has it too, and a kept session's next
 * status() reads it.
 */
async function alterSystemApplied(c: pg.Client, name: string, value: string, limitMs: number): Promise<void> {
  const lit = `'${value.replaceAll("'", "''")}'`;
  await c.query(`ALTER SYSTEM SET ${name} = ${lit}`);
  await c.query(`SELECT pg_reload_conf()`);
  const until = performance.now() + limitMs;
  for (;;) {
    const r = await c.query(`SELECT current_setting($1) AS v`, [name]);
    if ((r.rows[0] as { v: string }).v === value) return;
    if (performance.now() > until) throw new Error(`${name} is not '${value}' ${limitMs} ms after the reload`);
    await sleep(5);
  }
}

/** Set synchronous_standby_names on the running primary and reload. */
export async function setSyncStandby(ctx: NodeContext, names: string): Promise<void> {
  await withClient(ctx, localHost(ctx), (c) => alterSystemApplied(c, 'synchronous_standby_names', names, 3000), 5000);
}

/** Promote the local standby on the adapter's kept `session`; returns once it is out of recovery. */
export async function promote(session: KeptSession, timeoutMs = 30_000): Promise<void> {
  await session.run(async (c) => {
    // Not pg_promote(true): its wait looks every 100 ms (WAITS_PER_SECOND in PostgreSQL's
    // xlogfuncs.c), and a switchover's write pause waits on this. On the kept connection, which
    // also spares a new backend's start under TCG.
    const signal = async (): Promise<void> => {
      const r = await c.query('SELECT pg_promote(false)');
      if (r.rows[0]?.pg_promote !== true) throw new Error('pg_promote did not signal the promotion');
    };
    await signal();
    let signalled = performance.now();
    const until = signalled + timeoutMs;
    while ((await c.query('SELECT pg_is_in_recovery() AS r')).rows[0]?.r !== false) {
      if (performance.now() >= until) throw new Error(`pg_promote did not complete within ${timeoutMs / 1000} s`);
      // The startup process takes the request while it waits on streaming, and when streaming
      // failed less than wal_retrieve_retry_interval before (the old primary's stop in a
      // switchover), it then sleeps out the rest of that interval before it promotes
      // (WaitForWALToBecomeAvailable in xlogrecovery.c): 985 ms under TCG in one switchover. A new
      // signal sets the latch it sleeps on. The signal files this leaves are removed by the
      // adapter, and by the postmaster at its next start.
      if (performance.now() - signalled >= PROMOTE_RESIGNAL_MS) {
        await signal().catch((err: Error) => {
          // Promoted meanwhile: the next look sees it.
          if (!/recovery is not in progress/.test(err.message)) throw err;
        });
        signalled = performance.now();
      }
      await sleep(10);
    }
  }, timeoutMs + 5000);
}

/** How often `promote` signals the promotion again while the server is still in recovery. */
export const PROMOTE_RESIGNAL_MS = 50;

/** A CHECKPOINT on this node's running server (before a planned switchover's shutdown). */
export async function checkpoint(ctx: NodeContext): Promise<void> {
  await withClient(ctx, localHost(ctx), (c) => c.query('CHECKPOINT'), 30_000);
}

/** Stop accepting writes without stopping the server: used for a planned switchover. On the local server's kept `session`. */
export async function setReadOnly(session: KeptSession, on: boolean): Promise<void> {
  await session.run(async (c) => {
    await alterSystemApplied(c, 'default_transaction_read_only', on ? 'on' : 'off', 3000);
    if (on) await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename <> 'postgres'`);
  }, 5000);
}

export async function run(plan: CommandPlan, timeoutMs = 120_000): Promise<RunResult> {
  return runPlan(plan, { timeoutMs });
}

/** What pg_rewind --progress says it copies: MB to copy and the source directory's size in MB. */
export function rewindCopied(stderr: string): { copiedMB: number; sourceMB: number } | undefined {
  const m = /need to copy (\d+) MB \(total source directory size is (\d+) MB\)/.exec(stderr);
  return m ? { copiedMB: Number(m[1]), sourceMB: Number(m[2]) } : undefined;
}
