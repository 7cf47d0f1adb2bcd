import { runPlan } from '../../common/exec.ts';
import type { HarnessCluster } from './cluster.ts';
import { blockPeer, linkDown, linkUp, NET } from './netns.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What one fault did to the pair, measured from the writer's and samplers' records. */
export interface ScenarioResult {
  name: string;
  leaderBefore: string;
  leaderAfter: string;
  /** Fault → first acknowledged write after the outage (0 when writes never stopped). */
  outageSeconds: number;
  /** Fault healed → leader + sync standby again. */
  recoverySeconds: number;
  writesLost: number[];
  dualPrimarySamples: number;
  acked: number;
}

export interface Scenario {
  name: string;
  /** Inject the fault; returns once the fault is in place (or over, for short faults). */
  fault(c: HarnessCluster, leader: string, follower: string): Promise<void>;
  /** Wait while the fault lasts, e.g. until a failover happened. */
  during?(c: HarnessCluster, leader: string, follower: string): Promise<void>;
  heal?(c: HarnessCluster, leader: string, follower: string): Promise<void>;
  /** Whether the leader is expected to change. */
  expectFailover: boolean;
}

function pid(c: HarnessCluster, node: string): number {
  const p = c.agents.get(node)?.pid;
  if (!p) throw new Error(`no agent process for ${node}`);
  return p;
}

/** The PID of the agent's node process (ip netns exec execs it, so they are the same). */
async function signalAgent(c: HarnessCluster, node: string, signal: NodeJS.Signals): Promise<void> {
  process.kill(pid(c, node), signal);
}

const waitNewLeader = (c: HarnessCluster, old: string): Promise<string> =>
  c.waitFor(`a leader other than ${old}`, async () => {
    const l = await c.leader();
    return l && l !== old ? l : undefined;
  }, 60_000);

export const SCENARIOS: Scenario[] = [
  {
    name: 'leader power loss',
    expectFailover: true,
    fault: (c, leader) => c.powerOff(leader),
    during: async (c, leader) => {
      await waitNewLeader(c, leader);
    },
    // The old leader stays off here; the next scenario restarts it.
  },
  {
    name: 'restart of the old leader',
    expectFailover: false,
    // Runs on a pair whose follower is the powered-off old leader.
    fault: async (c, _leader, follower) => {
      if (!c.agents.has(follower)) await c.powerOn(follower);
    },
  },
  {
    name: 'agent frozen (SIGSTOP)',
    expectFailover: false,
    fault: (c, leader) => signalAgent(c, leader, 'SIGSTOP'),
    during: () => sleep(10_000),
    heal: (c, leader) => signalAgent(c, leader, 'SIGCONT'),
  },
  {
    name: 'PostgreSQL crash only',
    expectFailover: false,
    fault: async (c, leader) => {
      const p = c.postmasterPid(leader);
      if (!p) throw new Error(`no postmaster pid for ${leader}`);
      process.kill(p, 'SIGKILL');
    },
    during: () => sleep(8_000),
  },
  {
    name: 'full partition of the leader link',
    expectFailover: true,
    fault: (c, leader) => linkDown(c.topology, leader),
    during: async (c, leader) => {
      await waitNewLeader(c, leader);
      await sleep(3_000);
    },
    heal: (c, leader) => linkUp(c.topology, leader),
  },
  {
    name: 'leader cut from the peer but not from the witness',
    expectFailover: false,
    fault: async (c, leader, follower) => {
      const peerIp = NET.nodes.find((n) => n.name === follower)!.ip;
      await blockPeer(c.topology, leader, peerIp, true);
    },
    during: () => sleep(15_000),
    heal: async (c, leader, follower) => {
      const peerIp = NET.nodes.find((n) => n.name === follower)!.ip;
      await blockPeer(c.topology, leader, peerIp, false);
    },
  },
  {
    name: 'follower isolated',
    expectFailover: false,
    fault: (c, _leader, follower) => linkDown(c.topology, follower),
    during: () => sleep(15_000),
    heal: (c, _leader, follower) => linkUp(c.topology, follower),
  },
  {
    name: 'planned switchover',
    expectFailover: true,
    fault: async (c, leader) => {
      const r = await c.switchover(leader);
      c.log(`switchover answered ${JSON.stringify(r)}`);
      if (!r || r.ok !== true) throw new Error(`switchover failed: ${JSON.stringify(r)}`);
      c.lastSwitchoverMs = r.tookMs;
    },
  },
  {
    name: 'flapping leader link',
    expectFailover: false,
    fault: async (c, leader) => {
      for (let i = 0; i < 5; i++) {
        await linkDown(c.topology, leader);
        await sleep(1_500);
        await linkUp(c.topology, leader);
        await sleep(1_500);
      }
    },
  },
];

/** Outage = the longest gap between acknowledged writes after the fault. */
export function outageAfter(acks: { t: number }[], tFault: number): number {
  const after = acks.filter((a) => a.t >= tFault - 1000);
  let longest = 0;
  let previous = Math.max(tFault, after[0]?.t ?? tFault);
  for (const a of after) {
    if (a.t < tFault) {
      previous = a.t;
      continue;
    }
    longest = Math.max(longest, a.t - Math.max(previous, tFault));
    previous = a.t;
  }
  return longest / 1000;
}

/** Run one scenario on a healthy pair and measure it. */
export async function runScenario(c: HarnessCluster, s: Scenario, recoveryBoundMs = 90_000): Promise<ScenarioResult> {
  const leaderBefore = await c.waitFor('a leader', () => c.leader(), 90_000);
  const follower = c.other(leaderBefore);
  c.log(`=== scenario: ${s.name} (leader ${leaderBefore})`);
  const tFault = Date.now();
  await s.fault(c, leaderBefore, follower);
  await s.during?.(c, leaderBefore, follower);
  await s.heal?.(c, leaderBefore, follower);
  const tHealed = Date.now();
  let leaderAfter = leaderBefore;
  if (s.name !== 'leader power loss') {
    leaderAfter = await c.waitFor('leader + synchronous standby', () => c.healthyPair(), recoveryBoundMs);
  } else {
    leaderAfter = await c.waitFor('a leader', () => c.leader(), recoveryBoundMs);
  }
  const recoverySeconds = (Date.now() - tHealed) / 1000;
  // Let the writer land a few more writes on the settled pair before counting.
  const target = c.acks.length + 5;
  await c.waitFor('writes after recovery', async () => (c.acks.length >= target ? true : undefined), 30_000);
  const acked = c.acks.length;
  const writesLost = await c.missingAcks(leaderAfter, acked);
  const result: ScenarioResult = {
    name: s.name, leaderBefore, leaderAfter, outageSeconds: outageAfter(c.acks, tFault), recoverySeconds,
    writesLost, dualPrimarySamples: c.dualPrimarySamples(tFault - 1000), acked,
  };
  c.log(`=== result: ${JSON.stringify(result)}`);
  return result;
}

export async function agentProcessAlive(pidNumber: number): Promise<boolean> {
  const r = await runPlan({ cmd: 'kill', args: ['-0', String(pidNumber)] }, { allowFailure: true });
  return r.exitCode === 0;
}
