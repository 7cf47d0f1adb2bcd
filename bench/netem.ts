import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runPlan, spawnPlan, type CommandPlan } from '#common/exec.ts';
import { inNs, nsOf, type Topology } from '#lab/netns.ts';

/** Why this kernel cannot run `tc qdisc … netem` (delay, jitter), or undefined when it can. */
export async function netemMissing(): Promise<string | undefined> {
  const ns = `gknetem${process.pid}`;
  try {
    await runPlan({ cmd: 'ip', args: ['netns', 'add', ns] });
    await runPlan({ cmd: 'ip', args: ['-n', ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1'] });
    const r = await runPlan(inNs(ns, 'tc', ['qdisc', 'add', 'dev', 'v0', 'root', 'netem', 'delay', '10ms']), { allowFailure: true });
    return r.exitCode === 0 ? undefined : `tc netem: ${r.stderr.trim()} (no sch_netem in kernel ${execFileSync('uname', ['-r']).toString().trim()})`;
  } finally {
    await runPlan({ cmd: 'ip', args: ['netns', 'del', ns] }, { allowFailure: true });
  }
}

/** The member's own NIC inside its namespace (the witness sits on the bridge). */
export const nicOf = (member: string): string => (member === 'witness' ? 'br0' : 'eth0');

/** Random loss of `percent` % of a member's packets, both ways (iptables statistic): add or remove it. */
export async function packetLoss(t: Topology, member: string, percent: number, on: boolean): Promise<void> {
  const p = (percent / 100).toFixed(3);
  for (const chain of ['INPUT', 'OUTPUT']) await runPlan(inNs(nsOf(t, member), 'iptables', [on ? '-A' : '-D', chain, '-m', 'statistic', '--mode', 'random', '--probability', p, '-j', 'DROP']));
}

/** What a link does to each packet a member sends: netem's `delay D J loss L%`. */
export interface Impairment {
  delayMs: number;
  /** Uniform either side of the delay, each packet drawn on its own (so packets reorder), as netem's default. */
  jitterMs: number;
  lossPercent: number;
}

/** The emulator's own count of what it did, printed when it stops. */
export interface EmulatorCounters {
  queue: number;
  packets: number;
  dropped: number;
  delayed: number;
  maxHeld: number;
  delaySumMs: number;
}

/** A running user-space netem for one member's outgoing packets. */
export interface Emulator {
  member: string;
  /** Removes the rule, releases what the emulator still holds, and returns its counters. */
  stop(): Promise<EmulatorCounters>;
}

const EMULATOR = fileURLToPath(new URL('./netem-nfqueue.py', import.meta.url));

/** The iptables rule that hands every packet the member sends on its NIC to NFQUEUE `queue`. */
export function nfqueueRule(t: Topology, member: string, queue: number, on: boolean): CommandPlan {
  return inNs(nsOf(t, member), 'iptables', [on ? '-A' : '-D', 'OUTPUT', '-o', nicOf(member), '-j', 'NFQUEUE', '--queue-num', String(queue)]);
}

/** The emulator's command line inside the member's namespace. */
export function emulatorPlan(t: Topology, member: string, queue: number, imp: Impairment, seed: number): CommandPlan {
  return inNs(nsOf(t, member), 'python3', [EMULATOR, '--queue', String(queue), '--delay', String(imp.delayMs), '--jitter', String(imp.jitterMs), '--loss', String(imp.lossPercent), '--seed', String(seed)]);
}

/**
 * Delay, jitter and loss on what `member` sends, where the kernel has no sch_netem: the packets
 * go through an NFQUEUE rule to bench/netem-nfqueue.py, which accepts each after its drawn delay
 * or drops it. Like netem on the member's NIC it acts on egress only, on IP packets (not ARP).
 * Without `--queue-bypass` in the rule, a dead emulator drops everything: loud, not silently
 * unimpaired.
 */
export async function startEmulator(t: Topology, member: string, queue: number, imp: Impairment, seed: number): Promise<Emulator> {
  let ready: () => void = () => {};
  let counters: EmulatorCounters | undefined;
  const stderr: string[] = [];
  const readyP = new Promise<void>((r) => (ready = r));
  const p = spawnPlan(emulatorPlan(t, member, queue, imp, seed), {
    stdout: (l) => {
      if (l === 'ready') ready();
      else if (l.startsWith('{')) counters = JSON.parse(l) as EmulatorCounters;
    },
    stderr: (l) => stderr.push(l),
  });
  const early = await Promise.race([readyP.then(() => undefined), p.exited.then((c) => `exited with ${c}`), new Promise<string>((r) => setTimeout(() => r('not ready after 20 s'), 20_000))]);
  if (early !== undefined) {
    p.kill('SIGKILL');
    throw new Error(`netem emulator for ${member} (queue ${queue}) ${early}: ${stderr.slice(-5).join('\n')}`);
  }
  await runPlan(nfqueueRule(t, member, queue, true));
  return {
    member,
    stop: async () => {
      await runPlan(nfqueueRule(t, member, queue, false), { allowFailure: true });
      p.kill('SIGTERM');
      const code = await p.exited;
      if (!counters) throw new Error(`netem emulator for ${member} (queue ${queue}) ended (${code}) without its counters: ${stderr.slice(-5).join('\n')}`);
      return counters;
    },
  };
}

/** Delay, jitter and loss on what a member sends, however this kernel can: `stop()` undoes it. */
export interface Impaired {
  member: string;
  /** The emulator's counters, or undefined under tc netem. */
  stop(): Promise<EmulatorCounters | undefined>;
}

/**
 * `tc netem` on the member's NIC when the kernel has it (`netemMissing` undefined), else the
 * user-space emulator on NFQUEUE `queue`.
 */
export async function impair(t: Topology, member: string, imp: Impairment, netemMissingReason: string | undefined, queue: number, seed: number): Promise<Impaired> {
  if (netemMissingReason) return startEmulator(t, member, queue, imp, seed);
  const ns = nsOf(t, member);
  await runPlan(inNs(ns, 'tc', ['qdisc', 'add', 'dev', nicOf(member), 'root', 'netem', 'delay', `${imp.delayMs}ms`, `${imp.jitterMs}ms`, 'loss', `${imp.lossPercent}%`]));
  return {
    member,
    stop: async () => {
      await runPlan(inNs(ns, 'tc', ['qdisc', 'del', 'dev', nicOf(member), 'root']), { allowFailure: true });
      return undefined;
    },
  };
}
