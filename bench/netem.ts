import { execFileSync } from 'node:child_process';
import { runPlan } from '#common/exec.ts';
import { inNs, nsOf, type Topology } from '#test/harness/netns.ts';

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
