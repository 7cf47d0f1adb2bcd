import test, { type ExecutionContext } from 'ava';
import { recloneRefusalIsTransient } from '#builder/ops/restore.ts';
import { INIT_TIMINGS, SimCluster, type SimNode, type SimOptions, type Timings } from '#agent/sim/cluster.ts';
import { healAll, runSeed } from '#agent/sim/run.ts';
import { Rng, SimProcess, World } from '#agent/sim/world.ts';
import type { ForceResult } from '#agent/core/controller.ts';
import { longestGap } from '../harness/cluster.ts';

// The agent's real controller and the witness's real arbiter, in virtual time, against a model
// of PostgreSQL, a lossy network and crashes. Invariants are checked after every event.

const cutBoth = (c: SimCluster, a: string, b: string, up = false): void => {
  c.world.setLink(a, b, up);
  c.world.setLink(b, a, up);
};

function report(c: SimCluster): string {
  return `${c.violations.map((v) => `${(v.at / 1000).toFixed(3)}s ${v.what}`).join('; ')}\n${c.world.trace.slice(-80).join('\n')}`;
}

/** Boot a pair, run the script's faults, heal at `healAt`, and require a healthy pair within 90 s. */
async function scenario(seed: number, script: (c: SimCluster) => void, healAt: number, timings?: Partial<Timings>): Promise<SimCluster> {
  const c = new SimCluster({ seed, rewindFailure: 0, timings });
  script(c);
  c.world.at(healAt, () => healAll(c));
  await c.run(healAt);
  if (c.violations.length === 0) {
    await c.run(healAt + 90_000, () => c.healthy());
    if (!c.healthy()) c.violate('no healthy pair 90 s after the faults healed');
  }
  return c;
}

/** The longest time between two acknowledged writes within [from, to]. */
const gapWithin = (ackTimes: number[], from: number, to: number): number => longestGap(ackTimes.filter((x) => x >= from && x <= to));

const leaderOf = (c: SimCluster): SimNode | undefined => c.nodes.find((n) => n.controller?.role === 'leader' && n.pg.writable);

test('double fault: peer cut, then witness cut while clients still reach the leader: nothing lost, no failover', async (t) => {
  let promoted = false;
  const c = await scenario(11, (c) => {
    c.onPromoted = () => (promoted = true);
    c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
    c.world.at(35_000, () => cutBoth(c, 'n1', 'witness'));
  }, 80_000);
  t.deepEqual(c.violations, [], report(c));
  t.false(promoted, 'the follower was not the synchronous standby when the leader degraded: it must not promote');
  t.true(c.acked.length > 100);
});

