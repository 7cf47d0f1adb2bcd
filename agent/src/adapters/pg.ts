import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, readdir, readFile, rename, rm, statfs, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CommandFailedError, lastLines, runPlan } from '#common/exec.ts';
import { syncDirectory, writeFileAtomic } from '#common/fsutil.ts';
import type { NodeContext } from '../context.ts';
import type { LogPort, PgDiskFacts, PgPort, PgStatus, RejoinMethod } from '../core/ports.ts';
import { lsnToBigInt } from '../core/lsn.ts';
import { rejoinPath, settleRejoin, type RejoinPath } from '../core/rejoin.ts';
import * as pgc from '../postgres.ts';
import { RESTORE_CONF } from '../restorestate.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Present while initdb or a clone is unfinished: the data directory is not to be trusted. */
export function inProgressMarker(ctx: NodeContext): string {
  return join(ctx.config.stateDir, 'bootstrap-in-progress');
}

// ---------------------------------------------------------------------------------------------
// Pure parts (unit-tested without a server).

/** The row of the status query. */
export interface StatusRow {
  rec: boolean;
  lsn: string | null;
  /** Primary only: the WAL segment being written, whose first 8 hex digits are the timeline. */
  walfile: string | null;
  /** Timeline of the last checkpoint (restartpoint on a standby). */
  tli: number | string | null;
  ssn: string;
  ro: string;
  waiters: number | string;
}
export interface ReceiverRow {
  status: string | null;
  received_tli: number | string | null;
}
export interface ReplicationRow {
  state: string;
  sync_state: string;
  flush: string | null;
  replay: string | null;
}

/** `00000002000000000000000A` → 2. */
export function timelineOfWalFile(name: string): number | undefined {
  return /^[0-9A-Fa-f]{24}$/.test(name) ? parseInt(name.slice(0, 8), 16) : undefined;
}

const lsnOrNull = (s: string | null | undefined): bigint | null => (s ? lsnToBigInt(s) : null);

/** Turn the rows of one status round into the port's PgStatus. */
export function statusFromRows(row: StatusRow, receiver: ReceiverRow | undefined, replication: ReplicationRow | undefined): PgStatus {
  const checkpointTli = row.tli === null ? undefined : Number(row.tli);
  const status: PgStatus = {
    up: true,
    inRecovery: row.rec,
    synchronousStandbyNames: row.ssn,
    readOnly: row.ro === 'on',
    syncWaiters: Number(row.waiters),
  };
  if (row.lsn) status.lsn = lsnToBigInt(row.lsn);
  if (row.rec) {
    // A standby: the newest of the last restartpoint's timeline and the one being received.
    status.receiverStreaming = receiver?.status === 'streaming';
    const received = receiver?.received_tli ? Number(receiver.received_tli) : undefined;
    const tli = Math.max(checkpointTli ?? 0, received ?? 0);
    if (tli > 0) status.timeline = tli;
  } else {
    // A primary writes on its current timeline, which the last checkpoint may not show yet
    // (a promotion without an end-of-recovery checkpoint).
    status.timeline = (row.walfile ? timelineOfWalFile(row.walfile) : undefined) ?? checkpointTli;
    if (replication) {
      status.standby = { state: replication.state, syncState: replication.sync_state, flushLsn: lsnOrNull(replication.flush), replayLsn: lsnOrNull(replication.replay) };
    }
  }
  return status;
}

/**
 * Why standby.signal must not be written now, or undefined when it may. A live primary must
 * never be turned into a standby underneath its clients; neither may a server we cannot query
 * that runs without standby.signal (that is a primary too, as far as we can tell).
 */
export function standbyRefusal(f: { status: PgStatus; postmasterRunning: boolean; standbySignal: boolean }): string | undefined {
  if (f.status.up && f.status.inRecovery === false) return 'refusing to configure a standby: PostgreSQL is running here as a primary (stop or fence it first)';
  if (!f.status.up && f.postmasterRunning && !f.standbySignal) {
    return `refusing to configure a standby: a postmaster runs without standby.signal and does not answer (${f.status.error ?? 'no error'}); stop or fence it first`;
  }
  return undefined;
}

