import test from 'ava';
import { dualWritable, longestGap, rejoinToolsIn, writerChanges, type Sample } from '../harness/cluster.ts';
import { outageAfter } from '../harness/scenarios.ts';

// The failover harness's measures, without namespaces (the scenarios themselves: npm run e2e -- failover).
// The dual-writable computation, without namespaces.
test('dual-writable: overlapping and interleaved samples count, a handover does not', (t) => {
  const s = (node: string, t0: number, writable = true, len = 10): Sample => ({ node, t: t0, end: t0 + len, writable });
  // A handover: node1 writable until 1000, node2 from 1300.
  const handover = [s('node1', 600), s('node1', 800), s('node1', 1000), s('node1', 1200, false), s('node2', 1100, false), s('node2', 1300), s('node2', 1500)];
  t.deepEqual(dualWritable(handover), { samples: 0, overlapMs: 0 });
  // Interleaved: each node writable at alternate instants, never at the same millisecond.
  const interleaved = [s('node1', 0), s('node1', 200), s('node1', 400), s('node2', 100), s('node2', 300), s('node2', 500)];
  t.true(dualWritable(interleaved).samples >= 4);
  t.true(dualWritable(interleaved).overlapMs > 0);
  // One sample each, windows overlapping.
  t.is(dualWritable([s('node1', 0, true, 50), s('node2', 40, true, 50)]).samples, 2);
  // A non-writable observation in between splits a span.
  t.is(dualWritable([s('node1', 0), s('node1', 100, false), s('node1', 200), s('node2', 100)]).samples, 0);
});

test('writer changes: a node other than the last writer accepting writes, in time order, from the start time', (t) => {
  const s = (node: string, t0: number, writable = true): Sample => ({ node, t: t0, end: t0 + 10, writable });
  // node1 writes, is fenced (not writable) and writes again: no change. Then node2 takes over and node1 back.
  const samples = [s('node1', 500), s('node2', 1500, false), s('node1', 1000), s('node1', 1200, false), s('node1', 1400), s('node2', 2200), s('node2', 2400), s('node1', 3000, false), s('node1', 3600)];
  t.deepEqual(writerChanges(samples, 0, 'node1'), [{ at: 2200, from: 'node1', to: 'node2' }, { at: 3600, from: 'node2', to: 'node1' }]);
  t.deepEqual(writerChanges(samples, 2300, 'node2'), [{ at: 3600, from: 'node2', to: 'node1' }], 'before the start time nothing counts');
  t.deepEqual(writerChanges([s('node1', 100, false), s('node2', 200, false)], 0, 'node1'), [], 'no writable sample, no change');
  // Both writable for a while (as pg_auto_failover tuned was under the bad network): one change, not one per sample.
  const both = [0, 200, 400, 600, 800].flatMap((at) => [s('node1', at), s('node2', at + 100)]);
  t.deepEqual(writerChanges(both, 0, 'node1'), [{ at: 100, from: 'node1', to: 'node2' }]);
});

test('outage: the longest gap between acknowledged writes, counted from the fault', (t) => {
  const acks = [900, 950, 3000, 3050, 3100].map((at) => ({ t: at }));
  t.is(outageAfter(acks, 1000), 2);
  // Writes had stopped before the fault: the gap still starts at the fault.
  t.is(outageAfter([{ t: 100 }, { t: 5000 }, { t: 5050 }], 1000), 4);
});

test('longest gap: between consecutive instants, none for fewer than two', (t) => {
  t.is(longestGap([100, 150, 1150, 1200]), 1000);
  t.is(longestGap([5]), 0);
  t.is(longestGap([]), 0);
});

test('rejoin tools: what the node\'s own processes ran after the power-on, in order', (t) => {
  // Lines as the systems write them (Patroni, pg_auto_failover's keeper, the agent), some not ours.
  const log = [
    '2026-12-03T10:00:00.000Z [patroni-node1!] 2026-12-03 10:00:00,000 INFO: replica has been created using basebackup',
    '2026-12-03T10:00:05.000Z [patroni-node2!] pg_basebackup: base backup completed (this node, not node1)',
    '2026-12-03T10:00:06.000Z [sampler-node1] writable=false',
    '2026-12-03T10:00:06.500Z [keeper-node10] /usr/lib/postgresql/15/bin/pg_basebackup -w (another node)',
    '2026-12-03T10:00:06.700Z [keeper-node1!] INFO  FSM transition from "demoted" to "catchingup": A new primary is available. First, try to rewind. If that fails, do a pg_basebackup.',
    '2026-12-03T10:00:07.000Z [keeper-node1!] INFO   /usr/lib/postgresql/15/bin/pg_rewind --target-pgdata /x --source-server \'host=10.77.0.12\' --progress',
    '2026-12-03T10:00:12.000Z [node1] {"event":"rejoin","method":"pg_rewind"}',
  ].join('\n');
  const on = Date.parse('2026-12-03T10:00:01.000Z');
  t.deepEqual(rejoinToolsIn(log, 'node1', on), ['pg_rewind']);
  t.deepEqual(rejoinToolsIn(log, 'node2', on), ['pg_basebackup']);
  t.deepEqual(rejoinToolsIn(log, 'node10', on), ['pg_basebackup']);
  t.deepEqual(rejoinToolsIn(log, 'node1', 0), ['pg_basebackup', 'pg_rewind']);
  t.deepEqual(rejoinToolsIn(log, 'node1', Date.parse('2026-12-03T10:00:13.000Z')), []);
  const fellBack = [
    '2026-12-03T10:00:07.000Z [patroni-node1!] 2026-12-03 10:00:07,000 INFO: running pg_rewind from node2',
    '2026-12-03T10:00:08.000Z [node1] {"event":"rejoin","method":"pg_basebackup","rewindError":"could not find previous WAL record"}',
  ].join('\n');
  t.deepEqual(rejoinToolsIn(fellBack, 'node1', on), ['pg_rewind', 'pg_basebackup']);
  // The agent following as it is runs neither tool, whatever its message says of pg_rewind.
  const followed = '2026-12-03T10:00:07.000Z [node1] {"level":30,"event":"rejoin","method":"follow","reason":"our WAL ends before 0/A269848","msg":"following node2 as it is (no rewind needed): our WAL ends before 0/A269848"}';
  t.deepEqual(rejoinToolsIn(followed, 'node1', on), []);
});
