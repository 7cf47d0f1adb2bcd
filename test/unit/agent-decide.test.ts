import test from 'ava';
import { caughtUp, decide, lsnToBigInt, remember, type Memory, type Observation, type Timings } from '../../agent/src/decide.ts';

const T: Timings = { checkInterval: 1000, checkTimeout: 800, fenceAfter: 4000, promoteAfter: 6000, degradeAfter: 5000, syncPolicy: 'degrade', leaseWitness: true };

const mem = (over: Partial<Memory> = {}): Memory => ({ role: 'follower', generation: 1, peerSeenAt: 0, witnessOkAt: 0, syncConfirmedAt: 0, degraded: false, pgRestarts: 0, ...over });
const obs = (over: Partial<Observation> = {}): Observation => ({
  now: 0, pg: { up: true, inRecovery: true, lsn: '0/3000000', timeline: 1, receiverStreaming: true }, peerPgOk: false, witnessOk: true, leaseHeld: true, vipHeld: false, ...over,
});

/** Run rounds of the state machine over time with a fixed observation shape. */
function rounds(m: Memory, o: (now: number) => Observation, until: number, t = T): { at: number; kinds: string[] }[] {
  const out: { at: number; kinds: string[] }[] = [];
  let memory = m;
  for (let now = 0; now <= until; now += t.checkInterval) {
    const observation = o(now);
    memory = remember(memory, observation);
    const d = decide(memory, observation, t);
    if (d.actions.length) out.push({ at: now, kinds: d.actions.map((a) => a.kind) });
    if (d.transition) memory = { ...memory, role: d.transition.to };
  }
  return out;
}

test('a follower that was the sync standby promotes after promoteAfter when the witness grants the lease', (t) => {
  const m = mem({ peerSeenAt: 0, syncConfirmedAt: 0 });
  const d1 = decide(m, obs({ now: 5999 }), T);
  t.deepEqual(d1.actions, []);
  const d2 = decide(m, obs({ now: 6000 }), T);
  t.deepEqual(d2.actions, [{ kind: 'promote' }]);
  t.is(d2.transition?.to, 'leader');
});

test('no promotion without the witness, without the lease, or when we were not synchronous', (t) => {
  const m = mem();
  t.deepEqual(decide(m, obs({ now: 10_000, witnessOk: false, leaseHeld: false }), T).actions, []);
  t.deepEqual(decide(m, obs({ now: 10_000, witnessOk: true, leaseHeld: false }), T).actions, []);
  t.deepEqual(decide(m, obs({ now: 10_000 }), { ...T, leaseWitness: false }).actions, [{ kind: 'promote' }]);
  const notSync = mem({ peerSeenAt: 5000, syncConfirmedAt: 1000 });
  const d = decide(notSync, obs({ now: 20_000 }), T);
  t.deepEqual(d.actions, []);
  t.regex(d.reason, /not its synchronous standby/);
});

test('no promotion while the leader answers on any path (agent frozen but PostgreSQL up)', (t) => {
  const out = rounds(mem(), (now) => obs({ now, peerPgOk: true, peerPgIsPrimary: true, peerPgSaysOurSyncState: 'sync' }), 30_000);
  t.deepEqual(out.filter((r) => r.kinds.includes('promote')), []);
});

test('an isolated leader fences strictly before the follower may promote', (t) => {
  // Both lose each other at t=0; the leader also loses the witness (its lease lapses).
  const leader = rounds(mem({ role: 'leader', generation: 1 }), (now) => obs({ now, pg: { up: true, inRecovery: false, lsn: '0/1' }, witnessOk: false, leaseHeld: false, vipHeld: true }), 20_000);
  const follower = rounds(mem(), (now) => obs({ now }), 20_000);
  const fenceAt = leader.find((r) => r.kinds.includes('fence'))!.at;
  const promoteAt = follower.find((r) => r.kinds.includes('promote'))!.at;
  t.true(fenceAt < promoteAt, `fence at ${fenceAt} ms, promote at ${promoteAt} ms`);
  t.true(fenceAt <= T.fenceAfter);
  t.true(promoteAt >= T.promoteAfter);
});

