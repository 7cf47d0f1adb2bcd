import type { Role } from '../../common/schema/hostmeta.ts';
import type { LocalPgStatus } from './postgres.ts';

/** What the peer's agent says about itself (GET /v1/status, the fields decisions use). */
export interface PeerView {
  role: Role;
  generation: number;
  timeline?: number;
  lsn?: string;
  /** The peer, as a leader, reports our replication state. */
  standbySyncState?: string;
}

/** One round of observations. Times are monotonic milliseconds. */
export interface Observation {
  now: number;
  pg: LocalPgStatus;
  /** The peer's agent answered this round. */
  peerApi?: PeerView;
  /** The peer's PostgreSQL answered a query this round. */
  peerPgOk: boolean;
  /** As seen on the peer's PostgreSQL when it is primary: our sync_state there. */
  peerPgSaysOurSyncState?: string;
  /** The peer's PostgreSQL is a primary (not in recovery). */
  peerPgIsPrimary?: boolean;
  /** The peer's host answers ICMP. Diagnostic only: a box whose services are dead still pings. */
  peerIcmpOk?: boolean;
  /** Reachability probe of the witness (or lease renewal/acquisition for a lease witness). */
  witnessOk: boolean;
  /** Lease witness only: we hold the lease after this round. */
  leaseHeld?: boolean;
  /** We currently hold the VIP. */
  vipHeld: boolean;
}

/** What the agent remembers between rounds (in memory; the durable part is hostmeta). */
export interface Memory {
  role: Role;
  generation: number;
  /** Last time the peer answered on any service path (agent API or PostgreSQL). */
  peerSeenAt: number;
  witnessOkAt: number;
  /** Follower: last time the leader reported us as its synchronous standby. */
  syncConfirmedAt: number;
  /** Leader: synchronous replication is switched off because the peer is lost. */
  degraded: boolean;
  pgDownSince?: number;
  pgRestarts: number;
}

export interface Timings {
  checkInterval: number;
  checkTimeout: number;
  fenceAfter: number;
  promoteAfter: number;
  degradeAfter: number;
  syncPolicy: 'degrade' | 'strict';
  leaseWitness: boolean;
  /**
   * No witness (`witness: none`): failover is manual. The follower never promotes by itself,
   * so the leader has no rival to fence against and keeps serving when it loses the peer.
   */
  noWitness?: boolean;
}

export type Action =
  | { kind: 'promote' }
  | { kind: 'fence' }
  | { kind: 'unfence' }
  | { kind: 'rejoin' }
  | { kind: 'degrade' }
  | { kind: 'restoreSync' }
  | { kind: 'takeVip' }
  | { kind: 'dropVip' }
  | { kind: 'restartPostgres' }
  | { kind: 'startAsFollower' };

export interface Decision {
  actions: Action[];
  /** Set when the role changes; the executor records it in hostmeta with the reason. */
  transition?: { to: Role; reason: string };
  /** Why nothing or something was done, for the log when it changes. */
  reason: string;
}

const PG_RESTART_LIMIT = 3;

/** Update the memory's timestamps from an observation (pure). */
export function remember(m: Memory, o: Observation): Memory {
  const next = { ...m };
  if (o.peerApi || o.peerPgOk) next.peerSeenAt = o.now;
  if (o.witnessOk) next.witnessOkAt = o.now;
  if (o.peerApi?.standbySyncState === 'sync' || o.peerPgSaysOurSyncState === 'sync') next.syncConfirmedAt = o.now;
  if (o.pg.up) {
    next.pgDownSince = undefined;
    next.pgRestarts = 0;
  } else {
    next.pgDownSince ??= o.now;
  }
  return next;
}

/**
 * The role state machine: leader | follower | fenced, given what was observed. Pure, so every
 * rule is testable without processes. Arbitration between nodes uses generations and
 * PostgreSQL timelines, never wall clocks.
 */