test('isolated leader (clients still reach it): it fences before the witness hands the lease to the standby', async (t) => {
  const c = await scenario(12, (c) => {
    c.world.at(20_000, () => {
      cutBoth(c, 'n1', 'n2');
      cutBoth(c, 'n1', 'witness');
    });
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(c.witnessRecord?.holder, 'n2');
  t.true((c.witnessRecord?.generation ?? 0) >= 2);
});

test('isolated leader whose agent then freezes before its deadline: the watchdog stops it before the handover (seed 827 of the first 100,000-seed run)', async (t) => {
  const c = await scenario(21, (c) => {
    c.world.at(20_000, () => {
      for (const o of ['n2', 'witness', 'client']) cutBoth(c, 'n1', o);
    });
    // Frozen after its last renewal but before its own deadline: the guard cannot run.
    c.world.at(20_000 + INIT_TIMINGS.fenceAfter - 300, () => c.pauseAgent(c.node('n1'), 12_000));
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(c.witnessRecord?.holder, 'n2');
});

test('a leader frozen as its clean stop begins, then cut from its peer: systemd kills it at its stop timeout before the follower holds the lease', async (t) => {
  const c = await scenario(22, (c) => {
    c.world.at(20_000, () => {
      c.cleanStop(c.node('n1'), 30_000);
      // systemd runs no watchdog during a stop: only TimeoutStopSec (no EXTEND_TIMEOUT_USEC from a frozen agent) ends it.
      c.pauseAgent(c.node('n1'), 20_000);
      cutBoth(c, 'n1', 'n2');
    });
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(c.witnessRecord?.holder, 'n2');
  t.true(c.world.trace.some((l) => /n1 agent: killed at its stop timeout/.test(l)), 'the stop timeout killed the frozen agent');
});

/**
 * The follower stops seeing the leader first, and the leader loses the witness 3 s later: the
 * follower asks for the lease early, and only the lease's expiry keeps it waiting until the old
 * leader has fenced itself. Run with timings validation refuses (fenceAfter past promoteAfter),
 * the same faults give two writable primaries: the simulator sees what the timing rule is for.
 */
function peerThenWitnessCut(c: SimCluster): void {
  c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
  c.world.at(23_000, () => cutBoth(c, 'n1', 'witness'));
}

test('the leader loses its peer, then the witness 3 s later: with init timings it fences before the lease passes; with fenceAfter past promoteAfter the pair splits', async (t) => {
  const safe = await scenario(14, peerThenWitnessCut, 60_000);
  t.deepEqual(safe.violations, [], report(safe));
  t.is(safe.witnessRecord?.holder, 'n2');
  const unsafe = await scenario(14, peerThenWitnessCut, 60_000, { fenceAfter: 6000, promoteAfter: 3000, degradeAfter: 6000 });
  // The run stops at the first violation: the new leader's address comes up while it promotes,
  // so the address on both nodes is seen before both accepting writes.
  t.true(unsafe.violations.some((v) => v.what === 'the VIP is on two nodes' || v.what === 'two nodes accept writes at the same instant'), report(unsafe));
});

test('witness restart during a peer cut: the record survives, nobody else gets the lease', async (t) => {
  const c = await scenario(13, (c) => {
    c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
    c.world.at(23_000, () => c.crashWitness());
    c.world.at(25_000, () => c.startWitness());
    c.world.at(40_000, () => c.powerOff(c.node('n1'), 20_000));
  }, 90_000);
  t.deepEqual(c.violations, [], report(c));
});

test('agent restart while degraded: synchronous replication comes back after the cut heals', async (t) => {
  const c = await scenario(14, (c) => {
    c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
    c.world.at(35_000, () => c.crashAgent(c.node('n1'), 'restarted', 1000));
  }, 45_000);
  t.deepEqual(c.violations, [], report(c));
  t.true(c.healthy(), 'leader with a synchronous standby again');
});

test('follower agent restarted while it is not the synchronous standby, then leader power loss: no promotion, nothing lost', async (t) => {
  let promoted = false;
  const c = await scenario(15, (c) => {
    c.onPromoted = () => (promoted = true);
    c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
    c.world.at(35_000, () => c.crashAgent(c.node('n2'), 'restarted', 500));
    c.world.at(40_000, () => c.powerOff(c.node('n1'), 30_000));
  }, 90_000);
  t.deepEqual(c.violations, [], report(c));
  t.false(promoted);
});

/** An operator's `failover --force --accept-data-loss --to` at `at`, with the witness generation of that moment. */
function force(c: SimCluster, at: number, to: string, results: ForceResult[]): void {
  c.world.at(at, () => {
    void c.node(to).controller!.forcePromote(c.witnessRecord!.generation).then((r) => results.push(r));
  });
}

test('forced failover: the leader degraded, then lost power; a force is refused while its lease lives, forces the standby after; the writes only the old leader had are the ones lost; it returns, is refused its old lease and rejoins', async (t) => {
  const results: ForceResult[] = [];
  let promoted = 0;
  let cutAt = 0;
  const c = await scenario(17, (c) => {
    c.onPromoted = () => promoted++;
    c.world.at(20_000, () => {
      cutBoth(c, 'n1', 'n2');
      cutAt = c.acked.length;
    });
    c.world.at(30_000, () => {
      c.powerOff(c.node('n1'), 40_000);
      cutBoth(c, 'n1', 'n2', true);
    });
    force(c, 31_000, 'n2', results);
    force(c, 45_000, 'n2', results);
  }, 90_000);
  t.deepEqual(c.violations, [], report(c));
  t.like(results[0], { ok: false, forced: false });
  t.regex(results[0]!.reason, /holds the lease for \d+ ms more: it may still be writing/);
  t.like(results[1], { ok: true, forced: true, generation: 3 });
  t.is(promoted, 1);
  t.is(c.witnessRecord?.holder, 'n2');
  // What n2 lacks is exactly what n1 acknowledged while degraded: sent after the cut, before the power loss.
  const n2 = c.node('n2');
  const lost = c.acked.filter((id) => !n2.pg.ids.has(id));
  t.true(lost.length > 0, 'the degraded leader acknowledged writes the standby never saw');
  t.true(lost.every((id) => c.acked.indexOf(id) >= cutAt - 50), 'nothing acknowledged well before the cut is lost');
  t.true(c.healthy(), 'n1 rejoined as the synchronous standby');
});

test('forced failover while the leader, cut from its standby only, still renews its lease: the witness refuses, nothing is promoted, nothing lost', async (t) => {
  const results: ForceResult[] = [];
  let promoted = 0;
  const c = await scenario(18, (c) => {
    c.onPromoted = () => promoted++;
    c.world.at(20_000, () => cutBoth(c, 'n1', 'n2'));
    force(c, 35_000, 'n2', results);
    force(c, 50_000, 'n2', results);
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(results.length, 2);
  for (const r of results) {
    t.like(r, { ok: false, forced: false });
    t.regex(r.reason, /holds the lease for \d+ ms more: it may still be writing/);
  }
  t.is(promoted, 0);
  t.is(c.witnessRecord?.holder, 'n1');
});

test('the leader\'s agent restarts while its packets to the witness are dropped: it does not claim "leader" from hostmeta, so the follower takes over during the cut', async (t) => {
  let promotedAt: number | undefined;
  const c = await scenario(19, (c) => {
    c.onPromoted = () => (promotedAt ??= c.world.now);
    c.world.at(20_000, () => c.world.setLink('n1', 'witness', false));
    // The watchdog's kill (the agent stops pinging before its deadline), then systemd's restart.
    c.world.at(22_500, () => c.crashAgent(c.node('n1'), 'killed by the watchdog', 2000));
  }, 80_000);
  t.deepEqual(c.violations, [], report(c));
  t.true(promotedAt !== undefined && promotedAt < 80_000, `the follower took over before the cut healed (promoted at ${promotedAt})`);
  t.is(c.witnessRecord?.holder, 'n2');
});

test('crash right after promotion, then the old leader returns: one primary, old leader rejoined in place', async (t) => {
  const c = await scenario(16, (c) => {
    c.world.at(20_000, () => c.powerOff(c.node('n1'), 30_000));
    c.onPromoted = (n) => {
      c.onPromoted = undefined;
      c.crashAgent(n, 'killed between promotion and its state write', 2000);
    };
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(leaderOf(c)?.name, 'n2');
  // Follow or pg_rewind depends on whether a write was in flight at the power loss (which the
  // timings move); a re-clone would mean the rejoin lost its way.
  t.is(c.node('n1').rejoins.length, 1, c.node('n1').rejoins.join(', '));
  t.regex(c.node('n1').rejoins[0] ?? '', /^(follow|pg_rewind)$/);
});

test('the round a node publishes after its promotion shows its PostgreSQL promoted, not the standby it observed before (what /v1/status and geminik8s status read)', async (t) => {
  const firstAsLeader: { inRecovery?: boolean; at: number }[] = [];
  const c = await scenario(16, (c) => {
    c.onRound = (n, o) => {
      if (n.name === 'n2' && n.controller?.role === 'leader' && firstAsLeader.length === 0) firstAsLeader.push({ inRecovery: o.pg.inRecovery, at: c.world.now });
    };
    c.world.at(20_000, () => c.powerOff(c.node('n1'), 30_000));
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(leaderOf(c)?.name, 'n2');
  t.is(firstAsLeader.length, 1, 'n2 published a round as leader');
  t.false(firstAsLeader[0]!.inRecovery, `the first round n2 published as leader (at ${firstAsLeader[0]!.at} ms) shows a primary`);
});

test('old leader with nothing the standby lacks rejoins by following it as it is; one with WAL the standby never got, through pg_rewind', async (t) => {
  // The client cut off from the leader 2 s before its power loss: no write in flight, the
  // standby flushed all of the leader's WAL, which is then a prefix of the new leader's.
  const quiet = await scenario(16, (c) => {
    c.world.at(18_000, () => c.world.setLink('client', 'n1', false));
    c.world.at(20_000, () => c.powerOff(c.node('n1'), 30_000));
  }, 60_000);
  t.deepEqual(quiet.violations, [], report(quiet));
  t.is(leaderOf(quiet)?.name, 'n2');
  t.deepEqual(quiet.node('n1').rejoins, ['follow'], 'the old leader followed the new one without pg_rewind');
  // The standby cut off from the leader while the client still writes to it: those writes wait
  // for a synchronous standby that never gets them, but they are in the leader's WAL.
  const diverged = await scenario(16, (c) => {
    c.world.at(18_000, () => {
      c.world.setLink('n1', 'n2', false);
      c.world.setLink('n2', 'n1', false);
    });
    c.world.at(20_000, () => c.powerOff(c.node('n1'), 30_000));
    c.world.at(45_000, () => healAll(c));
  }, 60_000);
  t.deepEqual(diverged.violations, [], report(diverged));
  t.is(leaderOf(diverged)?.name, 'n2');
  t.deepEqual(diverged.node('n1').rejoins, ['pg_rewind'], 'the old leader had WAL the new one never got: rewound');
  t.is(diverged.node('n1').pg.followRefused + quiet.node('n1').pg.followRefused, 0);
});

test('Kine and K3s cannot be restarted after a promotion (their units missing): the agent says so, and the promotion, the VIP and the writes stand', async (t) => {
  const c = new SimCluster({ seed: 16, rewindFailure: 0, kubeFails: true });
  c.world.at(20_000, () => c.powerOff(c.node('n1'), 30_000));
  c.world.at(60_000, () => healAll(c));
  await c.run(60_000);
  await c.run(150_000, () => c.healthy());
  t.deepEqual(c.violations, [], report(c));
  t.true(c.healthy(), 'a healthy pair after the old leader returned');
  const n2 = c.node('n2');
  t.is(leaderOf(c)?.name, 'n2');
  t.true(n2.vip);
  t.is(n2.kubeRestarts, 1, 'one restart, after the promotion');
  t.deepEqual(n2.kubeRestartFailures, ['could not restart Kine and K3s after the promotion: Failed to restart kine.service: Unit kine.service not found.']);
});

test('a standby that stops acknowledging WAL while its agent answers: writes stall at most degradeAfter plus detection', async (t) => {
  const c = await scenario(17, (c) => {
    c.world.at(20_000, () => (c.node('n2').pg.receiverStalled = true));
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  const gap = gapWithin(c.ackTimes, 15_000, 60_000);
  t.log(`longest gap between acknowledged writes: ${(gap / 1000).toFixed(1)} s`);
  t.true(gap <= c.settings.degradeAfter + 2 * c.settings.checkInterval + 1000, `gap ${gap} ms`);
});

test('a follower\'s clean reboot: it tells the leader, which turns synchronous commit off before the standby goes; no commit waits for it, and sync comes back after', async (t) => {
  const gaps: Record<string, number> = {};
  for (const noLeave of [false, true]) {
    const c = new SimCluster({ seed: 21, rewindFailure: 0, noLeave });
    await c.run(20_000, () => c.healthy());
    t.true(c.healthy(), 'a healthy pair first');
    const follower = c.nodes.find((n) => n.controller?.role === 'follower')!;
    const stoppedAt = c.world.now;
    // PostgreSQL takes 3 s to stop: the leader must not turn synchronous commit on again meanwhile.
    c.cleanStop(follower, 15_000, 3000);
    await c.run(stoppedAt + 30_000);
    await c.run(stoppedAt + 120_000, () => c.healthy());
    t.deepEqual(c.violations, [], report(c));
    t.true(c.healthy(), `synchronous again after the reboot${noLeave ? ' (no leave)' : ''}`);
    gaps[noLeave ? 'without' : 'with'] = gapWithin(c.ackTimes, stoppedAt - 1000, stoppedAt + 30_000);
  }
  t.log(`longest gap between acknowledged writes around the reboot: ${(gaps.with! / 1000).toFixed(1)} s with the leave, ${(gaps.without! / 1000).toFixed(1)} s without`);
  // Without the leave commits wait until the leader degrades (degradeAfter); with it they never wait for the stopping standby.
  t.true(gaps.without! >= INIT_TIMINGS.degradeAfter - 1000, `without: ${gaps.without}`);
  t.true(gaps.with! < 2000, `with: ${gaps.with}`);
});

test('a leader\'s clean reboot: it hands over to its synchronous standby before it stops; writes pause for the switchover, not for the lease', async (t) => {
  const gaps: Record<string, number> = {};
  const leaders: Record<string, string> = {};
  for (const noLeave of [false, true]) {
    const c = new SimCluster({ seed: 23, rewindFailure: 0, noLeave });
    await c.run(20_000, () => c.healthy());
    t.true(c.healthy(), 'a healthy pair first');
    const leader = leaderOf(c)!;
    const stoppedAt = c.world.now;
    c.cleanStop(leader, 15_000);
    await c.run(stoppedAt + 30_000);
    leaders[noLeave ? 'without' : 'with'] = `${leader.name} -> ${leaderOf(c)?.name}`;
    await c.run(stoppedAt + 120_000, () => c.healthy());
    t.deepEqual(c.violations, [], report(c));
    t.true(c.healthy(), `synchronous again after the reboot${noLeave ? ' (no handover)' : ''}`);
    gaps[noLeave ? 'without' : 'with'] = gapWithin(c.ackTimes, stoppedAt - 1000, stoppedAt + 30_000);
  }
  t.log(`longest gap between acknowledged writes around the leader's reboot: ${(gaps.with! / 1000).toFixed(1)} s with the handover (${leaders.with}), ${(gaps.without! / 1000).toFixed(1)} s without (${leaders.without})`);
  // Without it the follower takes over only once the old lease has run out (fenceAfter and more).
  t.true(gaps.without! >= INIT_TIMINGS.fenceAfter, `without: ${gaps.without}`);
  t.true(gaps.with! < 3000, `with: ${gaps.with}`);
});

test('a leave is refused by a follower, from a standby of a newer generation, and under syncPolicy strict; it changes nothing then', async (t) => {
  const c = new SimCluster({ seed: 22, rewindFailure: 0 });
  await c.run(20_000, () => c.healthy());
  const leader = leaderOf(c)!;
  const follower = c.other(leader);
  const gen = leader.controller!.generation;
  const answers: { ok: boolean; reason: string }[] = [];
  c.world.at(c.world.now + 10, () => {
    void follower.controller!.standbyLeaving({ generation: gen }).then((r) => answers.push(r));
    void leader.controller!.standbyLeaving({ generation: gen + 1 }).then((r) => answers.push(r));
  });
  await c.run(c.world.now + 5000);
  t.is(answers.length, 2);
  t.regex(answers.map((a) => a.reason).join(' | '), /not a leader holding its lease/);
  t.regex(answers.map((a) => a.reason).join(' | '), /newer than ours/);
  t.false(answers.some((a) => a.ok));
  t.true(c.healthy(), 'still synchronous');
  const strict = new SimCluster({ seed: 23, rewindFailure: 0, syncPolicy: 'strict' });
  await strict.run(20_000, () => strict.healthy());
  const sl = leaderOf(strict)!;
  let answer: { ok: boolean; reason: string } | undefined;
  strict.world.at(strict.world.now + 10, () => void sl.controller!.standbyLeaving({ generation: sl.controller!.generation }).then((r) => (answer = r)));
  await strict.run(strict.world.now + 5000);
  t.false(answer?.ok);
  t.regex(answer?.reason ?? '', /strict/);
});

test('planned switchover hands over; a switchover whose peer hangs ends with exactly one writable primary', async (t) => {
  const ok = await scenario(18, (c) => {
    c.world.at(20_000, () => void c.node('n1').controller!.switchover());
  }, 40_000);
  t.deepEqual(ok.violations, [], report(ok));
  t.is(leaderOf(ok)?.name, 'n2');
  const hung = await scenario(19, (c) => {
    c.world.at(20_000, () => {
      void c.node('n1').controller!.switchover();
      c.pauseAgent(c.node('n2'), 3000);
    });
  }, 80_000);
  t.deepEqual(hung.violations, [], report(hung));
  t.truthy(leaderOf(hung));
});

/**
 * A healthy pair from `opts`, then one planned switchover asked of its leader: it must succeed
 * with no violation. Returns where each pattern first appears in the trace from the request on.
 */
async function switchoverOrder<K extends string>(t: ExecutionContext, opts: SimOptions, label: string, marks: Record<K, RegExp>): Promise<Record<K, number>> {
  const c = new SimCluster(opts);
  await c.run(20_000, () => c.healthy());
  t.true(c.healthy(), `${label}: a healthy pair first`);
  const from = c.world.trace.length;
  let answer: { ok: boolean } | undefined;
  c.world.at(c.world.now + 10, () => void leaderOf(c)!.controller!.switchover().then((r) => (answer = r)));
  await c.run(c.world.now + 20_000, () => answer !== undefined);
  t.true(answer?.ok, `${label}: ${JSON.stringify(answer)}`);
  t.deepEqual(c.violations, [], report(c));
  const lines = c.world.trace.slice(from);
  return Object.fromEntries(Object.entries<RegExp>(marks).map(([k, re]) => [k, lines.findIndex((l) => re.test(l))])) as Record<K, number>;
}

test('a switchover\'s old leader drops its address while its server stops when a drop refuses connections, and only after it stopped when not', async (t) => {
  const order = (refusesAfterDrop: boolean) =>
    switchoverOrder(t, { seed: 33, rewindFailure: 0, refusesAfterDrop }, `refusesAfterDrop ${refusesAfterDrop}`, { dropped: /n1: VIP dropped/, stopped: /n1 pg: stopped \(clean shutdown\)/, promoted: /n2 pg: promoted/ });
  // The model's clean stop takes 50-400 ms, a drop 1-20 ms: begun together, the drop ends first.
  const refusing = await order(true);
  t.true(refusing.dropped >= 0 && refusing.dropped < refusing.stopped && refusing.stopped < refusing.promoted, JSON.stringify(refusing));
  const plain = await order(false);
  t.true(plain.stopped >= 0 && plain.stopped < plain.dropped && plain.dropped < plain.promoted, JSON.stringify(plain));
});

/** A sim cluster of `seed` run until its pair is healthy: the cluster, its leader and the standby's name. */
async function healthyPair(t: ExecutionContext, seed: number) {
  const c = new SimCluster({ seed, rewindFailure: 0 });
  await c.run(20_000, () => c.healthy());
  t.true(c.healthy(), 'a healthy pair first');
  const leader = leaderOf(c)!;
  return { c, leader, standby: leader.name === 'n1' ? 'n2' : 'n1' };
}

/** A planned switchover asked of `leader` in `inMs`, which must succeed with no violation: the trace from the request on, and when it was asked (s). */
async function switchoverNow(t: ExecutionContext, c: SimCluster, leader: SimNode, inMs: number) {
  const from = c.world.trace.length;
  const askedAt = c.world.now / 1000;
  let answer: { ok: boolean; reason: string } | undefined;
  c.world.at(c.world.now + inMs, () => void leader.controller!.switchover().then((r) => (answer = r)));
  await c.run(c.world.now + 20_000, () => answer !== undefined);
  t.deepEqual(c.violations, [], report(c));
  t.true(answer?.ok, JSON.stringify(answer));
  return { lines: c.world.trace.slice(from), askedAt };
}

test('a switchover\'s promote request travels beside the release: a standby that still finds the lease held by the leader asking asks the witness again', async (t) => {
  const { c, leader, standby } = await healthyPair(t, 34);
  // The leader's requests reach the witness 150 ms late: its release lands after the standby's first ask.
  c.world.setLinkQuality(leader.name, 'witness', 0, 150, 160);
  const { lines } = await switchoverNow(t, c, leader, 10);
  const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const held = at(new RegExp(`witness: acquire ${standby} -> held`));
  const released = at(new RegExp(`witness: release ${leader.name} -> released`));
  const granted = at(new RegExp(`witness: acquire ${standby} -> granted`));
  t.true(held >= 0 && held < released && released < granted, `held ${held}, released ${released}, granted ${granted}:\n${lines.join('\n')}`);
  t.is(leaderOf(c)?.name, standby);
});

test('a switchover asked while a renewal is in flight: the release names the lease that renewal got, so the witness takes it (not stale) and the peer is granted at once', async (t) => {
  const { c, leader, standby } = await healthyPair(t, 35);
  // The witness's answers reach the leader 650 ms late (within its 800 ms timeout): a renewal
  // granted now is still unanswered when the switchover drops the lease a few hundred ms later.
  c.world.setLinkQuality('witness', leader.name, 0, 650, 660);
  // Renewals are not in the witness's audit trail: wait for the lease keeper's own flag (the
  // controller's private state), set while a renewal is out.
  const renewing = (): boolean => (leader.controller as unknown as { renewing: boolean }).renewing;
  await c.run(c.world.now + 10_000, () => !renewing());
  await c.run(c.world.now + 10_000, renewing);
  t.true(renewing(), 'a renewal is out');
  const { lines, askedAt } = await switchoverNow(t, c, leader, 1);
  const release = lines.find((l) => l.includes(`witness: release ${leader.name} `));
  t.regex(release ?? '(no release)', / -> released /, lines.join('\n'));
  // Granted on the release, not after the lease ran out (2.5 s after the last renewal).
  const granted = lines.find((l) => l.includes(`witness: acquire ${standby} -> granted`));
  const seconds = (l: string | undefined): number => Number(/^\s*([\d.]+)s /.exec(l ?? '')?.[1] ?? NaN);
  t.true(seconds(granted) - askedAt < 1.5, `asked at ${askedAt.toFixed(3)} s:\n${lines.join('\n')}`);
  t.is(leaderOf(c)?.name, standby);
});

test('a switchover\'s new leader: under degrade its address comes up while it promotes; under strict only after its standby is named', async (t) => {
  const order = (syncPolicy: 'degrade' | 'strict') =>
    switchoverOrder(t, { seed: 31, rewindFailure: 0, syncPolicy }, syncPolicy, { vip: /n2: VIP taken/, promoted: /n2 pg: promoted/, named: /n2 pg: synchronous_standby_names='"n1"'/ });
  const degrade = await order('degrade');
  t.true(degrade.vip >= 0 && degrade.vip < degrade.promoted, JSON.stringify(degrade));
  const strict = await order('strict');
  t.true(strict.named >= 0 && strict.promoted < strict.named && strict.named < strict.vip, JSON.stringify(strict));
});

test('a VIP that cannot be taken while a switchover promotes: the promotion and its records stand, and the control loop takes the VIP after', async (t) => {
  const c = new SimCluster({ seed: 32, rewindFailure: 0, vipTakeFailures: 2 });
  // Each node's first two takes fail: n1's at its bootstrap (the loop retakes it), n2's both at the
  // switchover (the one while it promotes and the one after), so the loop's takeVip rule is what
  // brings n2's address up.
  await c.run(30_000, () => c.healthy());
  t.true(c.healthy(), 'a healthy pair first');
  const from = c.world.trace.length;
  let answer: { ok: boolean; reason: string } | undefined;
  c.world.at(c.world.now + 10, () => void leaderOf(c)!.controller!.switchover().then((r) => (answer = r)));
  await c.run(c.world.now + 30_000, () => answer !== undefined && c.healthy());
  t.deepEqual(c.violations, [], report(c));
  t.true(answer?.ok, JSON.stringify(answer));
  const lines = c.world.trace.slice(from);
  const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const failed = at(/n2: VIP take failed/);
  t.true(failed >= 0, `n2's take failed first:\n${lines.join('\n')}`);
  t.true(at(/n2 agent: promoted/) > failed, 'the promotion was recorded after the failed take');
  t.true(at(/n2: VIP taken/) > failed, 'the VIP was taken after all');
  t.is(leaderOf(c)?.name, 'n2');
  t.true(c.node('n2').vip);
});

test('a switchover to a standby whose replay stands still (it still flushes and acknowledges) is called off: the leader writes again, nothing lost; once replay moves, it hands over', async (t) => {
  const answers: { at: number; ok: boolean; reason: string }[] = [];
  const c = await scenario(21, (c) => {
    const ask = (): void => void c.node('n1').controller!.switchover().then((r) => answers.push({ at: c.world.now, ...r }));
    c.world.at(20_000, () => (c.node('n2').pg.replayStalled = true));
    c.world.at(21_000, ask);
    c.world.at(40_000, () => (c.node('n2').pg.replayStalled = false));
    c.world.at(45_000, ask);
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(answers.length, 2, JSON.stringify(answers));
  t.false(answers[0]!.ok, JSON.stringify(answers[0]));
  t.true(answers[0]!.at < 40_000, 'called off while replay still stood still');
  // Called off before the old leader's server stops: a catch-up on the flush alone would stop it,
  // then find the peer unable to promote and start it again (a longer pause; seen under QEMU too).
  t.regex(answers[0]!.reason, /did not catch up/);
  const stopped = c.world.trace.filter((l) => / n1 pg: stopped/.test(l) && Number(l.trim().split('s ')[0]) < 40);
  t.deepEqual(stopped, [], 'n1 stopped its server while the peer could not take over');
  // The write pause of the called-off switchover is bounded: the leader did not wait for the stall to end.
  const gap = gapWithin(c.ackTimes, 20_000, 39_000);
  t.true(gap < 12_000, `longest write gap ${gap} ms while replay stood still`);
  t.true(answers[1]!.ok, JSON.stringify(answers[1]));
  t.is(leaderOf(c)?.name, 'n2');
  t.log(`called off: ${answers[0]!.reason}; write gap ${(gap / 1000).toFixed(1)} s`);
});

test('two switchover requests at once: one hands over, the other is refused while it runs', async (t) => {
  const answers: { ok: boolean; reason: string }[] = [];
  const c = await scenario(20, (c) => {
    c.world.at(20_000, () => {
      for (let i = 0; i < 2; i++) void c.node('n1').controller!.switchover().then((r) => answers.push(r));
    });
  }, 40_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(leaderOf(c)?.name, 'n2');
  t.is(answers.filter((a) => a.ok).length, 1, JSON.stringify(answers));
  t.regex(answers.find((a) => !a.ok)?.reason ?? '', /in progress/);
});

test('seeds of the 100,000-seed runs that found holes replay clean', async (t) => {
  // 63622: a server start in flight at power loss completed without its node (simulator
  // fidelity), and was writable beside the promoted peer. 64300: PostgreSQL crashed while a
  // restarted leader waited for it to start; the failed start left the agent dead for good
  // (now: the loop handles it, and a failed agent start exits for systemd to restart it).
  // 1299: a failed switchover whose server then did not start threw out of switchover(): an
  // unhandled rejection, which ends the agent process (the simulator now counts those).
  for (const seed of [63622, 64300, 1299]) {
    const r = await runSeed(seed, 3);
    t.deepEqual(r.violations.map((v) => v.what), [], `seed ${seed} (replay: npm run sim -- --seed ${seed} --trace)`);
  }
});

test('1,000 random seeds: no violation of any invariant, and the watchdog kills only frozen agents', async (t) => {
  t.timeout(900_000);
  const failed: string[] = [];
  const needless: string[] = [];
  for (let seed = 1; seed <= 1000; seed++) {
    const r = await runSeed(seed, 3);
    if (r.violations.length > 0) failed.push(`seed ${seed}: ${r.violations.map((v) => v.what).join('; ')} (replay: npm run sim -- --seed ${seed} --minutes 3 --trace)`);
    if (r.needlessKills > 0) needless.push(`seed ${seed}`);
  }
  t.deepEqual(failed, []);
  t.deepEqual(needless, [], 'agents killed by the watchdog although their timers ran');
});

test('a leader with a lossy link to the witness fences itself by its deadline, again and again, and is never killed by the watchdog for the silence before a fence', async (t) => {
  // Two minutes of 60 % loss both ways between the leader and the witness: renewals lost, re-sent
  // and granted at shifting phases, so where the last ping falls before each silence varies.
  // Without the guard's last ping before the silence, 4 of these 4 seeds had a needless kill.
  let fences = 0;
  for (let seed = 1; seed <= 4; seed++) {
    const c = new SimCluster({ seed, rewindFailure: 0 });
    c.world.at(20_000, () => {
      c.world.setLinkQuality('n1', 'witness', 0.6, 1, 300);
      c.world.setLinkQuality('witness', 'n1', 0.6, 1, 300);
    });
    c.world.at(140_000, () => healAll(c));
    await c.run(150_000);
    t.deepEqual(c.violations, [], report(c));
    t.deepEqual(c.needlessKills, [], `seed ${seed}\n${report(c)}`);
    fences += c.world.trace.filter((l) => l.includes('agent: role leader -> fenced')).length;
  }
  t.true(fences >= 10, `${fences} fences`);
});

test('a promote request with a generation older than the follower\'s is refused as stale, before the witness is asked, and changes nothing', async (t) => {
  const answers: { ok: boolean; reason: string }[] = [];
  const c = await scenario(23, (c) => {
    c.world.at(20_000, () => {
      const follower = c.nodes.find((n) => n.controller?.role === 'follower')!;
      const generation = follower.controller!.meta.generation;
      void follower.controller!.promoteOnRequest({ lsn: 0n, generation: generation - 1 }).then((r) => answers.push(r));
    });
  }, 30_000);
  t.deepEqual(c.violations, [], report(c));
  t.is(answers.length, 1);
  t.false(answers[0]!.ok);
  t.regex(answers[0]!.reason, /^stale generation \d+: this node is at generation \d+$/);
  t.is(leaderOf(c)?.name, 'n1', 'the leader did not change');
});

test('an operator operation on the leader (a restore): promotion forbidden at the witness first, PostgreSQL stopped for 20 s under the held loop; no failover, a second operation refused, a healthy pair after', async (t) => {
  let promoted = false;
  const answers: unknown[] = [];
  const c = await scenario(24, (c) => {
    c.onPromoted = () => (promoted = true);
    c.world.at(20_000, () => {
      const ctl = c.node('n1').controller!;
      void ctl.exclusive('restore', ['leader'], async () => {
        answers.push(['forbidden', (await ctl.forbidPromotion()).ok]);
        answers.push(['promotable at the witness', c.witnessRecord?.promotable ?? null]);
        await ctl.ports.pg.stop();
        await ctl.ports.clock.sleep(20_000);
        await ctl.ports.pg.start();
        return 'done';
      }).then((r) => answers.push(['first', r.ok]));
      void ctl.exclusive('re-clone', ['leader'], async () => 'ran').then((r) => answers.push(['second', r.ok ? 'ran' : r.reason]));
      void c.node('n2').controller!.exclusive('re-clone', ['leader'], async () => 'ran').then((r) => answers.push(['on the follower', r.ok ? 'ran' : r.reason]));
    });
    // Held off, the loop does not start the server behind the operation's back.
    c.world.at(35_000, () => answers.push(['running mid-operation', c.node('n1').pg.running]));
  }, 60_000);
  t.deepEqual(c.violations, [], report(c));
  t.false(promoted, 'the follower was not promoted while the leader\'s PostgreSQL was down under a held lease');
  t.is(leaderOf(c)?.name, 'n1');
  t.deepEqual(answers, [
    ['second', 'busy: a switchover, a fence or another operation runs'],
    ['on the follower', 'this node is the follower; a re-clone runs on the leader'],
    ['forbidden', true],
    ['promotable at the witness', null],
    ['running mid-operation', false],
    ['first', true],
  ]);
  // The refusals as the agent words them: `geminik8s restore` asks a busy node again, not one in the wrong role for good.
  const said = (what: string): string => String((answers as [string, unknown][]).find(([k]) => k === what)![1]);
  t.true(recloneRefusalIsTransient(said('second')));
  t.false(recloneRefusalIsTransient(said('on the follower')));
});

test('geminik8s restore asks again for a re-clone the follower refused while it rejoined by itself (fenced or init), not one refused for good', (t) => {
  t.true(recloneRefusalIsTransient('this node is the fenced; a re-clone runs on the follower'));
  t.true(recloneRefusalIsTransient('this node is the init; a re-clone runs on the follower'));
  t.false(recloneRefusalIsTransient('this node is the leader; a re-clone runs on the follower'));
  t.false(recloneRefusalIsTransient('no space left on device'));
});

test('simulated network: a lingering request the link loses still arrives after the caller gave up; a torn-down one never does', async (t) => {
  const w = new World(new Rng(7));
  const a = new SimProcess('a');
  const b = new SimProcess('b');
  w.setLinkQuality('a', 'b', 1, 1, 5); // every packet from a to b lost
  const handled: number[] = [];
  const outcomes: string[] = [];
  for (const linger of [0, 10_000]) {
    w.rpc(a, b, 800, async () => handled.push(w.now), linger).then(() => outcomes.push('answered'), () => outcomes.push(`timed out at ${w.now}`));
  }
  while (w.step(60_000)) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
  t.deepEqual(outcomes, ['timed out at 800', 'timed out at 800']);
  t.is(handled.length, 1, 'only the lingering request reached b');
  t.true(handled[0]! >= 400 && handled[0]! <= 10_800, `it arrived within the linger: ${handled[0]} ms`);
});
