import type { CommandPlan } from '#common/exec.ts';
import { runPlan } from '#common/exec.ts';
import { listsAddress } from './netwait.ts';

export interface VipSpec {
  address: string;
  prefix: number;
  device: string;
}

/** Add the VIP; `ip` fails with "File exists" when it is already there, which is fine. */
export function vipAddPlan(v: VipSpec): CommandPlan {
  return { cmd: 'ip', args: ['addr', 'add', `${v.address}/${v.prefix}`, 'dev', v.device, 'label', `${v.device.slice(0, 11)}:gk`] };
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
  if (!(await vipHeld(v))) await runPlan(vipAddPlan(v), { timeoutMs: 5000 });
  // Announce in the background: the VIP is usable now; arping takes ~2 s.
  void runPlan(garpPlan(v), { allowFailure: true, timeoutMs: 5000 }).catch(() => undefined);
}

export async function dropVip(v: VipSpec): Promise<void> {
  if (await vipHeld(v)) await runPlan(vipDelPlan(v), { allowFailure: true, timeoutMs: 5000 });
}
