import test from 'ava';
import { rejoinPath, settleRejoin } from '#agent/core/rejoin.ts';
import { rewindPoint, sameStretch, SIM_SEGMENT, SimPostgres, type Wal } from '#agent/sim/pg.ts';
import { Rng, SimProcess, World } from '#agent/sim/world.ts';

// WALs as the simulator writes them: client writes (id > 0) and timeline switches (id < 0).
const w = (...recs: [number, number][]): Wal[] => recs.map(([id, tl]) => ({ id, tl }));
const base = w([1, 1], [2, 1], [3, 1]);

test("the simulator's pg_rewind goes by timeline histories, as pg_rewind does, not by the WAL", (t) => {
  // The leader was promoted at 3: timeline 1 parts there.
  t.is(rewindPoint([...base, ...w([4, 1])], [...base, ...w([-1, 2], [10, 2])]), 3);
  // Two promotions onto timeline 2 at the same point: no rewind required, whatever follows.
  t.is(rewindPoint([...base, ...w([-1, 2], [4, 2])], [...base, ...w([-2, 2], [10, 2])]), 'same');
  // Promoted onto timeline 2 at different points, the leader then onto 3: the earlier end of 2.
  t.is(rewindPoint([...base, ...w([-1, 2], [4, 2], [5, 2])], [...base.slice(0, 2), ...w([-2, 2], [7, 2], [-3, 3])]), 2);
});

test("the simulator's byte check: the leader's records in the stretch are ours, and a leader short of it holds other bytes", (t) => {
  const local = [...base, ...w([-1, 2], [4, 2])];
  const s = { timeline: 2, from: 0n, to: 5n };
  t.true(sameStretch(local, [...local, ...w([5, 2])], s));
  t.false(sameStretch(local, [...base, ...w([-2, 2], [4, 2])], s), 'another switch record at 3');
  t.false(sameStretch(local, base, s), 'the leader has not written that far');
  t.is(sameStretch(base, local, s), undefined, 'our own WAL is shorter than the stretch');
});

test('a node promoted onto the timeline number its leader holds rejoins by a re-clone, never by pg_rewind or a follow', (t) => {
  const world = new World(new Rng(7));
  const a = new SimPostgres('n1', world, new SimProcess('n1'));
  const b = new SimPostgres('n2', world, new SimProcess('n2'));
  a.wal = [...base, ...w([-1, 2], [4, 2])];
  b.wal = [...base, ...w([-2, 2], [9, 2], [10, 2])];
  b.timeline = 2;
  const plan = rejoinPath(a.localWal(), b.leaderTimeline());
  t.like(plan, { action: 'follow', unverified: 'clone', check: { timeline: 2, from: 0n, to: 5n } });
  t.is(SIM_SEGMENT, 8);
  t.like(settleRejoin(plan, sameStretch(a.wal, b.wal, plan.check!)), { action: 'clone' });
  // Ours a prefix of the leader's on the same number: follow.
  const c = new SimPostgres('n1', world, new SimProcess('n1'));
  c.wal = b.wal.slice(0, 5);
  t.like(settleRejoin(rejoinPath(c.localWal(), b.leaderTimeline()), sameStretch(c.wal, b.wal, { timeline: 2, from: 0n, to: 5n })), { action: 'follow' });
});
