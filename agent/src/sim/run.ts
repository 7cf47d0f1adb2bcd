import { SimCluster, type SimNode, type Timings } from './cluster.ts';

/** The outcome of one seed. */
export interface SeedResult {
  seed: number;
  violations: { at: number; what: string }[];
  trace: string[];
  acked: number;
  events: number;
  faults: number;
  /** Virtual ms from the last heal to a healthy pair (undefined if it never got there). */
  recoveryMs?: number;
  /** Watchdog kills of an agent that was not frozen. */
  needlessKills: number;
}

const ENDPOINTS = ['n1', 'n2', 'witness', 'client'] as const;

/** Heal every fault: links up and clean, processes running, disks writable. */
export function healAll(c: SimCluster): void {
  const w = c.world;
  for (const a of ENDPOINTS) for (const b of ENDPOINTS) if (a !== b) {
    w.setLink(a, b, true);
    w.setLinkQuality(a, b, 0, 0.5, 5);
  }
  for (const n of c.nodes) {
    n.diskFull = false;
    n.pg.receiverStalled = false;
    n.pg.replayStalled = false;
    if (!n.proc.alive) c.startAgent(n);
    n.proc.pausedUntil = 0;
  }
  c.witnessDiskFull = false;
  if (!c.witnessProc.alive) c.startWitness();
  w.log('--- all faults healed ---');
}

/**
 * An operator runs `failover --force --accept-data-loss --to node`: with the witness generation it
 * last read (none when the witness is down), through that node's agent.
 */
function operatorForce(c: SimCluster, node: SimNode): void {
  const generation = c.witness ? c.witnessRecord?.generation : undefined;
  if (generation === undefined || !node.controller || !node.proc.alive) {
    c.world.log(`operator: force to ${node.name} not sent (${generation === undefined ? 'the witness does not answer' : 'its agent is down'})`);
    return;
  }
  void node.controller.forcePromote(generation).then(
    (r) => c.world.log(`operator: force to ${node.name} at generation ${generation}: ${r.ok ? `ok, generation ${r.generation}` : 'refused'}${r.forced ? ' (forced)' : ''}: ${r.reason}`),
    (err: Error) => c.world.log(`operator: force to ${node.name} threw: ${err.message}`),
  );
}

