import { ROLES, type Role } from '#common/schema/hostmeta.ts';
import { httpCall, WarmPool } from '#common/httpclient.ts';
import { apiScheme, type NodeContext } from '../context.ts';
import { formatLsn } from '../core/lsn.ts';
import { PROMOTE_TIMEOUT_MS, type LeaveRequest, type PeerPort, type PeerView, type PromoteRequest } from '../core/ports.ts';
import * as pgc from '../postgres.ts';

/** Base URL of the peer's agent API: https with the cluster CA unless the cluster is in development plaintext. */
export function peerBaseUrl(ctx: NodeContext): string {
  return `${apiScheme(ctx)}://${ctx.peer.ip}:${ctx.peerApiPort}`;
}

/** Map the peer's /v1/status body to what the controller uses; undefined when it is not one. */
export function peerViewOf(body: unknown): PeerView | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const b = body as { role?: unknown; generation?: unknown; postgres?: { role?: unknown; timeline?: unknown } | null };
  if (typeof b.role !== 'string' || !(ROLES as readonly string[]).includes(b.role)) return undefined;
  if (!Number.isInteger(b.generation) || (b.generation as number) < 0) return undefined;
  const view: PeerView = { role: b.role as Role, generation: b.generation as number };
  const pg = b.postgres && typeof b.postgres === 'object' ? b.postgres : undefined;
  if (pg && Number.isInteger(pg.timeline)) view.timeline = pg.timeline as number;
  if (pg) view.pgPrimary = pg.role === 'primary';
  const sss = (body as { standbySyncState?: unknown }).standbySyncState;
  if (typeof sss === 'string') view.standbySyncState = sss;
  const boot = (body as { boot?: { state?: unknown; trySlot?: unknown } | null }).boot;
  if (boot && typeof boot.state === 'string') view.boot = { state: boot.state, trySlot: typeof boot.trySlot === 'string' ? boot.trySlot : null };
  return view;
}

/** The production PeerPort: the peer agent's HTTP API and a direct query of its PostgreSQL. */
export function createPeerPort(ctx: NodeContext): PeerPort {
  // Per call, not once: a replaced peer (geminik8s replace-node) moves to a new address at run time.
  const base = (): string => peerBaseUrl(ctx);
  const headers = { authorization: `Bearer ${ctx.secrets.agentToken}` };
  // The status check runs every round: its connection stays open, and a slow answer does not
  // close it (a GET is harmless when late). promote and leave are torn down at their timeout.
  const pool = new WarmPool();
  // Is the peer's PostgreSQL a primary? Asked every round, on a kept connection (KeptSession).
  const peerSession = new pgc.KeptSession(ctx, () => ctx.peer.ip, true);
  /** A JSON POST to the peer's agent: its status, its JSON body ({} when it is not JSON) and the reason it gives. Throws when no answer arrives. */
  const post = async (path: string, json: Record<string, unknown>, timeoutMs: number): Promise<{ status: number; body: Record<string, unknown>; reason?: string }> => {
    const res = await httpCall(`${base()}${path}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify(json),
      timeoutMs,
      pool,
      ...(ctx.tls ? { tls: ctx.tls } : {}),
    });
    let body: Record<string, unknown> = {};
    try {
      const parsed: unknown = JSON.parse(res.text);
      if (parsed && typeof parsed === 'object') body = parsed as Record<string, unknown>;
    } catch {
      // not JSON: the status says it
    }
    return { status: res.status, body, ...(typeof body.reason === 'string' ? { reason: body.reason } : {}) };
  };
  return {
    async status(): Promise<PeerView | undefined> {
      try {
        const res = await httpCall(`${base()}/v1/status`, { headers, timeoutMs: ctx.spec.failover.checkTimeout, pool, linger: true, ...(ctx.tls ? { tls: ctx.tls } : {}) });
        if (res.status !== 200) return undefined;
        return peerViewOf(JSON.parse(res.text));
      } catch {
        return undefined;
      }
    },

    async pg(): Promise<{ ok: boolean; primary?: boolean }> {
      try {
        return await peerSession.run(async (c) => {
          const r = await c.query(`SELECT pg_is_in_recovery() AS rec`);
          return { ok: true, primary: !(r.rows[0] as { rec: boolean }).rec };
        });
      } catch {
        return { ok: false };
      }
    },

    /** 200 → ok with the peer's generation; any other status → refused with its reason. Throws when no answer arrives. */
    async promote(req: PromoteRequest): Promise<{ ok: boolean; generation?: number; reason: string }> {
      // No answer (network error, timeout) throws: the peer may or may not have promoted, and
      // that is not the same as a refusal.
      const { status, body, reason } = await post('/v1/promote', { lsn: formatLsn(req.lsn), generation: req.generation }, PROMOTE_TIMEOUT_MS).catch((err: Error) => {
        throw new Error(`peer ${ctx.peer.name} did not answer the promote request (outcome unknown): ${err.message}`);
      });
      if (status === 200) {
        return { ok: true, ...(Number.isInteger(body.generation) ? { generation: body.generation as number } : {}), reason: reason ?? 'promoted' };
      }
      return { ok: false, reason: reason ?? `peer answered ${status}` };
    },

    /** 200 → taken; any other status → refused with its reason. Throws when no answer arrives. */
    async leave(req: LeaveRequest, timeoutMs: number): Promise<{ ok: boolean; reason: string }> {
      const { status, reason } = await post('/v1/leave', { generation: req.generation }, timeoutMs);
      return { ok: status === 200, reason: reason ?? `peer answered ${status}` };
    },
  };
}
