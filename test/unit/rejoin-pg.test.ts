import test from 'ava';
import { execa } from 'execa';
import { appendFileSync, chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { nodeContext, type NodeContext } from '#agent/context.ts';
import { rejoinPath, settleRejoin, type LeaderTimeline, type RejoinPath } from '#agent/core/rejoin.ts';
import { leaderCopies, leaderStretchDigestOf, leaderTimelineOf, localStretchDigest, localWal } from '#agent/postgres.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { NodeSeedSchema } from '#common/schema/seed.ts';
import { FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';
import { freePort, until as untilEvery } from '#lab/guest-cluster.ts';
import { hostPgBinDir } from '../helpers/host-pg.ts';

/**
 * The rejoin decision against PostgreSQL's own judgement: two real servers on loopback, A the
 * primary and B its standby; A crashes, B is promoted. What the agent reads of A's stopped
 * directory (localWal: pg_controldata, pg_waldump) and of B (leaderTimelineOf) must make
 * rejoinPath say "follow" exactly when PostgreSQL then lets A follow B as it is. Needs root and
 * the host's PostgreSQL; skipped otherwise.
 */
const BIN = hostPgBinDir() ?? '/usr/lib/postgresql/15/bin';
const runnable = process.getuid?.() === 0 && existsSync(join(BIN, 'initdb'));
const maybe = runnable ? test.serial : test.skip;

const asPg = (cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> => execa('runuser', ['-u', 'postgres', '--', join(BIN, cmd), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });

interface Pair {
  root: string;
  a: string;
  b: string;
  pa: number;
  pb: number;
  ctxA: NodeContext;
}

async function pair(): Promise<Pair> {
  const root = tempDir('gk-rejoin-');
  chmodSync(root, 0o777);
  const [pa, pb] = [await freePort(), await freePort()];
  const a = join(root, 'a');
  const b = join(root, 'b');
  await asPg('initdb', ['-D', a, '--data-checksums', '-U', 'postgres', '-A', 'trust']);
  appendFileSync(join(a, 'postgresql.conf'), `listen_addresses = '127.0.0.1'\nunix_socket_directories = '${root}'\nwal_level = replica\n`);
  appendFileSync(join(a, 'pg_hba.conf'), 'host replication postgres 127.0.0.1/32 trust\n');
  await asPg('pg_ctl', ['-D', a, '-l', join(root, 'a.log'), '-o', `-p ${pa}`, '-w', 'start']);
  await asPg('pg_basebackup', ['-h', '127.0.0.1', '-p', String(pa), '-U', 'postgres', '-D', b, '-R', '-X', 'stream']);
  await asPg('pg_ctl', ['-D', b, '-l', join(root, 'b.log'), '-o', `-p ${pb}`, '-w', 'start']);
  // localWal reads the binaries, A's data directory and its owner off the agent's context.
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = await loadFixtureCluster();
  const seed = NodeSeedSchema.parse({ apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1', cluster: spec, secrets: FAKE_SECRETS });
  const config = AgentConfigSchema.parse({ stateDir: join(root, 'state'), seedFile: join(root, 'seed.yaml'), listen: { host: '127.0.0.1', port: 0 }, postgresql: { binDir: BIN, dataDir: a, socketDir: root }, serviceManager: 'direct', vip: { enabled: false } });
  return { root, a, b, pa, pb, ctxA: nodeContext(config, seed) };
}

async function withPg<T>(port: number, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

const sql = <T = Record<string, unknown>>(port: number, text: string): Promise<T[]> => withPg(port, async (c) => (await c.query(text)).rows as T[]);

/** Poll every 200 ms for up to 2 minutes: these waits take well under a second on an idle machine. */
const until = <T>(what: string, probe: () => Promise<T | undefined>): Promise<T> => untilEvery(what, 120_000, probe, 200);

/** Power loss of a server: the postmaster and its children SIGKILLed, as the agent's sigkill does (orphans would pin the shared memory). */
async function crash(dir: string): Promise<void> {
  const pid = Number(readFileSync(join(dir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children = (await execa('pgrep', ['-P', String(pid)], { reject: false })).stdout.split('\n').filter(Boolean).map(Number);
  for (const p of [pid, ...children]) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // Until reaped it is a zombie, which PostgreSQL's lock file check takes for a live postmaster.
  await until(`postmaster ${pid} reaped`, async () => (existsSync(`/proc/${pid}`) ? undefined : true));
}

async function loadAndReplicate(p: Pair): Promise<void> {
  await sql(p.pa, 'CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)');
  const [row] = await sql<{ lsn: string }>(p.pa, 'SELECT pg_current_wal_lsn()::text AS lsn');
  await until('B replaying all of A', async () => ((await sql<{ ok: boolean }>(p.pb, `SELECT pg_last_wal_replay_lsn() >= '${row!.lsn}'::pg_lsn AS ok`))[0]!.ok ? true : undefined));
}

/** The agent's decision for A's stopped directory against B as the leader, its WAL stretch compared as sameWal does (A's file against B's copy). */
async function decide(p: Pair, leader: LeaderTimeline): Promise<RejoinPath> {
  const local = await localWal(p.ctxA);
  const plan = rejoinPath(local, leader);
  if (!plan.check) return settleRejoin(plan);
  const ours = await localStretchDigest(p.ctxA, plan.check, local.segmentBytes);
  const theirs = await withPg(p.pb, (c) => leaderStretchDigestOf(c, plan.check!, leaderCopies(plan.check!, leader, local.segmentBytes), local.segmentBytes));
  return settleRejoin(plan, ours === undefined || theirs === undefined ? undefined : ours === theirs);
}

/** A started as B's standby as it is. */
async function startAsStandby(p: Pair): Promise<void> {
  writeFileSync(join(p.a, 'standby.signal'), '');
  appendFileSync(join(p.a, 'postgresql.auto.conf'), `primary_conninfo = 'host=127.0.0.1 port=${p.pb} user=postgres application_name=a'\nrecovery_target_timeline = 'latest'\n`);
  await asPg('pg_ctl', ['-D', p.a, '-l', join(p.root, 'a.log'), '-o', `-p ${p.pa}`, '-w', 'start']).catch((err: Error) => {
    throw new Error(`${err.message.split('\n')[0]}\n${readFileSync(join(p.root, 'a.log'), 'utf8').split('\n').slice(-12).join('\n')}`);
  });
}

/** B promoted; the decision as the agent makes it; then A started as B's standby as it is. */
async function promoteAndDecide(p: Pair): Promise<RejoinPath> {
  await asPg('pg_ctl', ['-D', p.b, '-w', 'promote']);
  const leader = await until('B as a primary', () => withPg(p.pb, leaderTimelineOf));
  const path = await decide(p, leader);
  await startAsStandby(p);
  return path;
}

async function teardown(p: Pair): Promise<void> {
  for (const d of [p.a, p.b]) await asPg('pg_ctl', ['-D', d, '-m', 'immediate', 'stop']).catch(() => undefined);
  rmSync(p.root, { recursive: true, force: true });
}

maybe('a crashed primary whose WAL the standby had in full: rejoinPath says follow, and PostgreSQL follows the promoted standby as it is', async (t) => {
  const p = await pair();
  try {
    await loadAndReplicate(p);
    await crash(p.a);
    const path = await promoteAndDecide(p);
    t.is(path.action, 'follow', path.reason);
    t.regex(path.reason, /our WAL ends before .*, where the leader left timeline 1 .*; our WAL 0\/3000000\.\.\S+ on timeline 1 is the leader's byte for byte/);
    const rx = await until('A streaming from B on timeline 2', async () => {
      const [r] = await sql<{ status: string; tli: number }>(p.pa, 'SELECT status, received_tli AS tli FROM pg_stat_wal_receiver');
      return r?.status === 'streaming' && r.tli === 2 ? r : undefined;
    });
    t.like(rx, { status: 'streaming', tli: 2 });
    await sql(p.pb, 'INSERT INTO t VALUES (1001)');
    t.is(await until('the new row on A', async () => ((await sql<{ n: number }>(p.pa, 'SELECT count(*)::int AS n FROM t'))[0]!.n === 1001 ? 1001 : undefined)), 1001);
    // A standby of B on B's own timeline (a restartpoint on timeline 2 names it in pg_control):
    // sharing the number, its WAL is B's, so it follows again.
    await sql(p.pb, 'CHECKPOINT');
    const [cp] = await sql<{ lsn: string }>(p.pb, 'SELECT pg_current_wal_lsn()::text AS lsn');
    await until('A replaying B\'s checkpoint', async () => ((await sql<{ ok: boolean }>(p.pa, `SELECT pg_last_wal_replay_lsn() >= '${cp!.lsn}'::pg_lsn AS ok`))[0]!.ok ? true : undefined));
    await sql(p.pa, 'CHECKPOINT');
    await asPg('pg_ctl', ['-D', p.a, '-m', 'fast', '-w', 'stop']);
    const again = await decide(p, await withPg(p.pb, leaderTimelineOf));
    t.is(again.action, 'follow', again.reason);
    t.regex(again.reason, /the leader is on our timeline 2 .* is the leader's byte for byte/);
  } finally {
    await teardown(p);
  }
});

maybe('a crashed primary with WAL the standby never got: rejoinPath says rewind, and PostgreSQL refuses to follow as it is', async (t) => {
  const p = await pair();
  try {
    await loadAndReplicate(p);
    // B stops; A takes writes B never sees (asynchronous here), then crashes.
    await asPg('pg_ctl', ['-D', p.b, '-m', 'fast', '-w', 'stop']);
    await sql(p.pa, 'INSERT INTO t SELECT generate_series(1, 10)');
    await crash(p.a);
    await asPg('pg_ctl', ['-D', p.b, '-l', join(p.root, 'b.log'), '-o', `-p ${p.pb}`, '-w', 'start']);
    const path = await promoteAndDecide(p);
    t.is(path.action, 'rewind', path.reason);
    // What pg_rewind keeps as shared, up to the switchpoint, is B's byte for byte.
    t.regex(path.reason, /our WAL goes on past .*, where the leader left timeline 1 .*; our WAL \S+ on timeline 1 is the leader's byte for byte/);
    const refusal = await until("A's refusal in its log", async () => /new timeline 2 forked off current database system timeline 1 before current recovery point/.exec(readFileSync(join(p.root, 'a.log'), 'utf8'))?.[0]);
    t.truthy(refusal);
    const [r] = await sql<{ status: string | null }>(p.pa, 'SELECT status FROM pg_stat_wal_receiver');
    t.not(r?.status, 'streaming');
  } finally {
    await teardown(p);
  }
});

maybe('two promotions onto one timeline number: the histories read alike, pg_rewind sees nothing to do, and the byte check re-clones', async (t) => {
  const p = await pair();
  try {
    await loadAndReplicate(p);
    // A stops cleanly: B receives everything, its shutdown checkpoint included, and is promoted
    // onto timeline 2. A, started in standby mode on its own WAL and promoted (a stale node
    // forced to lead), ends its timeline 1 at the same record and picks timeline 2 as well.
    await asPg('pg_ctl', ['-D', p.a, '-m', 'fast', '-w', 'stop']);
    await asPg('pg_ctl', ['-D', p.b, '-w', 'promote']);
    writeFileSync(join(p.a, 'standby.signal'), '');
    await asPg('pg_ctl', ['-D', p.a, '-l', join(p.root, 'a.log'), '-o', `-p ${p.pa}`, '-w', 'start']);
    await asPg('pg_ctl', ['-D', p.a, '-w', 'promote']);
    await until('A as a primary', async () => ((await sql<{ r: boolean }>(p.pa, 'SELECT pg_is_in_recovery() AS r'))[0]!.r ? undefined : true));
    await sql(p.pa, 'INSERT INTO t SELECT generate_series(5001, 5100)');
    await sql(p.pb, 'INSERT INTO t SELECT generate_series(7001, 7010)');
    t.is(readFileSync(join(p.a, 'pg_wal', '00000002.history'), 'utf8'), readFileSync(join(p.b, 'pg_wal', '00000002.history'), 'utf8'), 'one history file for two timelines');
    await asPg('pg_ctl', ['-D', p.a, '-m', 'fast', '-w', 'stop']);
    const leader = await withPg(p.pb, leaderTimelineOf);
    t.is(leader.timeline, 2);
    // PostgreSQL's own tool trusts the histories (after a checkpoint on B, as the agent runs one: until then B's pg_control names timeline 1).
    await sql(p.pb, 'CHECKPOINT');
    const dry = await asPg('pg_rewind', ['-D', p.a, `--source-server=host=127.0.0.1 port=${p.pb} user=postgres`, '-n']);
    t.regex(`${dry.stdout}${dry.stderr}`, /same timeline/);
    t.regex(`${dry.stdout}${dry.stderr}`, /no rewind required/);
    const path = await decide(p, leader);
    t.is(path.action, 'clone', path.reason);
    t.regex(path.reason, /on timeline 2 differs from the leader's: the two histories share a timeline number, not their WAL/);
  } finally {
    await teardown(p);
  }
});