/** Name of the copy kept aside when a rejoin has to re-clone: `<dataDir>.pre-rejoin-<ISO time without colons>`. */
export function preRejoinName(dataDir: string, at: Date): string {
  return `${dataDir.replace(/\/+$/, '')}.pre-rejoin-${at.toISOString().replaceAll(':', '')}`;
}

/** Earlier copies kept aside, among the entries of the data directory's parent. */
export function olderAsides(dataDir: string, entries: string[]): string[] {
  const prefix = `${basename(dataDir.replace(/\/+$/, ''))}.pre-rejoin-`;
  return entries.filter((e) => e.startsWith(prefix)).map((e) => join(dirname(dataDir.replace(/\/+$/, '')), e));
}

/** Keep the old directory only if a fresh clone of the same size still fits, with 10 % to spare. */
export function canKeepAside(dataBytes: number, freeBytes: number): boolean {
  return freeBytes > dataBytes * 1.1;
}

// ---------------------------------------------------------------------------------------------
// Processes: the postmaster of our data directory, found through postmaster.pid.

// Synchronous reads: a few bytes from /proc and the data directory, and a switchover's stop
// signals in the same turn of the event loop in which it decided to stop. With awaited reads, a
// program start elsewhere in the agent (the VIP's next waiting `ip`, which forks this process)
// could come in between: under TCG 195-533 ms passed between "caught up" and the postmaster's
// "received fast shutdown request".

function procComm(pid: number): string | undefined | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return null;
    // No /proc at all: unknown. No /proc/<pid>: the process is gone.
    return existsSync('/proc/self') ? undefined : null;
  }
}

/** The process has exited and waits to be reaped (state Z or X in /proc/<pid>/stat). */
function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return false;
  }
}

/**
 * A postmaster killed outright stays a zombie when its parent (here, whatever adopted it) does not
 * reap it, and PostgreSQL then refuses to start: its lock file names a "live" pid. PostgreSQL's
 * own shared-memory check still refuses if any of its old backends lingers.
 */
export async function removeZombieLock(dataDir: string, log: LogPort): Promise<void> {
  const file = join(dataDir, 'postmaster.pid');
  let pid: number;
  try {
    pid = Number((await readFile(file, 'utf8')).split('\n')[0]);
  } catch {
    return;
  }
  if (Number.isInteger(pid) && pid > 1 && isZombie(pid)) {
    log.warn({ event: 'pg-start', pid }, `postmaster ${pid} is a zombie: removing its stale postmaster.pid`);
    await rm(file, { force: true });
  }
}

