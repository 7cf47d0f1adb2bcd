import type { Role } from '#common/schema/hostmeta.ts';
import type { ControllerSettings, PeerView, PgStatus } from './ports.ts';

/** One round of observations. Times are monotonic milliseconds on this node's clock. */
export interface Observation {
  now: number;
  pg: PgStatus;
  peer?: PeerView;
  peerPg: { ok: boolean; primary?: boolean };
  vipHeld: boolean;
}

/** What the controller remembers between rounds. Only liveness depends on it: safety comes from PostgreSQL and the witness. */
export interface Memory {
  /** Last time the peer answered on any path. */
  peerSeenAt: number;
  /** Follower: last time a leader was visible (its agent, or its PostgreSQL as primary). */
  leaderSeenAt: number;
  /** Leader: the standby's flush LSN and when it last advanced. */
  standbyFlush?: bigint;
  flushAdvancedAt: number;
  /** Leader: our WAL position at the last round. */
  lsn?: bigint;
  /**
   * Leader: by this round the standby had flushed all the WAL we had at the previous round (or
   * all we have now). A standby that reconnects streams again from the start of its WAL
   * segment: on a slow link it reports "streaming" with its old flush position for minutes
   * while that is sent again.
   */
  standbyKeepsUp?: boolean;
  /** Leader: consecutive rounds the standby streamed as `sync`. */
  syncRounds: number;
  /**
   * Leader: our WAL position in the first round the standby was seen `sync`. Every commit after
   * it waited for the standby; once the standby has flushed past it, it holds every
   * acknowledged write, and only then may it be recorded as promotable.
   */
  syncBaseline?: bigint;
  pgRestarts: number;
  /** Follower: since when our server is a standby whose WAL receiver does not stream. */
  receiverDownSince?: number;
  /** Follower: when a rejoin last restarted our server as a standby (REJOIN_GRACE_MS). */
  rejoinedAt?: number;
  /**
   * Leader: since when the standby said it is shutting down (a clean stop). Synchronous commit
   * stays off until it has gone (no longer streaming) or LEAVE_HOLD_MS passed; then the usual
   * catch-up rule turns it on again when it is back.
   */
  standbyLeavingSince?: number;
}

/** How long a leader keeps synchronous commit off for a standby that said it stops, if it does not. */
export const LEAVE_HOLD_MS = 60_000;

/**
 * How long a standby a rejoin just started has to stream before a timeline mismatch rejoins it
 * again. One that follows the new leader as it is must cross a timeline switch: its receiver
 * ends the old timeline and PostgreSQL retries on the new one only after
 * wal_retrieve_retry_interval (5 s), and it first replays what its crash left. With the usual
 * three rounds, a loaded node rejoined again and again, each time restarting the standby before
 * it could stream (seen in the failover suite: a loop every 2 s for two minutes).
 */
export const REJOIN_GRACE_MS = 30_000;

/** The lease as this node holds it. */
export interface LeaseView {
  /** The cluster has a witness (lease mode); without one, failover is manual. */
  arbiter: boolean;
  /** Leader: our own fencing deadline has not passed. */
  valid: boolean;
  /** Who the witness last said may be promoted. */
  promotable: string | null | undefined;
}

export type Action =
  | { kind: 'startPg' }
  | { kind: 'startStandby' }
  | { kind: 'handOver' }
  | { kind: 'fence' }
  | { kind: 'takeVip' }
  | { kind: 'dropVip' }
  | { kind: 'degrade'; why: string }
  | { kind: 'restoreSync' }
  | { kind: 'setPromotable'; to: string | null }
  | { kind: 'takeOver' }
  | { kind: 'reacquire' }
  | { kind: 'rejoin' }
  | { kind: 'unfence' }
  | { kind: 'adoptPrimary' };

export interface Decision {
  actions: Action[];
  reason: string;
}

export const PG_RESTART_LIMIT = 3;

