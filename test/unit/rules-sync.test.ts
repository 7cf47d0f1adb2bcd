import test from 'ava';
import { INIT_TIMINGS } from '#agent/sim/cluster.ts';
import { decide, remember, type Memory, type Observation } from '#agent/core/rules.ts';
import { switchoverCaughtUp } from '#agent/core/controller.ts';

const settings = { cluster: 't', self: 'node1', peer: 'node2', isBootstrapLeader: false, syncPolicy: 'degrade' as const, maxDrift: 0.01, ...INIT_TIMINGS };
const lease = { arbiter: true, valid: true, promotable: null };

/** A degraded leader's round: our WAL position and the standby's flush as pg_stat_replication shows them. */
function round(now: number, lsn: bigint, flush: bigint): Observation {
  return {
    now,
    pg: { up: true, inRecovery: false, lsn, synchronousStandbyNames: '', syncWaiters: 0, standby: { state: 'streaming', syncState: 'async', flushLsn: flush, replayLsn: flush } },
    peer: { role: 'follower' },
    peerPg: { ok: true, primary: false },
    vipHeld: true,
  } as unknown as Observation;
}

/** Fold the rounds into memory as the controller does, and say in which rounds the leader turned synchronous commit on. */
function restores(rounds: [bigint, bigint][]): number[] {
  let m = { peerSeenAt: 0, leaderSeenAt: 0, flushAdvancedAt: 0, syncRounds: 0, pgRestarts: 0 } as Memory;
  const at: number[] = [];
  rounds.forEach(([lsn, flush], i) => {
    const o = round(1000 * (i + 1), lsn, flush);
    m = remember(m, o, 'leader');
    if (decide('leader', m, o, lease, settings).actions.some((a) => a.kind === 'restoreSync')) at.push(i);
  });
  return at;
}

const MB = 1n << 20n;

test('a standby that streams its segment again from its start, on a slow link, is not made synchronous until it keeps up', (t) => {
  // Within SYNC_CATCHUP_BYTES all along, but its flush stands still while the leader writes:
  // PostgreSQL reports the old flush position while the segment's start is sent again.
  const old = 100n * MB;
  t.deepEqual(restores([[old + 10_000n, old], [old + 20_000n, old], [old + 30_000n, old], [old + 40_000n, old + 30_000n]]), [3], 'on only once it flushed what we had a round before');
});

test('a standby that has all our WAL is made synchronous at once, even in our first round as leader', (t) => {
  const at = 100n * MB;
  t.deepEqual(restores([[at, at], [at, at]]), [0, 1]);
});

test('a standby more than SYNC_CATCHUP_BYTES behind is not made synchronous even if it keeps up', (t) => {
  const at = 100n * MB;
  // Round 1: it flushed all we had in round 0, but we wrote 2 MiB more since.
  t.deepEqual(restores([[at, at - 3n * MB], [at + 2n * MB, at]]), []);
});

test('a switchover stops the old primary once the standby has flushed its last LSN and its replay has reached it or is moving; not while replay stands still', (t) => {
  const at = (flush: bigint | null, replay: bigint | null) => ({ up: true, inRecovery: false, lsn: 1000n, standby: { state: 'streaming', syncState: 'sync', flushLsn: flush, replayLsn: replay } });
  t.true(switchoverCaughtUp(at(1000n, 1000n), undefined), 'replayed');
  t.false(switchoverCaughtUp(at(999n, 1000n), undefined), 'not flushed: something acknowledged could be lost');
  t.false(switchoverCaughtUp(at(1000n, 900n), undefined), 'flushed, replay behind, not yet seen moving');
  t.true(switchoverCaughtUp(at(1000n, 900n), 850n), 'flushed, replay moving: the peer waits for the rest');
  t.false(switchoverCaughtUp(at(1000n, 900n), 900n), 'flushed, replay standing still (a query conflict): wait, and resume writes at the timeout');
  t.false(switchoverCaughtUp(at(null, null), undefined));
  t.false(switchoverCaughtUp({ up: false }, undefined));
  t.false(switchoverCaughtUp({ up: true, inRecovery: false, lsn: 1000n }, undefined), 'no standby');
});