/** The pid in postmaster.pid if that process is alive and a PostgreSQL process; undefined otherwise (synchronous: see above). */
export function livePostmasterPid(dataDir: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  const comm = procComm(pid);
  if (comm === undefined) return undefined;
  // A killed postmaster whose parent never reaps it stays a zombie: it runs nothing.
  if (isZombie(pid)) return undefined;
  if (comm !== null) return /^(postgres|postmaster)/.test(comm) ? pid : undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

/** Send a signal; a process already gone (ESRCH) is what the caller waits for anyway. */
function signalGone(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** Direct children of a process (Linux /proc); [] where /proc is not available. */
async function childrenOf(pid: number): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = await readFile(`/proc/${e}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else total += await lstat(p).then((s) => s.size, () => 0);
    }
  };
  await walk(dir);
  return total;
}

// ---------------------------------------------------------------------------------------------

/** The production PgPort over postgres.ts: pg_ctl or systemd, pg_rewind, pg_basebackup, SQL on the local socket. */
export function createPgPort(ctx: NodeContext, log: LogPort): PgPort {
  const dataDir = ctx.config.postgresql.dataDir;
  const marker = inProgressMarker(ctx);
  // The control loop's checks and a switchover's read-only and catch-up polls share one kept connection.
  const session = new pgc.KeptSession(ctx, () => pgc.localHost(ctx));

  const status = async (): Promise<PgStatus> => {
    try {
      return await session.run(async (c) => {
        const r = await c.query(`SELECT pg_is_in_recovery() AS rec,
            CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END AS lsn,
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile,
            (SELECT timeline_id FROM pg_control_checkpoint()) AS tli,
            current_setting('synchronous_standby_names') AS ssn,
            current_setting('default_transaction_read_only') AS ro,
            (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')::int AS waiters`);
        const row = r.rows[0] as StatusRow;
        let receiver: ReceiverRow | undefined;
        let replication: ReplicationRow | undefined;
        if (row.rec) {
          receiver = (await c.query(`SELECT status, received_tli FROM pg_stat_wal_receiver`)).rows[0] as ReceiverRow | undefined;
        } else {
          const rep = await c.query(
            `SELECT state, sync_state, flush_lsn::text AS flush, replay_lsn::text AS replay FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1`,
            [ctx.peer.name],
          );
          replication = rep.rows[0] as ReplicationRow | undefined;
        }
        return statusFromRows(row, receiver, replication);
      });
    } catch (err) {
      return { up: false, error: (err as Error).message };
    }
  };

  const postmasterRunning = (): boolean => livePostmasterPid(dataDir) !== undefined;

  /** Stopped = no live postmaster for our data directory and nothing answers on our port. */
  const waitStopped = async (ms: number): Promise<boolean> => {
    const until = performance.now() + ms;
    for (;;) {
      if (!postmasterRunning() && !(await status()).up) return true;
      if (performance.now() >= until) return false;
      // A switchover's write pause waits here: a look is a read of postmaster.pid and /proc.
      await sleep(25);
    }
  };

  /**
   * What PostgreSQL's tools need around the data directory, as Agent.init prepared it: the state
   * directory readable by the postgres group (pgpass, initdb's password file), the socket and
   * log directories, and the pgpass file pg_basebackup, pg_rewind and the WAL receiver use.
   */
  const prepare = async (): Promise<void> => {
    const { uid, gid } = await pgc.osUserIds(ctx.config.postgresql.osUser);
    await mkdir(ctx.config.stateDir, { recursive: true, mode: 0o750 });
    await chown(ctx.config.stateDir, process.getuid?.() ?? 0, gid);
    await chmod(ctx.config.stateDir, 0o750);
    await mkdir(ctx.config.postgresql.socketDir, { recursive: true, mode: 0o2775 });
    await chown(ctx.config.postgresql.socketDir, uid, gid);
    await mkdir(pgc.pgLogDir(ctx), { recursive: true, mode: 0o750 });
    await chown(pgc.pgLogDir(ctx), uid, gid);
    await pgc.writePgpass(ctx);
    await pgc.writePgTlsFiles(ctx);
  };

  const setMarker = async (what: string): Promise<void> => {
    await mkdir(ctx.config.stateDir, { recursive: true, mode: 0o750 });
    await writeFileAtomic(marker, `${what}\n`, 0o644, { syncDir: true });
  };
  const clearMarker = async (): Promise<void> => {
    await rm(marker, { force: true });
    await syncDirectory(ctx.config.stateDir);
  };

  /** An empty data directory owned by the PostgreSQL user. */
  const freshDataDir = async (): Promise<{ uid: number; gid: number }> => {
    const ids = await pgc.osUserIds(ctx.config.postgresql.osUser);
    await rm(dataDir, { recursive: true, force: true });
    // Parents this makes (/var/lib/postgresql/17 on a node) belong to the PostgreSQL user and
    // are 0755, as Debian makes them: under the agent's umask they would be root's and 0700,
    // and initdb, running as that user, could not reach its directory.
    const first = await mkdir(dirname(dataDir), { recursive: true });
    if (first) {
      for (let d = dirname(dataDir); ; d = dirname(d)) {
        await chown(d, ids.uid, ids.gid);
        await chmod(d, 0o755);
        if (d === first || d === dirname(d)) break;
      }
    }
    await mkdir(dataDir, { mode: 0o700 });
    await chown(dataDir, ids.uid, ids.gid);
    return ids;
  };

  const sigkill = async (): Promise<void> => {
    if (ctx.config.serviceManager === 'systemd') {
      await runPlan({ cmd: 'systemctl', args: ['kill', '--signal=SIGKILL', 'geminik8s-postgresql.service'] }, { allowFailure: true, timeoutMs: 5000 }).catch(() => undefined);
    }
    const pid = livePostmasterPid(dataDir);
    if (pid === undefined) return;
    // Children first collected, then the postmaster killed so it restarts nothing, then them:
    // orphaned backends would keep serving their sessions and pin the shared memory.
    const children = await childrenOf(pid);
    const kill = (p: number): void => {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    kill(pid);
    for (const c of children) kill(c);
  };

  /** The leader's timeline at this node's last rejoin by following (rejoinPath's `followedBefore`). */
  const followedFile = join(ctx.config.stateDir, 'rejoin-followed');

  /** Whether the stopped directory can follow the peer as it is, needs pg_rewind, or must be re-cloned; a failed look says rewind. */
  const followOrRewind = async (): Promise<RejoinPath & { timeline?: number }> => {
    try {
      const [local, leader] = [await pgc.localWal(ctx), await pgc.leaderTimeline(ctx)];
      const before = Number((await readFile(followedFile, 'utf8').catch(() => '')).trim()) || undefined;
      const plan = rejoinPath(local, leader, before);
      const same = plan.check ? await pgc.sameWal(ctx, plan.check, leader, local.segmentBytes) : undefined;
      return { ...settleRejoin(plan, same), timeline: leader.timeline };
    } catch (err) {
      return { action: 'rewind', reason: `could not compare the WAL with the leader's history (${(err as Error).message.split('\n')[0]})` };
    }
  };

  /** true when the peer's PostgreSQL answers as a primary, else what it is. */
  const peerPrimary = async (): Promise<true | string> => {
    try {
      const rec = await pgc.withClient(ctx, ctx.peer.ip, async (c) => (await c.query(`SELECT pg_is_in_recovery() AS rec`)).rows[0].rec as boolean, 5000);
      return rec ? 'is a standby, not a primary' : true;
    } catch (err) {
      return `does not answer (${(err as Error).message})`;
    }
  };

  const configureStandby = async (): Promise<void> => {
    const refusal = standbyRefusal({ status: await status(), postmasterRunning: postmasterRunning(), standbySignal: existsSync(join(dataDir, 'standby.signal')) });
    if (refusal) throw new Error(refusal);
    await pgc.configureStandby(ctx);
  };

  const port: PgPort = {
    status,

    async disk(): Promise<PgDiskFacts> {
      // An interrupted promotion starts as a standby: start() puts standby.signal back.
      return { hasData: pgc.hasData(ctx) && !existsSync(marker), standbySignal: existsSync(join(dataDir, 'standby.signal')) || pgc.interruptedPromotion(dataDir) };
    },

    async start(): Promise<void> {
      if ((await status()).up) return;
      if (!postmasterRunning()) {
        await removeZombieLock(dataDir, log);
        await prepare();
        // What the seed says wins at every start, not only at initdb, clone or rewind: an
        // upgraded image (a new pg_hba row) or a seed turned to TLS takes effect here.
        const disk = await port.disk();
        if (disk.hasData) {
          await pgc.writeNodeConfig(ctx);
          // disk() counts a promotion that died midway as a standby: never the primary it would
          // come up as (on the old timeline, with nothing of what follows a promotion done), but
          // a standby again, which the controller promotes anew onto a new timeline.
          if (disk.standbySignal && !existsSync(join(dataDir, 'standby.signal'))) {
            log.warn({ event: 'start', state: 'interrupted promotion' }, 'PostgreSQL stopped inside a promotion (in recovery, its standby.signal already removed): standby.signal put back, so that it starts as a standby and is promoted again');
          }
          if (disk.standbySignal) await pgc.configureStandby(ctx);
          // A restore's recovery settings outlive its recovery only by accident (a crash right
          // after the promotion); on a later standby, recovery_target would stop replication.
          if (!existsSync(join(dataDir, 'recovery.signal'))) await rm(join(dataDir, 'conf.d', RESTORE_CONF), { force: true });
        }
        await pgc.run(pgc.pgCtlStartPlan(ctx), 120_000);
      }
      // pg_ctl -w waits, systemd's Type=notify too; confirm on our own connection either way.
      const until = performance.now() + 60_000;
      let last = await status();
      while (!last.up) {
        if (performance.now() >= until) throw new Error(`PostgreSQL was started but does not accept connections after 60 s: ${last.error ?? 'unknown error'}`);
        // A fence (or a crash) meanwhile: nothing left to wait for.
        if (!postmasterRunning()) throw new Error(`PostgreSQL stopped while we waited for it to accept connections: ${last.error ?? 'unknown error'}`);
        await sleep(250);
        last = await status();
      }
    },

    async stop(): Promise<void> {
      // One look at the postmaster, used for both the check and the signal.
      // Looked at synchronously and, under systemd with a readable pid, signalled before this
      // call's first await (see procComm); otherwise pg_ctl stops it.
      const live = livePostmasterPid(dataDir);
      if (live === undefined && !(await status()).up) return;
      try {
        // Under systemd, SIGINT straight to the postmaster (the MainPID of its Type=notify unit),
        // as `systemctl kill --kill-whom=main` sends it, without starting a program: under TCG
        // that start was 0.3-0.5 s of a switchover's write pause. The plan when no pid is readable.
        const pid = ctx.config.serviceManager === 'systemd' ? live : undefined;
        if (pid !== undefined) signalGone(pid, 'SIGINT');
        else await pgc.run(pgc.pgCtlStopPlan(ctx, 'fast'), 40_000);
        // pg_ctl -w has waited already; under systemd the signal was only sent.
        if (await waitStopped(40_000)) return;
        log.warn({ event: 'pg-stop' }, 'fast shutdown returned but PostgreSQL still runs; stopping immediately');
      } catch (err) {
        log.warn({ event: 'pg-stop', err: (err as Error).message.split('\n')[0] }, 'fast shutdown failed; stopping immediately');
      }
      await port.fence();
    },

    async fence(): Promise<void> {
      await runPlan(pgc.pgCtlStopPlan(ctx, 'immediate'), { allowFailure: true, timeoutMs: 10_000 }).catch((err: Error) =>
        log.warn({ event: 'fence', err: err.message.split('\n')[0] }, 'immediate shutdown command failed'),
      );
      if (await waitStopped(10_000)) return;
      log.warn({ event: 'fence', pid: livePostmasterPid(dataDir) }, 'PostgreSQL still runs 10 s after an immediate shutdown: SIGKILL');
      await sigkill();
      if (await waitStopped(5000)) return;
      const st = await status();
      throw new Error(`cannot fence PostgreSQL: postmaster ${livePostmasterPid(dataDir) ?? 'gone'}, ${st.up ? 'still accepting connections' : 'not answering'} after SIGKILL`);
    },

    async promote(): Promise<void> {
      await pgc.promote(session);
      // A signal file of a repeated request (pgc.promote) the startup process never took: harmless
      // on a primary, but pg_basebackup and pg_rewind would copy it.
      await rm(join(dataDir, 'promote'), { force: true });
    },

    async setSyncStandby(names: string): Promise<void> {
      await pgc.setSyncStandby(ctx, names);
      // The reload is asynchronous: confirm on a new connection that the setting is in force.
      const until = performance.now() + 2000;
      let seen = '';
      for (;;) {
        try {
          seen = await pgc.withClient(ctx, pgc.localHost(ctx), async (c) => (await c.query(`SELECT current_setting('synchronous_standby_names') AS v`)).rows[0].v as string, 2000);
          if (seen === names) return;
        } catch (err) {
          seen = `(${(err as Error).message})`;
        }
        if (performance.now() >= until) throw new Error(`synchronous_standby_names is ${JSON.stringify(seen)} 2 s after setting it to ${JSON.stringify(names)}`);
        await sleep(50);
      }
    },

    setReadOnly: (on: boolean) => pgc.setReadOnly(session, on),

    checkpoint: () => pgc.checkpoint(ctx),

    async initPrimary(syncStandbyNames: string): Promise<void> {
      if ((await port.disk()).hasData) throw new Error(`refusing to initdb: ${dataDir} holds a complete data directory`);
      if (postmasterRunning()) throw new Error(`refusing to initdb: a postmaster runs on ${dataDir}`);
      log.info({ event: 'bootstrap' }, 'bootstrap leader: initdb with data checksums');
      await prepare();
      await setMarker('initdb');
      const { uid, gid } = await freshDataDir();
      const pwfile = join(ctx.config.stateDir, 'initdb-pw');
      await writeFile(pwfile, `${ctx.secrets.postgresPassword}\n`, { mode: 0o600 });
      await chown(pwfile, uid, gid);
      try {
        await pgc.run(pgc.initdbPlan(ctx, pwfile));
      } finally {
        await rm(pwfile, { force: true });
      }
      await pgc.writeNodeConfig(ctx);
      await pgc.setAutoConf(ctx, { synchronous_standby_names: syncStandbyNames });
      await port.start();
      await pgc.bootstrapPrimaryObjects(ctx);
      await clearMarker();
    },

    configureStandby,

    async rejoin(): Promise<RejoinMethod> {
      // Crash recovery here rather than inside pg_rewind, so that its checkpoint keeps the WAL
      // pg_rewind reads (see crashRecoveryPlan). A standby's directory (standby.signal, or
      // "in archive recovery") cannot run single-user: pg_rewind handles it as before.
      const recoverKeepingWal = async (): Promise<void> => {
        if (existsSync(join(dataDir, 'standby.signal')) || existsSync(join(dataDir, 'recovery.signal'))) return;
        const state = pgc.clusterState((await pgc.run(pgc.controlDataPlan(ctx))).stdout);
        if (!pgc.needsCrashRecovery(state)) return;
        const t0 = Date.now();
        await pgc.run(pgc.crashRecoveryPlan(ctx), 10 * 60_000);
        log.info({ event: 'crash-recovery', state, ms: Date.now() - t0 }, `crash recovery of the data directory (${state}) before pg_rewind, every WAL segment kept`);
      };
      // A rewind or a clone needs the peer as a primary. Without it, a failed pg_rewind would
      // throw the local data away for a clone that cannot happen: give up and let the caller retry.
      const source = await peerPrimary();
      if (source !== true) throw new Error(`refusing to rejoin: the peer's PostgreSQL (${ctx.peer.ip}:${ctx.spec.postgresql.port}) ${source}; nothing was changed`);
      if (postmasterRunning() || (await status()).up) await port.stop();
      if (!(await waitStopped(1000))) throw new Error('refusing to rejoin: PostgreSQL still runs after stop');
      await prepare();
      if (!existsSync(marker)) {
        const path = await followOrRewind();
        if (path.action === 'clone') {
          const aside = await setAside();
          log.warn(
            { event: 'rejoin', method: 'pg_basebackup', why: path.reason, dataDir, ...aside },
            `neither following nor pg_rewind can bring this directory onto ${ctx.peer.name}'s WAL: ${path.reason}; ${aside.kept ? `kept it as ${aside.kept}` : `deleted it (${aside.reason})`}; re-cloning with pg_basebackup`,
          );
          await port.clone();
          return 'pg_basebackup';
        }
        if (path.action === 'follow') {
          await pgc.writeNodeConfig(ctx);
          await configureStandby();
          await writeFileAtomic(followedFile, `${path.timeline}\n`, 0o644, { syncDir: true });
          log.info({ event: 'rejoin', method: 'follow', reason: path.reason }, `following ${ctx.peer.name} as it is (no rewind needed): ${path.reason}`);
          return 'follow';
        }
        log.info({ event: 'rejoin', method: 'pg_rewind', reason: path.reason }, `pg_rewind: ${path.reason}`);
      }
      let copied: ReturnType<typeof pgc.rewindCopied>;
      try {
        if (existsSync(marker)) throw new Error('the data directory is an unfinished clone or initdb: nothing to rewind');
        // A freshly promoted source shows its old timeline in pg_control until a checkpoint (PostgreSQL docs, pg_rewind).
        await pgc.withClient(ctx, ctx.peer.ip, (c) => c.query('CHECKPOINT'), 60_000);
        await recoverKeepingWal();
        copied = pgc.rewindCopied((await pgc.run(pgc.rewindPlan(ctx), 10 * 60_000)).stderr);
      } catch (err) {
        const why = err instanceof CommandFailedError ? lastLines(err.stderrTail, 5) || err.message.split('\n')[0]! : (err as Error).message.split('\n')[0]!;
        const aside = await setAside();
        log.warn(
          { event: 'rejoin', method: 'pg_basebackup', rewindError: why, dataDir, ...aside },
          `pg_rewind failed (${why.split('\n').pop()}); ${aside.kept ? `kept the old data directory as ${aside.kept}` : `deleted the old data directory (${aside.reason})`}; re-cloning with pg_basebackup`,
        );
        await port.clone();
        return 'pg_basebackup';
      }
      await pgc.writeNodeConfig(ctx);
      await configureStandby();
      log.info({ event: 'rejoin', method: 'pg_rewind', ...copied }, `rewound onto the peer timeline${copied ? `, copying ${copied.copiedMB} MB of ${copied.sourceMB} MB` : ''}`);
      return 'pg_rewind';
    },

    async clone(): Promise<void> {
      if (postmasterRunning()) throw new Error(`refusing to clone over ${dataDir}: a postmaster runs on it (stop it first)`);
      const source = await peerPrimary();
      if (source !== true) throw new Error(`refusing to clone: the peer's PostgreSQL (${ctx.peer.ip}:${ctx.spec.postgresql.port}) ${source}; nothing was changed`);
      await prepare();
      await setMarker('basebackup');
      await freshDataDir();
      log.info({ event: 'basebackup' }, `pg_basebackup from ${ctx.peer.ip}`);
      await pgc.run(pgc.basebackupPlan(ctx), 30 * 60_000);
      await pgc.writeNodeConfig(ctx);
      await configureStandby();
      await clearMarker();
      log.info({ event: 'basebackup' }, `cloned from ${ctx.peer.name}`);
    },

    ensurePeerSlot: () => pgc.ensurePeerSlot(ctx),
  };

  const setAside = (): Promise<{ kept?: string; reason: string }> => setAsideDataDir(ctx);

  return port;
}

