import { runPlan, type CommandPlan } from '#common/exec.ts';
import type { ClockPort } from './core/ports.ts';

/** `ip -o addr show dev DEVICE`: one line per address, `... inet 192.168.1.11/24 ...`. */
export function addressShowPlan(device: string): CommandPlan {
  return { cmd: 'ip', args: ['-o', 'addr', 'show', 'dev', device] };
}

/** Whether `ip -o addr show` output lists `address` (any prefix length). */
export function listsAddress(ipOutput: string, address: string): boolean {
  return ipOutput.split('\n').some((l) => l.includes(` ${address}/`));
}

/** Whether `device` carries `address` now; a missing device is "no". */
export async function deviceHasAddress(device: string, address: string): Promise<boolean> {
  const r = await runPlan(addressShowPlan(device), { allowFailure: true, timeoutMs: 5000 });
  return r.exitCode === 0 && listsAddress(r.stdout, address);
}

export interface AddressWaitPorts {
  hasAddress: () => Promise<boolean>;
  clock: Pick<ClockPort, 'now' | 'sleep'>;
  /** Called once when the address is missing at the first look, then every `reportEveryMs`. */
  waiting: (waitedMs: number) => void;
}

export interface AddressWaitOptions {
  timeoutMs: number;
  pollMs: number;
  reportEveryMs: number;
}

/**
 * Wait until this node's own address is on its interface, or `timeoutMs` passes. The agent
 * starts beside the network instead of after network-online.target, so Node.js loads while
 * systemd-networkd configures the link; it acts (PostgreSQL, the VIP, the peer) only once its
 * address is there, so networkd's first configuration of the link cannot drop an address the
 * agent added. Resolves with how it ended and the milliseconds it waited.
 */
export async function waitForOwnAddress(ports: AddressWaitPorts, opts: AddressWaitOptions): Promise<{ present: boolean; waitedMs: number }> {
  const start = ports.clock.now();
  let reported = -Infinity;
  for (;;) {
    if (await ports.hasAddress()) return { present: true, waitedMs: ports.clock.now() - start };
    const waited = ports.clock.now() - start;
    if (waited >= opts.timeoutMs) return { present: false, waitedMs: waited };
    if (waited - reported >= opts.reportEveryMs) {
      ports.waiting(waited);
      reported = waited;
    }
    await ports.clock.sleep(Math.min(opts.pollMs, opts.timeoutMs - waited));
  }
}
