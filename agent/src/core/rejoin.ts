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
 */

/** What this node's stopped data directory holds. */
export interface LocalWal {
  /** pg_controldata's "Database system identifier". */
  systemId: string;
  /** "Latest checkpoint's TimeLineID": the timeline its WAL was written on. */
  timeline: number;
  /** Start of the last record pg_waldump read on `timeline` from the latest checkpoint; undefined when it stopped for another reason than the end of the WAL. */
  lastRecord?: bigint;
  /** pg_wal holds a history file of a later timeline than `timeline`: the WAL went on on another one. */
  laterTimeline: boolean;
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

export type RejoinPath = { follow: boolean; reason: string };

/**
 * Follow or rewind. `followedBefore` is the leader's timeline at this node's last follow: a
 * second rejoin onto the same timeline means following did not take, so rewind whatever the
 * WAL says. Every case not shown to be a prefix rewinds (today's path, always safe).
 */
export function rejoinPath(local: LocalWal, leader: LeaderTimeline, followedBefore?: number): RejoinPath {
  const rewind = (reason: string): RejoinPath => ({ follow: false, reason });
  if (local.systemId !== leader.systemId) return rewind(`another database system (ours ${local.systemId}, the leader's ${leader.systemId})`);
  if (followedBefore === leader.timeline) return rewind(`following timeline ${leader.timeline} did not take last time`);
  if (local.laterTimeline) return rewind(`pg_wal goes on past timeline ${local.timeline}, the latest checkpoint's`);
  if (local.lastRecord === undefined) return rewind(`the end of the local WAL on timeline ${local.timeline} is unknown`);
  const last = formatLsn(local.lastRecord);
  if (local.timeline > leader.timeline) return rewind(`our timeline ${local.timeline} is newer than the leader's ${leader.timeline}`);
  // Two nodes can each promote onto the same timeline number (a stale standby forced to lead
  // picks one past the histories it has): their histories then read alike however the WAL
  // differs, so sharing a timeline proves nothing (the simulator found such a pair).
  if (local.timeline === leader.timeline) return rewind(`the leader is on our timeline ${local.timeline}, which histories cannot tell from a second promotion onto the same number`);
  const entry = leader.history.find((h) => h.parent === local.timeline);
  if (!entry) return rewind(`timeline ${local.timeline} is not in the leader's history of timeline ${leader.timeline}`);
  const at = formatLsn(entry.switchpoint);
  // The leader received timeline T from us up to its switchpoint, which is a record boundary:
  // a local record starting before it is wholly in the leader's copy.
  if (local.lastRecord < entry.switchpoint) return { follow: true, reason: `our WAL ends before ${at}, where the leader left timeline ${local.timeline} (last record at ${last})` };
  return rewind(`our WAL goes on past ${at}, where the leader left timeline ${local.timeline} (last record at ${last})`);
}