/** Before a re-clone: keep the data directory aside if the disk allows, else delete it. */
export async function setAsideDataDir(ctx: NodeContext): Promise<{ kept?: string; reason: string }> {
  const dataDir = ctx.config.postgresql.dataDir;
  const marker = inProgressMarker(ctx);
  if (!existsSync(dataDir)) return { reason: 'there was none' };
  // An unfinished clone or initdb is worth nothing: never let it replace an earlier copy.
  if (existsSync(marker)) {
    await rm(dataDir, { recursive: true, force: true });
    return { reason: 'it was an unfinished clone or initdb (bootstrap-in-progress marker); earlier copies kept' };
  }
  const parent = dirname(dataDir.replace(/\/+$/, ''));
  for (const old of olderAsides(dataDir, await readdir(parent).catch(() => []))) await rm(old, { recursive: true, force: true });
  const size = await dirBytes(dataDir);
  const fs = await statfs(dataDir);
  const free = Number(fs.bavail) * Number(fs.bsize);
  if (canKeepAside(size, free)) {
    const target = preRejoinName(dataDir, new Date());
    await rename(dataDir, target);
    await syncDirectory(parent);
    return { kept: target, reason: `${free} bytes free > 1.1 × ${size}` };
  }
  await rm(dataDir, { recursive: true, force: true });
  return { reason: `only ${free} bytes free for a ${size}-byte directory and its fresh clone` };
}
