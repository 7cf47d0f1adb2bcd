import { formatLsn } from './lsn.ts';

/**
 * How a stopped former primary gets back onto the new leader's timeline: by following it as a
 * standby straight away, or through pg_rewind. Following is right exactly when this node's WAL
 * is a prefix of the new leader's history. PostgreSQL itself refuses a timeline that forked off
 * before its recovery point ("new timeline N forked off current database system timeline T
 * before current recovery point"), and then waits forever; pg_rewind cannot tell either for a
 * crashed directory, since the crash recovery it needs first writes a checkpoint past the fork.
 * So the decision is made before starting, from the end of the local WAL (pg_waldump) and the
 * leader's timeline history, as Patroni does for cleanly stopped ones.
 *
 * Histories compare timeline numbers, and two nodes can each promote onto the same number (a
 * stale standby forced to lead picks one past the histories it has). Their history files then
 * read alike however their WAL differs, and pg_rewind trusts them: it says "no rewind required"
 * and the standby never streams, or it keeps blocks the leader never wrote. So every follow and
 * every rewind first checks one stretch of WAL byte for byte against the leader's copy, and
 * re-clones when they differ.
 */

/** What this node's stopped data directory holds. */
export interface LocalWal {
  /** pg_controldata's "Database system identifier". */
  systemId: string;
  /** "Latest checkpoint's TimeLineID": the timeline its WAL was written on. */
  timeline: number;
  /** Start of the last record pg_waldump read on `timeline` from the latest checkpoint; undefined when it stopped for another reason than the end of the WAL. */
  lastRecord?: bigint;
  /** Where that record ends (its page headers counted); undefined when unknown. */
  lastRecordEnd?: bigint;
  /** pg_wal holds a history file of a later timeline than `timeline`: the WAL went on on another one. */
  laterTimeline: boolean;
  /** Bytes per WAL segment ("Bytes per WAL segment"). */
  segmentBytes: number;
}

/** One line of a timeline history file: `parent` ended at `switchpoint`. */
export interface HistoryEntry {
  parent: number;
  switchpoint: bigint;
}

/** The new leader as its server reports itself. */
export interface LeaderTimeline {
  systemId: string;
  timeline: number;
  /** Its timeline's history file (empty on timeline 1). */
  history: HistoryEntry[];
}

export type RejoinAction = 'follow' | 'rewind' | 'clone';

/** WAL written on `timeline` from `from` up to `to`, inside one segment. */
export interface WalStretch {
  timeline: number;
  from: bigint;
  to: bigint;
}

/** What to do, and the stretch of WAL both nodes must hold alike for it to be right. */
export interface RejoinPlan {
  action: RejoinAction;
  reason: string;
  /** Compare this stretch of our WAL with the leader's before acting; absent when nothing would be learned. */
  check?: WalStretch;
  /** What to do when the leader no longer holds the stretch. */
  unverified?: RejoinAction;
}

export type RejoinPath = { action: RejoinAction; reason: string };

/** The segment-aligned stretch that ends at `to`: from its segment's start. */
export function stretchTo(timeline: number, to: bigint, segmentBytes: number): WalStretch {
  const seg = BigInt(segmentBytes);
  return { timeline, from: ((to - 1n) / seg) * seg, to };
}

const span = (s: WalStretch): string => `${formatLsn(s.from)}..${formatLsn(s.to)}`;

/**
 * Follow, rewind or clone. `followedBefore` is the leader's timeline at this node's last
 * follow: a second rejoin onto the same timeline means following did not take, so rewind
 * whatever the WAL says. Every case not shown to be a prefix rewinds (always safe when the
 * histories are true); a shared timeline number, which pg_rewind cannot handle, follows only
 * when our WAL is shown to be the leader's and re-clones otherwise.
 */
export function rejoinPath(local: LocalWal, leader: LeaderTimeline, followedBefore?: number): RejoinPlan {
  const rewind = (reason: string): RejoinPlan => ({ action: 'rewind', reason });
  const clone = (reason: string): RejoinPlan => ({ action: 'clone', reason });
  if (local.systemId !== leader.systemId) return rewind(`another database system (ours ${local.systemId}, the leader's ${leader.systemId})`);
  if (local.laterTimeline) return rewind(`pg_wal goes on past timeline ${local.timeline}, the latest checkpoint's`);
  if (local.timeline > leader.timeline) return rewind(`our timeline ${local.timeline} is newer than the leader's ${leader.timeline}`);
  const { lastRecord, lastRecordEnd: end } = local;
  const known = lastRecord !== undefined && end !== undefined;
  if (local.timeline === leader.timeline) {
    // Two promotions onto one number leave history files alike, so pg_rewind would find
    // nothing to do and the standby would never stream: only the WAL itself can tell.
    if (followedBefore === leader.timeline) return clone(`following timeline ${leader.timeline}, which is ours too, did not take last time`);
    if (!known) return clone(`the leader is on our timeline ${local.timeline} and the end of our WAL is unknown`);
    const check = stretchTo(local.timeline, end, local.segmentBytes);
    return { action: 'follow', reason: `the leader is on our timeline ${local.timeline} and holds our WAL up to its end ${formatLsn(end)}`, check, unverified: 'clone' };
  }
  if (followedBefore === leader.timeline) return rewind(`following timeline ${leader.timeline} did not take last time`);
  if (!known) return rewind(`the end of the local WAL on timeline ${local.timeline} is unknown`);
  const last = formatLsn(lastRecord);
  const entry = leader.history.find((h) => h.parent === local.timeline);
  if (!entry) return rewind(`timeline ${local.timeline} is not in the leader's history of timeline ${leader.timeline}`);
  const at = formatLsn(entry.switchpoint);
  // The leader received timeline T from us up to its switchpoint, which is a record boundary:
  // a local record starting before it is wholly in the leader's copy.
  if (lastRecord < entry.switchpoint) {
    return {
      action: 'follow',
      reason: `our WAL ends before ${at}, where the leader left timeline ${local.timeline} (last record at ${last})`,
      check: stretchTo(local.timeline, end, local.segmentBytes),
      // Without the leader's copy a standby could not stream from there either.
      unverified: 'rewind',
    };
  }
  // pg_rewind keeps our WAL up to the switchpoint as the leader's: make sure it is.
  return { action: 'rewind', reason: `our WAL goes on past ${at}, where the leader left timeline ${local.timeline} (last record at ${last})`, check: stretchTo(local.timeline, entry.switchpoint, local.segmentBytes), unverified: 'rewind' };
}

/**
 * The plan once its stretch was compared: `same` true when the leader's copy is byte for byte
 * ours, false when it differs, undefined when the leader no longer holds it.
 */
export function settleRejoin(plan: RejoinPlan, same?: boolean): RejoinPath {
  if (!plan.check) return { action: plan.action, reason: plan.reason };
  const where = `${span(plan.check)} on timeline ${plan.check.timeline}`;
  if (same === true) return { action: plan.action, reason: `${plan.reason}; our WAL ${where} is the leader's byte for byte` };
  if (same === false) return { action: 'clone', reason: `our WAL ${where} differs from the leader's: the two histories share a timeline number, not their WAL (${plan.reason})` };
  const action = plan.unverified ?? plan.action;
  return { action, reason: `${plan.reason}; the leader no longer holds ${where} to compare` };
}