/** Fold an observation into memory (pure). */
export function remember(m: Memory, o: Observation, role: Role): Memory {
  const next = { ...m };
  if (o.peer || o.peerPg.ok) next.peerSeenAt = o.now;
  // Our WAL receiver is no evidence: it reports "streaming" until TCP keepalives (~9 s) or
  // wal_receiver_timeout (30 s) give up on a dead primary. Asking the witness early is harmless:
  // it refuses while the lease lives.
  if (o.peer?.role === 'leader' || o.peerPg.primary) next.leaderSeenAt = o.now;
  if (o.pg.up) next.pgRestarts = 0;
  next.receiverDownSince = o.pg.up && o.pg.inRecovery && !o.pg.receiverStreaming ? (m.receiverDownSince ?? o.now) : undefined;
  if (m.standbyLeavingSince !== undefined && (role !== 'leader' || o.pg.standby?.state !== 'streaming' || o.now - m.standbyLeavingSince >= LEAVE_HOLD_MS)) next.standbyLeavingSince = undefined;
  const flush = o.pg.standby?.flushLsn ?? undefined;
  if (role === 'leader' && flush !== undefined && flush !== null) {
    if (m.standbyFlush === undefined || flush > m.standbyFlush || (o.pg.syncWaiters ?? 0) === 0) next.flushAdvancedAt = o.now;
    next.standbyFlush = flush;
  } else if (role === 'leader' && (o.pg.syncWaiters ?? 0) === 0) {
    next.flushAdvancedAt = o.now;
  }
  next.lsn = role === 'leader' ? o.pg.lsn : undefined;
  // All we had a round ago, or all we have now (in our first round as leader, the only test).
  const reached = [m.lsn, o.pg.lsn].filter((l) => l !== undefined);
  next.standbyKeepsUp = role === 'leader' && flush !== undefined && flush !== null && reached.some((l) => flush >= l);
  const syncing = role === 'leader' && streamingSync(o.pg);
  next.syncRounds = syncing ? m.syncRounds + 1 : 0;
  next.syncBaseline = syncing ? (m.syncBaseline ?? o.pg.lsn) : undefined;
  return next;
}

/** The standby streams and counts as synchronous. */
export function streamingSync(pg: PgStatus): boolean {
  const s = pg.standby;
  return Boolean(pg.up && !pg.inRecovery && pg.synchronousStandbyNames && s && s.state === 'streaming' && s.syncState === 'sync');
}

/** The standby may be recorded as promotable: synchronous for two rounds and flushed past the baseline. */
export function standbyInSync(pg: PgStatus, m: Memory): boolean {
  const flush = pg.standby?.flushLsn;
  return streamingSync(pg) && m.syncRounds >= 2 && m.syncBaseline !== undefined && flush !== undefined && flush !== null && flush >= m.syncBaseline;
}

/** Close enough to turn synchronous commit on: commits wait only for the last bit of catch-up. */
export const SYNC_CATCHUP_BYTES = 1n << 20n;

/**
 * Synchronous commit may go on: the standby streams, is within SYNC_CATCHUP_BYTES, and keeps up
 * (without the last, commits on a slow link waited until the degrade rule turned it off again).
 */
function caughtUp(pg: PgStatus, m: Memory): boolean {
  const s = pg.standby;
  return Boolean(m.standbyKeepsUp && s && s.state === 'streaming' && s.flushLsn !== null && pg.lsn !== undefined && s.flushLsn + SYNC_CATCHUP_BYTES >= pg.lsn);
}

/**
 * The role rules (pure). Safety does not rest on these: a leader is writable only under a lease
 * the witness granted (checked again right before every action that makes it writable), and a
 * follower is promoted only by the witness handing it the lease.
 */
