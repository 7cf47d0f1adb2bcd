import { readFileSync } from 'node:fs';
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import type { CommandPlan, PreparedRun, RunResult } from '#common/exec.ts';
import { CommandFailedError, preparePlan, runPlan } from '#common/exec.ts';
import { listsAddress } from './netwait.ts';

export interface VipSpec {
  address: string;
  prefix: number;
  device: string;
}

/** Add the VIP, or keep it when it is there already (`replace` is idempotent: no look first). */
export function vipAddPlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['addr', 'replace', `${v.address}/${v.prefix}`, 'dev', v.device, 'label', `${v.device.slice(0, 11)}:gk`] };
}

/** The release file's text (`ADDRESS PREFIX DEVICE`, NODE_PATHS.vipReleaseFile): empty when this node manages no VIP. */
export function vipReleaseText(v?: VipSpec): string {
  return v ? `${v.address} ${v.prefix} ${v.device}\n` : '';
}

export function vipDelPlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['addr', 'del', `${v.address}/${v.prefix}`, 'dev', v.device] };
}

/**
 * After this node gives the VIP up, a route that makes it take packets for the address as its
 * own without carrying it: a connection attempt that still reaches this node (a client's ARP
 * cache names it until the new holder's gratuitous ARP) is then refused at once, or reaches the
 * server here, which refuses writes, and the client tries again. Without it the kernel drops the
 * packet and the client's connect waits for its SYN's retransmission, a second later. Marked
 * `proto static`: the kernel's own local route of a held address is `proto kernel`, and a delete
 * naming the protocol never takes that one. Safe only where the interface answers ARP for the
 * addresses it carries alone (`arp_ignore` 1 or more: see arpIgnoresForeign).
 */
export function vipRefusePlan(v: VipSpec): CommandPlan {
  // replace, not add: one left by an agent that died meanwhile is taken over, not an error.
  return { cmd: 'ip', args: ['route', 'replace', 'local', `${v.address}/32`, 'dev', v.device, 'table', 'local', 'proto', 'static'] };
}

/** Remove the route of vipRefusePlan (and never the kernel's own for a held address). */
export function vipUnrefusePlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['route', 'del', 'local', `${v.address}/32`, 'dev', v.device, 'table', 'local', 'proto', 'static'] };
}

/**
 * Whether `device` answers ARP only for the addresses it carries: the larger of
 * `net.ipv4.conf.all.arp_ignore` and the device's own is 1 or more (the image sets `all` to 1).
 * With 0 the kernel would answer for the route of vipRefusePlan too, and the VIP would have two
 * owners on the LAN. False when either cannot be read.
 */
export function arpIgnoresForeign(device: string, read: (path: string) => string = (p) => readFileSync(p, 'utf8')): boolean {
  try {
    const value = (name: string): number => Number(read(`/proc/sys/net/ipv4/conf/${name}/arp_ignore`).trim());
    const mode = Math.max(value('all'), value(device));
    return Number.isInteger(mode) && mode >= 1;
  } catch {
    return false;
  }
}

/** Gratuitous ARP so switches and neighbours learn the VIP's new MAC at once. */
export function garpPlan(v: VipSpec): CommandPlan {
  return { cmd: 'arping', args: ['-U', '-c', '3', '-w', '2', '-I', v.device, v.address] };
}

export function vipShowPlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['-o', '-4', 'addr', 'show', 'dev', v.device] };
}

/**
 * Whether `v.device` carries the VIP, from the addresses the C library lists (`getifaddrs`,
 * Node's `os.networkInterfaces()`): a secondary address appears under its label, which
 * `vipAddPlan` sets to `DEVICE:gk`. Undefined when the device itself is not listed: libuv leaves
 * out a link that is down or not running, and then only `ip` can tell.
 */
export function vipHeldIn(interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>, v: VipSpec): boolean | undefined {
  const ours = Object.entries(interfaces).filter(([name]) => name === v.device || name.startsWith(`${v.device}:`));
  if (!ours.some(([name]) => name === v.device)) return undefined;
  return ours.some(([, addrs]) => (addrs ?? []).some((a) => a.family === 'IPv4' && a.address === v.address));
}