export function decide(m: Memory, o: Observation, t: Timings): Decision {
  const peerLostFor = o.now - m.peerSeenAt;
  const peerNewer = o.peerApi !== undefined && o.peerApi.role === 'leader' && o.peerApi.generation > m.generation;

  switch (m.role) {
    case 'leader': {
      if (peerNewer) return { actions: [{ kind: 'rejoin' }], transition: { to: 'follower', reason: `peer ${describePeer(o.peerApi)} is leader with a newer generation than ours (${m.generation})` }, reason: 'newer leader' };
      const witnessLostFor = o.now - m.witnessOkAt;
      // A lease must be given up before it expires at the witness, hence one interval of margin.
      const fenceAt = t.leaseWitness ? t.fenceAfter - t.checkInterval : t.fenceAfter;
      if (!t.noWitness && peerLostFor >= fenceAt && witnessLostFor >= fenceAt) {
        return { actions: [{ kind: 'fence' }], transition: { to: 'fenced', reason: `lost peer for ${peerLostFor} ms and witness for ${witnessLostFor} ms` }, reason: 'isolated' };
      }
      const actions: Action[] = [];
      if (!o.pg.up) {
        if (m.pgRestarts < PG_RESTART_LIMIT) actions.push({ kind: 'restartPostgres' });
        else if (o.peerApi || o.peerPgOk) {
          return { actions: [{ kind: 'fence' }], transition: { to: 'fenced', reason: `PostgreSQL failed to restart ${m.pgRestarts} times; handing over to the peer` }, reason: 'postgres broken' };
        }
      }
      if (!o.vipHeld && o.pg.up && o.pg.inRecovery === false) actions.push({ kind: 'takeVip' });
      const streaming = o.pg.peerReplication?.state === 'streaming';
      if (!m.degraded && t.syncPolicy === 'degrade' && peerLostFor >= t.degradeAfter && !streaming) {
        // With a lease witness, serving writes alone is safe only while we hold the lease.
        if (!t.leaseWitness || o.leaseHeld) actions.push({ kind: 'degrade' });
      }
      if (m.degraded && streaming && caughtUp(o.pg)) actions.push({ kind: 'restoreSync' });
      return { actions, reason: actions.length ? actions.map((a) => a.kind).join(',') : 'steady' };
    }
    case 'follower': {
      if (o.peerApi && (o.peerApi.role === 'leader' || o.peerPgIsPrimary)) {
        const actions: Action[] = [];
        if (!o.pg.up) actions.push({ kind: 'startAsFollower' });
        else if (o.pg.inRecovery && o.pg.receiverStreaming === false && o.peerApi.timeline !== undefined && o.pg.timeline !== undefined && o.peerApi.timeline > o.pg.timeline && peerLostFor === 0) {
          // The leader moved to a timeline we did not follow: rewind onto it.
          return { actions: [{ kind: 'rejoin' }], reason: `leader is on timeline ${o.peerApi.timeline}, we are on ${o.pg.timeline}` };
        }
        if (o.vipHeld) actions.push({ kind: 'dropVip' });
        return { actions, reason: actions.length ? actions.map((a) => a.kind).join(',') : 'streaming' };
      }
      if (!o.pg.up) return { actions: [{ kind: 'startAsFollower' }], reason: 'PostgreSQL is down' };
      const wasSync = m.peerSeenAt - m.syncConfirmedAt <= 2 * t.checkInterval + t.checkTimeout;
      if (peerLostFor < t.promoteAfter) return { actions: [], reason: `leader unreachable for ${peerLostFor} ms` };
      if (!wasSync) return { actions: [], reason: 'leader lost, but we were not its synchronous standby when we lost it: no automatic promotion' };
      if (!o.witnessOk || (t.leaseWitness && !o.leaseHeld)) return { actions: [], reason: 'leader lost, but the witness does not confirm: no promotion' };
      return {
        actions: [{ kind: 'promote' }],
        transition: { to: 'leader', reason: `leader unreachable on every path for ${peerLostFor} ms, witness ${t.leaseWitness ? 'granted the lease' : 'reachable'}, we were its synchronous standby` },
        reason: 'failover',
      };
    }
    case 'fenced': {
      if (o.vipHeld) return { actions: [{ kind: 'dropVip' }], reason: 'fenced nodes hold no VIP' };
      if (o.peerApi?.role === 'leader' || o.peerPgIsPrimary) {
        return { actions: [{ kind: 'rejoin' }], transition: { to: 'follower', reason: `peer is leader (${describePeer(o.peerApi)})` }, reason: 'rejoin' };
      }
      const peerIsOurStandby = o.peerApi !== undefined && o.peerApi.role === 'follower' && o.peerApi.generation <= m.generation;
      if (peerIsOurStandby && (o.witnessOk || t.noWitness)) return { actions: [{ kind: 'unfence' }], transition: { to: 'leader', reason: 'peer and witness are back and the peer is still our standby' }, reason: 'unfence' };
      if (!o.peerApi && !o.peerPgOk && t.leaseWitness && o.leaseHeld) {
        return { actions: [{ kind: 'unfence' }], transition: { to: 'leader', reason: 'the witness granted us the lease: the peer cannot be primary' }, reason: 'unfence' };
      }
      return { actions: [], reason: 'fenced: waiting for peer and witness' };
    }
    default:
      return { actions: [], reason: `role ${m.role}` };
  }
}

function describePeer(p: PeerView | undefined): string {
  return p ? `role ${p.role}, generation ${p.generation}${p.timeline ? `, timeline ${p.timeline}` : ''}` : 'unknown';
}

/** The peer has replayed everything we wrote (LSNs compared as numbers, never times). */
export function caughtUp(pg: LocalPgStatus): boolean {
  const r = pg.peerReplication;
  if (!r?.replayLsn || !pg.lsn) return false;
  return lsnToBigInt(r.replayLsn) >= lsnToBigInt(pg.lsn);
}

export function lsnToBigInt(lsn: string): bigint {
  const [hi, lo] = lsn.split('/');
  return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
}