test('the fencing margin holds for every timing the config rules allow', (t) => {
  for (const checkInterval of [250, 500, 1000, 2000]) {
    for (let fenceAfter = 2 * checkInterval; fenceAfter <= 10_000; fenceAfter += checkInterval) {
      const promoteAfter = fenceAfter + checkInterval + 1; // the tightest valid config
      const tt = { ...T, checkInterval, fenceAfter, promoteAfter, degradeAfter: fenceAfter };
      const leader = rounds(mem({ role: 'leader' }), (now) => obs({ now, pg: { up: true, inRecovery: false }, witnessOk: false, leaseHeld: false }), 3 * promoteAfter, tt);
      const follower = rounds(mem(), (now) => obs({ now }), 3 * promoteAfter, tt);
      const fenceAt = leader.find((r) => r.kinds.includes('fence'))?.at;
      const promoteAt = follower.find((r) => r.kinds.includes('promote'))?.at;
      t.true(fenceAt !== undefined && promoteAt !== undefined && fenceAt < promoteAt, `interval ${checkInterval} fence ${fenceAfter}: ${fenceAt} vs ${promoteAt}`);
    }
  }
});

test('a leader that keeps the witness degrades (degrade policy) but never with strict, and never without the lease', (t) => {
  const leaderObs = (now: number, leaseHeld = true): Observation => obs({ now, pg: { up: true, inRecovery: false, lsn: '0/5' }, vipHeld: true, witnessOk: leaseHeld, leaseHeld });
  const degrade = rounds(mem({ role: 'leader' }), (now) => leaderObs(now), 10_000);
  t.is(degrade.find((r) => r.kinds.includes('degrade'))?.at, T.degradeAfter);
  t.false(degrade.some((r) => r.kinds.includes('fence')));
  const strict = rounds(mem({ role: 'leader' }), (now) => leaderObs(now), 10_000, { ...T, syncPolicy: 'strict' });
  t.false(strict.some((r) => r.kinds.includes('degrade')));
  const noLease = decide(remember(mem({ role: 'leader', witnessOkAt: 5000 }), leaderObs(5000, false)), leaderObs(5000, false), T);
  t.false(noLease.actions.some((a) => a.kind === 'degrade'));
});

test('sync is restored only when the standby streams and has caught up (LSN, not time)', (t) => {
  const m = mem({ role: 'leader', degraded: true, peerSeenAt: 0 });
  const behind = obs({ now: 0, vipHeld: true, peerPgOk: true, pg: { up: true, inRecovery: false, lsn: '0/5000', peerReplication: { state: 'streaming', syncState: 'async', replayLsn: '0/4000', flushLsn: '0/4000' } } });
  t.false(decide(m, behind, T).actions.some((a) => a.kind === 'restoreSync'));
  const caught = obs({ now: 0, vipHeld: true, peerPgOk: true, pg: { up: true, inRecovery: false, lsn: '0/5000', peerReplication: { state: 'streaming', syncState: 'async', replayLsn: '0/5000', flushLsn: '0/5000' } } });
  t.true(decide(m, caught, T).actions.some((a) => a.kind === 'restoreSync'));
  t.true(lsnToBigInt('1/0') > lsnToBigInt('0/FFFFFFFF'));
  t.false(caughtUp({ up: true }));
});

test('an old leader that sees a newer generation on its peer rejoins; an older one does not', (t) => {
  const m = mem({ role: 'leader', generation: 2 });
  const newer = decide(m, obs({ peerApi: { role: 'leader', generation: 3, timeline: 3 }, pg: { up: true, inRecovery: false }, vipHeld: true }), T);
  t.deepEqual(newer.actions, [{ kind: 'rejoin' }]);
  t.is(newer.transition?.to, 'follower');
  const older = decide(m, obs({ peerApi: { role: 'leader', generation: 1 }, pg: { up: true, inRecovery: false }, vipHeld: true }), T);
  t.false(older.actions.some((a) => a.kind === 'rejoin'));
});