/**
 * Whether this node holds the VIP. The control loop asks every round, and a program start is
 * 0.3-0.7 s under TCG, most of it CPU that the guest's PostgreSQL and uploads then lack: `ip`
 * runs only when the C library's list cannot answer (see vipHeldIn).
 */
export async function vipHeld(v: VipSpec): Promise<boolean> {
  const listed = vipHeldIn(networkInterfaces(), v);
  if (listed !== undefined) return listed;
  const r = await runPlan(vipShowPlan(v), { allowFailure: true, timeoutMs: 3000 });
  return listsAddress(r.stdout, v.address);
}

/**
 * How long after a use the next waiting program starts (`Spare.prepareSoon`): past a switchover's
 * write pause and the promotion beside it. A start forks this process, which blocks it (and takes
 * a vCPU) under TCG, and a start on the next turn of the event loop came inside the pause: on the
 * old leader between its decision to stop and the postmaster's signal, on the new one while its
 * server promoted. A drop's refusing route goes after REFUSE_AFTER_DROP_MS (4 s) and finds the
 * next `ip` waiting.
 */
export const SPARE_AFTER_MS = 3000;

/**
 * A program started ahead of its use and waiting on its stdin (`preparePlan`). Whoever takes it
 * owns it; the next one starts `afterMs` after `prepareSoon` (on the event loop's next turn when
 * 0), not at once: a start blocks this process while it forks. A use before then runs cold.
 */
class Spare {
  private waiting: PreparedRun | undefined;
  private next: NodeJS.Timeout | undefined;

  constructor(
    private readonly plan: CommandPlan,
    private readonly afterMs = SPARE_AFTER_MS,
  ) {}

  /** The waiting program if one is ready (it is the caller's from now on), else undefined. */
  take(): PreparedRun | undefined {
    const ready = this.waiting?.ready() ? this.waiting : undefined;
    this.waiting = undefined;
    return ready;
  }

  /** Start the next one now, unless one waits already. */
  prepare(): void {
    if (this.waiting?.ready()) return;
    try {
      this.waiting = preparePlan(this.plan);
    } catch {
      this.waiting = undefined;
    }
  }

  /** Start the next one `afterMs` from now. */
  prepareSoon(): void {
    if (this.next) return;
    this.next = setTimeout(() => {
      this.next = undefined;
      this.prepare();
    }, this.afterMs);
    this.next.unref();
  }

  /** End the waiting program, and the one about to start, if any. */
  close(): void {
    if (this.next) clearTimeout(this.next);
    this.next = undefined;
    this.waiting?.cancel();
    this.waiting = undefined;
  }
}

/**
 * Runs `ip` commands for one node's VIP with an `ip -batch -` started ahead and waiting for
 * its line: the take or drop inside a switchover's write pause does not pay a program start
 * (0.3-0.7 s under TCG). After each use the next one is started SPARE_AFTER_MS later
 * (see Spare); when none is ready (the first use, two in a row) the plan runs as a program of
 * its own.
 */
export class IpRunner {
  private readonly spare: Spare;
  /** How many commands ran on a waiting `ip`, and how many as programs of their own. */
  readonly runs = { warm: 0, cold: 0 };

  constructor(batch: CommandPlan = ipBatchPlan(), options: { spareAfterMs?: number } = {}) {
    this.spare = new Spare(batch, options.spareAfterMs);
  }

  /**
   * Run `ip` plans in order, on the waiting `ip` when one is ready (one line each); they stop at
   * the first that fails, whose failure is the answer unless `allowFailure`.
   */
  async run(plan: CommandPlan | CommandPlan[], options: { allowFailure?: boolean; timeoutMs: number }): Promise<RunResult> {
    const plans = Array.isArray(plan) ? plan : [plan];
    const warm = this.spare.take();
    try {
      if (warm && plans.every((p) => p.cmd === 'ip')) {
        const r = await warm.run(plans.map((p) => `${p.args.join(' ')}\n`).join(''), options).catch((err: Error) => {
          // The command's own failure is the answer; a waiting `ip` killed meanwhile is not.
          if (err instanceof CommandFailedError && err.commandExitCode !== undefined) {
            this.runs.warm++;
            throw err;
          }
          return undefined;
        });
        if (r) {
          this.runs.warm++;
          return r;
        }
      }
      this.runs.cold++;
      let last: RunResult | undefined;
      for (const p of plans) {
        last = await runPlan(p, options);
        if (last.exitCode !== 0) break;
      }
      return last!;
    } finally {
      this.spare.prepareSoon();
    }
  }

