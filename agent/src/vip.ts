import type { CommandPlan } from '#common/exec.ts';
import { runPlan } from '#common/exec.ts';
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

/** Gratuitous ARP so switches and neighbours learn the VIP's new MAC at once. */
export function garpPlan(v: VipSpec): CommandPlan {
  return { cmd: 'arping', args: ['-U', '-c', '3', '-w', '2', '-I', v.device, v.address] };
}

export function vipShowPlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['-o', '-4', 'addr', 'show', 'dev', v.device] };
}

export async function vipHeld(v: VipSpec): Promise<boolean> {
  const r = await runPlan(vipShowPlan(v), { allowFailure: true, timeoutMs: 3000 });
  return listsAddress(r.stdout, v.address);
}

export async function takeVip(v: VipSpec): Promise<void> {
  // One program start, not two: each costs a switchover's write pause most of a second under TCG.
  await runPlan(vipAddPlan(v), { timeoutMs: 5000 });
  // Announce in the background: the VIP is usable now; arping takes ~2 s.
  void runPlan(garpPlan(v), { allowFailure: true, timeoutMs: 5000 }).catch(() => undefined);
}

/** Remove the VIP; `ip` fails with "Cannot assign requested address" when it is not there, which is fine. */
export async function dropVip(v: VipSpec): Promise<void> {
  await runPlan(vipDelPlan(v), { allowFailure: true, timeoutMs: 5000 });
}
