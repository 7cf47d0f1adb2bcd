import test from 'ava';
import { INIT_TIMINGS } from '#agent/sim/cluster.ts';
import { decide, REJOIN_GRACE_MS, type Memory } from '#agent/core/rules.ts';
import type { Observation } from '#agent/core/rules.ts';

const settings = { cluster: 't', self: 'node1', peer: 'node2', isBootstrapLeader: false, syncPolicy: 'degrade' as const, maxDrift: 0.01, ...INIT_TIMINGS };
const lease = { arbiter: true, valid: false, promotable: null };
// A standby on timeline 3 whose receiver has not streamed for 10 s; the peer leads on timeline 4.
const now = 100_000;
const o = { now, pg: { up: true, inRecovery: true, timeline: 3, receiverStreaming: false }, peer: { role: 'leader', timeline: 4, generation: 4 }, peerPg: { ok: true, primary: true }, vipHeld: false } as unknown as Observation;
const memory = (m: Partial<Memory>): Memory => ({ peerSeenAt: now, leaderSeenAt: now, syncRounds: 0, pgRestarts: 0, receiverDownSince: now - 10_000, ...m }) as Memory;

test('a standby a rejoin just started gets REJOIN_GRACE_MS to cross the timeline switch before a mismatch rejoins it again', (t) => {
  const kinds = (m: Memory): string[] => decide('follower', m, o, lease, settings).actions.map((a) => a.kind);
  t.true(kinds(memory({})).includes('rejoin'), 'no rejoin lately: the mismatch rejoins');
  t.false(kinds(memory({ rejoinedAt: now - 5_000 })).includes('rejoin'), '5 s after a rejoin: wait');
  t.true(kinds(memory({ rejoinedAt: now - REJOIN_GRACE_MS })).includes('rejoin'), 'after the grace: rejoin');
});
