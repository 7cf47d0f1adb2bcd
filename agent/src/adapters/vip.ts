import type { NodeContext } from '../context.ts';
import type { VipPort } from '../core/ports.ts';
import { runPlan } from '#common/exec.ts';
import { arpIgnoresForeign, dropVip, garpPlan, IpRunner, takeVip, vipDelPlan, vipHeld, vipUnrefusePlan, WaitingPlan, type VipSpec } from '../vip.ts';

export function vipSpecOf(ctx: NodeContext): VipSpec {
  return { address: ctx.spec.network.vip, prefix: ctx.spec.network.prefix, device: ctx.spec.network.interface };
}

/**
 * The control-plane VIP (decision 4): `ip addr add` plus gratuitous ARP. A drop leaves the route
 * of vipRefusePlan for REFUSE_AFTER_DROP_MS, or until the next take, where the interface answers
 * ARP only for its own addresses (`deps.refuse` overrides the look at arp_ignore; `deps` are
 * for tests). With `vip.enabled` off (tests without a shared L2) the address is only remembered,
 * so the controller's view of "who holds the VIP" still follows its own take/drop calls.
 */
export function createVipPort(ctx: NodeContext, deps: { ip?: IpRunner; garp?: WaitingPlan; refuse?: boolean; refuseMs?: number } = {}): VipPort {
  if (!ctx.config.vip.enabled) {
    let held = false;
    return {
      held: async () => held,
      take: async () => {
        held = true;
      },
      drop: async () => {
        held = false;
      },
    };
  }
  const spec = vipSpecOf(ctx);
  const ip = deps.ip ?? new IpRunner();
  const garp = deps.garp ?? new WaitingPlan(garpPlan(spec));
  // Read once: the image sets arp_ignore before any unit starts (sysctl.d), and without it a
  // drop is a plain delete, as before.
  const refuse = deps.refuse ?? arpIgnoresForeign(spec.device);
  let refusing: NodeJS.Timeout | undefined;
  const stopRefusing = (): boolean => {
    const was = refusing !== undefined;
    clearTimeout(refusing);
    refusing = undefined;
    return was;
  };
  return {
    refusesAfterDrop: refuse,
    held: async () => {
      // The loop looks before it ever takes or drops: from then on a warm `ip` and arping wait.
      ip.prepare();
      garp.prepare();
      return vipHeld(spec);
    },
    take: () => takeVip(spec, ip, garp, stopRefusing()),
    drop: async () => {
      // A drop of an address already gone adds no route and must leave the timer of the one an
      // earlier drop added (a second drop within REFUSE_AFTER_DROP_MS): cleared, that route
      // stayed until the next take, and this node kept refusing the VIP's clients.
      if (!(await dropVip(spec, ip, refuse))) return;
      stopRefusing();
      // Long enough for the peer's take and gratuitous ARP in a switchover, which drops the
      // address as its server begins to stop: under TCG the peer took it up to 2.2 s later,
      // in a rolling upgrade's switchover. Short, since meanwhile this node's own connections to
      // the VIP (its Kine) reach its own server.
      refusing = setTimeout(() => {
        refusing = undefined;
        void ip.run(vipUnrefusePlan(spec), { allowFailure: true, timeoutMs: 5000 }).catch(() => undefined);
      }, deps.refuseMs ?? REFUSE_AFTER_DROP_MS);
      refusing.unref();
    },
  };
}

/** How long a node refuses connections to the VIP it gave up (vipRefusePlan). */
export const REFUSE_AFTER_DROP_MS = 4000;

/** Give the VIP up for good (the unit's ExecStopPost when the agent could not say where it is): the address and a refusing route, if any. */
export async function releaseVipNow(ctx: NodeContext): Promise<void> {
  const spec = vipSpecOf(ctx);
  await runPlan(vipDelPlan(spec), { allowFailure: true, timeoutMs: 5000 });
  await runPlan(vipUnrefusePlan(spec), { allowFailure: true, timeoutMs: 5000 });
}
