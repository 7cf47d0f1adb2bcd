import type { NodeContext } from '../context.ts';
import type { VipPort } from '../core/ports.ts';
import { dropVip, garpPlan, IpRunner, takeVip, vipHeld, WaitingPlan, type VipSpec } from '../vip.ts';

export function vipSpecOf(ctx: NodeContext): VipSpec {
  return { address: ctx.spec.network.vip, prefix: ctx.spec.network.prefix, device: ctx.spec.network.interface };
}

/**
 * The control-plane VIP (decision 4): `ip addr add` plus gratuitous ARP. With `vip.enabled`
 * off (tests without a shared L2) the address is only remembered, so the controller's view of
 * "who holds the VIP" still follows its own take/drop calls.
 */
export function createVipPort(ctx: NodeContext): VipPort {
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
  const ip = new IpRunner();
  const garp = new WaitingPlan(garpPlan(spec));
  return {
    held: async () => {
      // The loop looks before it ever takes or drops: from then on a warm `ip` and arping wait.
      ip.prepare();
      garp.prepare();
      return vipHeld(spec);
    },
    take: () => takeVip(spec, ip, garp),
    drop: () => dropVip(spec, ip),
  };
}