  /** End the waiting `ip`, if any (a test; when the agent exits, its stdin closes and it ends by itself). */
  close(): void {
    this.spare.close();
  }

  /** Start the spare now, so that the first take or drop finds it ready. */
  prepare(): void {
    this.spare.prepare();
  }
}

/** `ip` reading its commands from stdin: one line, the arguments of a plan. */
export function ipBatchPlan(): CommandPlan {
  return { cmd: 'ip', args: ['-batch', '-'] };
}

/**
 * Add the VIP and announce it. `refused`: this node's route of vipRefusePlan is there (it gave
 * the address up moments ago), and goes once the address is back.
 */
export async function takeVip(v: VipSpec, ip: IpRunner, garp?: WaitingPlan, refused = false): Promise<void> {
  // One command, not a look and an add: each program start costs a switchover's write pause
  // most of a second under TCG (see IpRunner).
  await ip.run(refused ? [vipAddPlan(v), vipUnrefusePlan(v)] : vipAddPlan(v), { timeoutMs: 5000 });
  // Announce in the background: the VIP is usable now; arping takes ~2 s. Clients whose ARP
  // cache still names the old holder reach no one until it goes out.
  const announced = garp ? garp.start({ allowFailure: true, timeoutMs: 5000 }) : runPlan(garpPlan(v), { allowFailure: true, timeoutMs: 5000 });
  void announced.catch(() => undefined);
}

/**
 * One fixed plan, started on a shell that waits for a line and then becomes the plan's program
 * (`exec`): starting it is a write to a pipe, not a fork of this process (which under TCG blocks
 * the agent for a fraction of a second). The next shell starts SPARE_AFTER_MS after a start;
 * when none is ready the plan runs as a program of its own. A waiting shell whose stdin closes
 * (the agent exits) ends without running anything.
 */
export class WaitingPlan {
  private readonly spare: Spare;
  /** How many starts found a waiting shell, and how many ran as programs of their own. */
  readonly runs = { warm: 0, cold: 0 };

  constructor(
    private readonly plan: CommandPlan,
    options: { spareAfterMs?: number } = {},
  ) {
    this.spare = new Spare(WaitingPlan.shellPlan(plan), options.spareAfterMs);
  }

  /** The waiting shell's plan: `sh -c 'read -r _ || exit 0; exec "$@"' sh CMD ARGS...`. */
  static shellPlan(plan: CommandPlan): CommandPlan {
    return { cmd: 'sh', args: ['-c', 'read -r _ || exit 0; exec "$@"', 'sh', plan.cmd, ...plan.args], ...(plan.env ? { env: plan.env } : {}) };
  }

  start(options: { allowFailure?: boolean; timeoutMs: number }): Promise<RunResult> {
    const warm = this.spare.take();
    try {
      if (warm) {
        this.runs.warm++;
        return warm.run('go\n', options);
      }
      this.runs.cold++;
      return runPlan(this.plan, options);
    } finally {
      this.spare.prepareSoon();
    }
  }

  /** Start the waiting shell now, so that the first start finds it. */
  prepare(): void {
    this.spare.prepare();
  }

  /** End the waiting shell, if any (a test). */
  close(): void {
    this.spare.close();
  }
}

/**
 * Remove the VIP; `ip` fails with "Cannot assign requested address" when it is not there, which is
 * fine. `refuse`: then add the route of vipRefusePlan, whose removal is the caller's; the answer
 * says whether it was added (not when the address was not there).
 */
export async function dropVip(v: VipSpec, ip: IpRunner, refuse = false): Promise<boolean> {
  const r = await ip.run(refuse ? [vipDelPlan(v), vipRefusePlan(v)] : vipDelPlan(v), { allowFailure: true, timeoutMs: 5000 });
  return refuse && r.exitCode === 0;
}
