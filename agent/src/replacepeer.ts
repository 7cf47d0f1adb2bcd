import { withNodeAddress } from '#common/membership.ts';
import type { Agent } from './agent.ts';
import { writePeerOverride, type PeerOverride } from './context.ts';
import { ensurePeerSlot, reloadConfig, resetPeerSlot, writeNodeConfig } from './postgres.ts';

/** The answer to `POST /v1/replace-peer`. */
export interface ReplacePeerResult {
  ok: boolean;
  changed?: boolean;
  reason: string;
  previousIp?: string;
  ip?: string;
  slotDropped?: boolean;
}

/**
 * The survivor's half of `geminik8s replace-node`: its peer is gone for good and a new box takes
 * its name at `ip`. Under the held control loop, on the leader only, and only while nothing
 * answers as the peer at its current address: record the address (state dir, so a reboot keeps
 * it), write pg_hba.conf for it and reload PostgreSQL (no restart: writes go on), and give the
 * peer a fresh replication slot. The new box then clones this leader as any follower does.
 */
export async function replacePeerHere(agent: Agent, name: string, ip: string, mac?: string): Promise<{ status: number; body: ReplacePeerResult }> {
  const ctx = agent.ctx;
  const refuse = (status: number, reason: string): { status: number; body: ReplacePeerResult } => ({ status, body: { ok: false, reason } });
  if (name !== ctx.peer.name) return refuse(400, `name: this node's peer is ${ctx.peer.name}, not ${name}`);
  const change = withNodeAddress(ctx.spec, name, ip, mac);
  if (!change.spec) return refuse(400, `the new address is refused: ${change.problems.join('; ')}`);
  const previousIp = ctx.peer.ip;
  // Asked again (a re-run after a failure part-way): the address stands; the files, the reload
  // and the slot are made good, nothing is dropped (the new box may stream already).
  const already = ip === previousIp;
  const c = agent.controller;
  const r = await c.exclusive('peer replacement', ['leader'], async (): Promise<ReplacePeerResult> => {
    if (!already) {
      const { peer } = c.ports;
      if (!c.mayWrite()) return { ok: false, reason: 'this leader does not hold a valid lease now; nothing was changed' };
      const [view, peerPg] = [await peer.status(), await peer.pg()];
      if (view || peerPg.ok) {
        return { ok: false, reason: `${name} still answers at ${previousIp} (${view ? `agent: ${view.role}` : 'its PostgreSQL'}): power the old box off, or take it off the network, before it is replaced; nothing was changed` };
      }
      const moved = change.spec!.nodes.find((n) => n.name === name)!;
      const override: PeerOverride = { cluster: ctx.spec.name, name, ip, ...(moved.mac ? { mac: moved.mac } : {}), previousIp, at: new Date().toISOString() };
      // Recorded first: from here a restart applies it, whatever happens next.
      await writePeerOverride(ctx.config.stateDir, override);
      ctx.spec = change.spec!;
      ctx.peer = moved;
    }
    await writeNodeConfig(ctx);
    await reloadConfig(ctx);
    if (already) {
      await ensurePeerSlot(ctx);
      return { ok: true, changed: false, reason: `${name} is at ${ip} already: nothing to change (pg_hba.conf reloaded, its slot in place)`, previousIp, ip };
    }
    const slot = await resetPeerSlot(ctx);
    return { ok: true, changed: true, reason: `${name} moved from ${previousIp} to ${ip}: pg_hba.conf reloaded, ${slot.dropped ? 'its old replication slot dropped and a new one made' : 'a replication slot made'} at ${slot.restartLsn ?? 'the current WAL position'}`, previousIp, ip, slotDropped: slot.dropped };
  }).catch((err: Error) => ({ ok: false as const, reason: err.message }));
  if (!r.ok) return refuse(409, r.reason);
  if (!r.value.ok) return refuse(409, r.value.reason);
  agent.log.warn({ event: 'replace-peer', peer: name, from: previousIp, to: ip, slotDropped: r.value.slotDropped }, r.value.reason);
  return { status: 200, body: r.value };
}