export function decide(role: Role, m: Memory, o: Observation, lease: LeaseView, s: ControllerSettings): Decision {
  const acts: Action[] = [];
  const done = (reason: string): Decision => ({ actions: acts, reason: acts.length ? `${acts.map((a) => a.kind).join(',')}: ${reason}` : reason });
  switch (role) {
    case 'leader': {
      if (lease.arbiter && !lease.valid) return done('lease not valid: the guard fences');
      if (!o.pg.up) {
        if (m.pgRestarts < PG_RESTART_LIMIT) acts.push({ kind: 'startPg' });
        else if (o.peer || o.peerPg.ok) acts.push({ kind: 'handOver' });
        return done('PostgreSQL is down');
      }
      if (o.pg.inRecovery) {
        acts.push({ kind: 'adoptPrimary' });
        return done('leader whose server is still a standby');
      }
      if (!o.vipHeld && !o.pg.readOnly) acts.push({ kind: 'takeVip' });
      const syncOn = Boolean(o.pg.synchronousStandbyNames);
      if (s.syncPolicy === 'degrade') {
        const peerLost = o.now - m.peerSeenAt >= s.degradeAfter && o.pg.standby?.state !== 'streaming';
        const stalled = (o.pg.syncWaiters ?? 0) > 0 && o.now - m.flushAdvancedAt >= s.degradeAfter;
        if (syncOn && (peerLost || stalled)) {
          acts.push({ kind: 'degrade', why: peerLost ? `standby lost for ${o.now - m.peerSeenAt} ms` : `synchronous commits waiting and the standby's flush LSN still for ${o.now - m.flushAdvancedAt} ms` });
          return done('degrade');
        }
        // A standby that announced its clean stop still streams until it stops: not yet.
        if (!syncOn && caughtUp(o.pg, m) && m.standbyLeavingSince === undefined) acts.push({ kind: 'restoreSync' });
      } else if (!syncOn) {
        acts.push({ kind: 'restoreSync' });
      }
      if (lease.arbiter) {
        // A record naming our standby while commits are not synchronous is never allowed to stand.
        if (!syncOn && lease.promotable !== null) acts.push({ kind: 'setPromotable', to: null });
        else if (syncOn && lease.promotable !== s.peer && standbyInSync(o.pg, m)) acts.push({ kind: 'setPromotable', to: s.peer });
      }
      if (lease.arbiter && lease.promotable !== s.peer) {
        const st = o.pg.standby;
        return done(`leader; ${s.peer} not promotable yet (sync ${syncOn ? 'on' : 'off'}, standby ${st ? `${st.state}/${st.syncState}` : 'absent'}, ${m.syncRounds} sync rounds${m.syncBaseline !== undefined && st?.flushLsn != null && st.flushLsn < m.syncBaseline ? ', flush behind the baseline' : ''})`);
      }
      return done('leader');
    }
    case 'follower': {
      if (o.pg.up && !o.pg.inRecovery) {
        acts.push({ kind: 'adoptPrimary' });
        return done('our server is a primary but we are follower');
      }
      if (!o.pg.up) acts.push({ kind: 'startStandby' });
      if (o.vipHeld) acts.push({ kind: 'dropVip' });
      const peerLeads = o.peer?.role === 'leader' || o.peerPg.primary === true;
      // Rewind only onto a primary we can reach, after the receiver had time to reconnect by itself
      // (a standby's own timeline is stale while it does not stream).
      const receiverDownFor = m.receiverDownSince === undefined ? 0 : o.now - m.receiverDownSince;
      const sinceRejoin = m.rejoinedAt === undefined ? Infinity : o.now - m.rejoinedAt;
      if (o.peerPg.ok && o.peerPg.primary && o.pg.up && receiverDownFor >= 3 * s.checkInterval && sinceRejoin >= REJOIN_GRACE_MS && o.peer?.timeline !== undefined && o.pg.timeline !== undefined && o.peer.timeline !== o.pg.timeline) {
        // Newer: we missed a promotion. Older: we were promoted ourselves and diverged (a switchover
        // that failed after our pg_promote); the receiver can never stream from there either.
        acts.push({ kind: 'rejoin' });
        return done(`leader is on timeline ${o.peer.timeline}, we are on ${o.pg.timeline}`);
      }
      if (lease.arbiter && o.now - m.leaderSeenAt >= s.fenceAfter) {
        acts.push({ kind: 'takeOver' });
        return done(`no leader visible for ${o.now - m.leaderSeenAt} ms: asking the witness`);
      }
      return done(peerLeads ? 'following' : `leader not visible for ${o.now - m.leaderSeenAt} ms`);
    }
    case 'fenced': {
      if (o.pg.up) acts.push({ kind: 'fence' });
      if (o.vipHeld) acts.push({ kind: 'dropVip' });
      const peerLeads = o.peer?.role === 'leader' || o.peerPg.primary === true;
      if (lease.arbiter) {
        acts.push({ kind: 'reacquire' });
        return done('fenced: asking the witness');
      }
      if (peerLeads) {
        acts.push({ kind: 'rejoin' });
        return done('fenced and the peer leads');
      }
      if (o.peer && (o.peer.role === 'follower' || o.peer.role === 'init')) {
        acts.push({ kind: 'unfence' });
        return done('the peer is our standby (manual failover mode)');
      }
      return done('fenced: waiting for the peer');
    }
    default:
      return done(`role ${role}`);
  }
}