/** One random fault, healed by itself after a while. */
function injectRandomFault(c: SimCluster): string {
  const { rng, world: w } = c;
  const node = rng.pick(c.nodes);
  const dur = rng.between(500, 30_000);
  const later = (ms: number, fn: () => void): void => w.at(w.now + ms, fn);
  const kind = rng.int(0, 17);
  switch (kind) {
    case 0:
    case 1: {
      const a = rng.pick(ENDPOINTS);
      const b = rng.pick(ENDPOINTS.filter((x) => x !== a));
      const both = rng.chance(0.5);
      w.setLink(a, b, false);
      if (both) w.setLink(b, a, false);
      later(dur, () => {
        w.setLink(a, b, true);
        w.setLink(b, a, true);
      });
      return `cut ${a}${both ? '<' : ''}->${b} for ${dur.toFixed(0)} ms`;
    }
    case 2: {
      for (const o of ENDPOINTS) if (o !== node.name) {
        w.setLink(node.name, o, false);
        w.setLink(o, node.name, false);
      }
      later(dur, () => {
        for (const o of ENDPOINTS) if (o !== node.name) {
          w.setLink(node.name, o, true);
          w.setLink(o, node.name, true);
        }
      });
      return `isolate ${node.name} for ${dur.toFixed(0)} ms`;
    }
    case 3:
      c.crashAgent(node, 'crashed', rng.between(200, 10_000));
      return `crash agent ${node.name}`;
    case 4: {
      const ms = rng.between(500, 15_000);
      c.pauseAgent(node, ms);
      return `pause agent ${node.name} ${ms.toFixed(0)} ms`;
    }
    case 5:
      node.pg.halt('crashed');
      return `crash postgres ${node.name}`;
    case 6:
      c.crashWitness();
      later(rng.between(500, 20_000), () => c.startWitness());
      return 'crash witness';
    case 7:
      c.powerOff(node, rng.between(3000, 40_000));
      return `power loss ${node.name}`;
    case 8:
      node.diskFull = true;
      later(dur, () => (node.diskFull = false));
      return `disk full ${node.name}`;
    case 9:
      c.witnessDiskFull = true;
      later(dur, () => (c.witnessDiskFull = false));
      return 'witness disk full';
    case 10:
      node.pg.receiverStalled = true;
      later(dur, () => (node.pg.receiverStalled = false));
      return `WAL receiver of ${node.name} stalls`;
    case 11: {
      const a = rng.pick(ENDPOINTS);
      const b = rng.pick(ENDPOINTS.filter((x) => x !== a));
      w.setLinkQuality(a, b, rng.between(0.1, 0.7), 1, rng.between(10, 900));
      later(dur, () => w.setLinkQuality(a, b, 0, 0.5, 5));
      return `lossy ${a}->${b}`;
    }
    case 12: {
      const leader = c.nodes.find((n) => n.controller?.role === 'leader');
      if (leader?.controller) void leader.controller.switchover().then(
        (r) => w.log(`switchover on ${leader.name}: ${r.ok ? 'ok' : 'failed'}: ${r.reason}`),
        (err: Error) => w.log(`switchover on ${leader.name} threw: ${err.message}`),
      );
      return 'switchover';
    }
    case 13:
      operatorForce(c, node);
      return `operator: failover --force --to ${node.name}`;
    case 14: {
      // The case --force exists for: the leader degraded (its standby cut off, so nobody is
      // promotable) and then died. Its writes since the cut are on it alone.
      const leader = c.nodes.find((n) => n.controller?.role === 'leader') ?? node;
      const target = c.other(leader);
      const cut = (up: boolean): void => {
        w.setLink(leader.name, target.name, up);
        w.setLink(target.name, leader.name, up);
      };
      cut(false);
      const degraded = c.settings.degradeAfter + rng.between(0, 10_000);
      const off = rng.between(3000, 60_000);
      later(degraded, () => {
        c.powerOff(leader, off);
        cut(true);
      });
      later(degraded + rng.between(0, off), () => operatorForce(c, target));
      return `cut ${leader.name}<->${target.name} for ${degraded.toFixed(0)} ms, then power loss of ${leader.name} for ${off.toFixed(0)} ms, and an operator forces ${target.name}`;
    }
    case 15: {
      // Now and then PostgreSQL stops beside the agent rather than after it (units without the ordering).
      const pgStopsAfter = rng.chance(0.25) ? rng.between(0, 3000) : undefined;
      c.cleanStop(node, rng.between(3000, 40_000), pgStopsAfter);
      return `clean stop (reboot) of ${node.name}${pgStopsAfter === undefined ? '' : `, PostgreSQL stopping beside the agent after ${pgStopsAfter.toFixed(0)} ms`}`;
    }
    case 16:
      // The standby keeps receiving and acknowledging but stops replaying (a recovery conflict,
      // the startup process stopped): a switchover must not wait on it forever, a promotion fails.
      node.pg.replayStalled = true;
      later(dur, () => (node.pg.replayStalled = false));
      return `replay of ${node.name} stalls`;
    default: {
      // A crash of the new leader right after its promotion, before anything else.
      c.onPromoted = (n: SimNode) => {
        c.onPromoted = undefined;
        c.crashAgent(n, 'crashed right after promotion', rng.between(200, 5000));
      };
      return 'arm: crash right after the next promotion';
    }
  }
}

/** Run one seed: boot, random faults, heal, then check the pair recovers within a bound. */
export async function runSeed(seed: number, minutes = 3, opts: { recoveryBoundMs?: number; timings?: Partial<Timings> } = {}): Promise<SeedResult> {
  const c = new SimCluster({ seed, timings: opts.timings });
  // In the agent an unhandled rejection ends the process (Node's default): here it is a finding.
  const unhandled = (reason: unknown): void => c.violate(`unhandled rejection: ${reason instanceof Error ? reason.message : String(reason)}`);
  process.on('unhandledRejection', unhandled);
  try {
    return await runSeedIn(c, seed, minutes, opts);
  } finally {
    // Rejections surface a microtask turn late: let them land on this seed before detaching.
    await new Promise((r) => setImmediate(r));
    process.off('unhandledRejection', unhandled);
  }
}

async function runSeedIn(c: SimCluster, seed: number, minutes: number, opts: { recoveryBoundMs?: number }): Promise<SeedResult> {
  const total = minutes * 60_000;
  const bound = opts.recoveryBoundMs ?? 90_000;
  const faultsEnd = Math.max(30_000, total - bound);
  let faults = 0;
  const schedule = (t: number): void => {
    c.world.at(t, () => {
      if (c.world.now >= faultsEnd) return;
      const what = injectRandomFault(c);
      faults++;
      c.world.log(`FAULT ${what}`);
      schedule(c.world.now + c.rng.between(1000, 20_000));
    });
  };
  schedule(20_000);
  c.world.at(faultsEnd, () => {
    c.onPromoted = undefined;
    healAll(c);
  });
  await c.run(faultsEnd);
  let recoveryMs: number | undefined;
  if (c.violations.length === 0) {
    await c.run(faultsEnd + bound, () => c.healthy());
    if (c.healthy()) recoveryMs = c.world.now - faultsEnd;
    else if (c.violations.length === 0) c.violate(`no leader with a synchronous standby ${bound / 1000} s after every fault healed`);
  }
  return { seed, violations: c.violations, trace: c.world.trace.slice(-(c.world.traceLimit)), acked: c.acked.length, events: c.world.events, faults, recoveryMs, needlessKills: c.needlessKills.length };
}