test('a fenced node rejoins a leading peer, or unfences when its peer is still its standby', (t) => {
  const m = mem({ role: 'fenced', generation: 2 });
  t.deepEqual(decide(m, obs({ peerApi: { role: 'leader', generation: 3 }, pg: { up: false } }), T).actions, [{ kind: 'rejoin' }]);
  t.deepEqual(decide(m, obs({ peerApi: { role: 'follower', generation: 2 }, pg: { up: false } }), T).actions, [{ kind: 'unfence' }]);
  t.deepEqual(decide(m, obs({ peerApi: { role: 'follower', generation: 2 }, pg: { up: false }, witnessOk: false, leaseHeld: false }), T).actions, []);
  t.deepEqual(decide(m, obs({ pg: { up: false }, vipHeld: true }), T).actions, [{ kind: 'dropVip' }]);
});

test('a leader restarts a crashed PostgreSQL a few times, then hands over', (t) => {
  const down = obs({ pg: { up: false }, peerApi: { role: 'follower', generation: 1 }, vipHeld: true });
  t.deepEqual(decide(mem({ role: 'leader', pgRestarts: 0 }), down, T).actions, [{ kind: 'restartPostgres' }]);
  const d = decide(mem({ role: 'leader', pgRestarts: 3 }), down, T);
  t.deepEqual(d.actions, [{ kind: 'fence' }]);
  t.regex(d.transition!.reason, /failed to restart/);
});

test('a follower follows a newer timeline by rewinding, and never holds the VIP', (t) => {
  const m = mem({ role: 'follower' });
  const o = obs({ now: 1, peerApi: { role: 'leader', generation: 2, timeline: 3 }, pg: { up: true, inRecovery: true, timeline: 2, receiverStreaming: false } });
  const d = decide(remember(m, o), o, T);
  t.deepEqual(d.actions, [{ kind: 'rejoin' }]);
  const v = decide(m, obs({ peerApi: { role: 'leader', generation: 1 }, vipHeld: true }), T);
  t.deepEqual(v.actions, [{ kind: 'dropVip' }]);
});

test('witness none: the leader keeps serving (and degrades) when the peer is lost, the follower never promotes, a fenced leader takes its standby back', (t) => {
  const NONE: Timings = { ...T, leaseWitness: false, noWitness: true };
  const leader = mem({ role: 'leader', peerSeenAt: 0, witnessOkAt: 0 });
  const lostPeer = (now: number): Observation => obs({ now, witnessOk: false, leaseHeld: false, vipHeld: true, pg: { up: true, inRecovery: false, lsn: '0/3000000', timeline: 1 } });
  const acts = rounds(leader, lostPeer, 30_000, NONE);
  t.false(acts.some((a) => a.kinds.includes('fence')), JSON.stringify(acts));
  t.deepEqual(acts.find((a) => a.kinds.includes('degrade'))?.at, 5000, 'degrades to async after degradeAfter (policy degrade)');
  // The same loss with a witness that is also gone fences, as before.
  t.true(rounds(leader, lostPeer, 30_000, { ...T, leaseWitness: false }).some((a) => a.kinds.includes('fence')));
  const follower = mem({ role: 'follower', peerSeenAt: 0, syncConfirmedAt: 0 });
  t.deepEqual(decide(follower, obs({ now: 60_000, witnessOk: false, leaseHeld: false }), NONE).actions, [], 'no automatic promotion without a witness');
  const fenced = mem({ role: 'fenced', generation: 2 });
  const back = obs({ now: 1000, witnessOk: false, leaseHeld: false, peerApi: { role: 'follower', generation: 2 } as Observation['peerApi'] });
  t.is(decide(fenced, back, NONE).transition?.to, 'leader');
  t.is(decide(fenced, back, { ...T, leaseWitness: false }).transition, undefined, 'with a witness, unfencing still needs it');
});
