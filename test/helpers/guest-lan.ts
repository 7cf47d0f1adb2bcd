import { runPlan, type CommandPlan } from '../../common/exec.ts';
import { destroyNamespaces } from '../harness/netns.ts';

/**
 * A private L2 for QEMU guests: a network namespace holding a bridge with one tap device per
 * guest, and an address of the host's own on that bridge (for the witness and a writer run
 * with `ip netns exec`). Nothing of it is visible outside the namespace; QEMU runs inside it
 * (BootOptions.netns) to open its tap.
 */
export interface GuestLan {
  ns: string;
  bridge: string;
  /** The host side's address on the bridge. */
  hostIp: string;
  /** The tap device of each guest, by guest name. */
  taps: Record<string, string>;
}

const ip = (...args: string[]): CommandPlan => ({ cmd: 'ip', args });

/** The plans that build the LAN (pure: a unit test snapshots them). */
export function guestLanPlans(ns: string, host: { ip: string; prefix: number }, guests: string[]): { lan: GuestLan; plans: CommandPlan[] } {
  const bridge = 'br0';
  const taps = Object.fromEntries(guests.map((g, i) => [g, `gktap${i + 1}`]));
  const plans: CommandPlan[] = [
    ip('netns', 'add', ns),
    ip('-n', ns, 'link', 'set', 'lo', 'up'),
    // No STP: ports forward at once instead of after the 15 s listening and learning delays.
    ip('-n', ns, 'link', 'add', bridge, 'type', 'bridge', 'stp_state', '0'),
    ip('-n', ns, 'addr', 'add', `${host.ip}/${host.prefix}`, 'dev', bridge),
    ip('-n', ns, 'link', 'set', bridge, 'up'),
  ];
  for (const tap of Object.values(taps)) {
    plans.push(ip('-n', ns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap'), ip('-n', ns, 'link', 'set', tap, 'master', bridge), ip('-n', ns, 'link', 'set', tap, 'up'));
  }
  return { lan: { ns, bridge, hostIp: host.ip, taps }, plans };
}

/** Build the LAN, after removing a leftover namespace of the same name. */
export async function createGuestLan(ns: string, host: { ip: string; prefix: number }, guests: string[]): Promise<GuestLan> {
  await destroyNamespaces(ns);
  const { lan, plans } = guestLanPlans(ns, host, guests);
  for (const p of plans) await runPlan(p, { timeoutMs: 10_000 });
  return lan;
}

/** Remove the LAN: every process left in it is killed, and its taps and bridge go with it. */
export async function destroyGuestLan(lan: GuestLan): Promise<void> {
  await destroyNamespaces(lan.ns);
}

/**
 * Who answers ARP for `address` on the LAN, as MAC addresses (lower case), seen from the host
 * side: `arping` in the namespace, `count` requests. Empty when nobody answers.
 */
export async function arpOwners(lan: GuestLan, address: string, count = 2): Promise<string[]> {
  const r = await runPlan({ cmd: 'ip', args: ['netns', 'exec', lan.ns, 'arping', '-c', String(count), '-w', String(count + 2), '-I', lan.bridge, address] }, { allowFailure: true, timeoutMs: 30_000 });
  const macs = new Set<string>();
  for (const m of r.stdout.matchAll(/\[([0-9a-f:]{17})\]/gi)) macs.add(m[1]!.toLowerCase());
  return [...macs];
}
