import test from 'ava';
import { dualWritable, type Sample } from '../harness/cluster.ts';
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

test('outage: the longest gap between acknowledged writes, counted from the fault', (t) => {
  const acks = [900, 950, 3000, 3050, 3100].map((at) => ({ t: at }));
  t.is(outageAfter(acks, 1000), 2);
  // Writes had stopped before the fault: the gap still starts at the fault.
  t.is(outageAfter([{ t: 100 }, { t: 5000 }, { t: 5050 }], 1000), 4);
});
