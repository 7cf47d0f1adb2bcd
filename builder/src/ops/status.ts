import type { StreamedAnswer } from '#common/httpclient.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';

/** How the CLI reaches an HTTP endpoint (a port: tests and `--watch` use the same code). GET unless told; `date` is the answer's Date header. */
export type Fetcher = (url: string, init: { method?: 'GET' | 'POST'; headers: Record<string, string>; body?: string; timeoutMs: number }) => Promise<{ status: number; body: unknown; date?: string }>;

/**
 * An agent's answer to a POST: the JSON body (a body that is not JSON is the reason itself),
 * whether it succeeded (200 with `ok: true`), and its reason, error or HTTP status.
 */
export function agentAnswer(r: { status: number; body: unknown }): { ok: boolean; reason: string; body: Record<string, unknown> } {
  const body = (typeof r.body === 'string' ? { error: r.body } : (r.body ?? {})) as Record<string, unknown>;
  const reason = typeof body.reason === 'string' ? body.reason : typeof body.error === 'string' ? body.error : `HTTP ${r.status}`;
  return { ok: r.status === 200 && body.ok === true, reason, body };
}

/** A streamed call's answer read whole: its JSON body, or a body that is not JSON as `{ok: false, reason}`. */
export async function streamedAnswer(a: StreamedAnswer): Promise<{ status: number; body: Record<string, unknown> }> {
  const chunks: Buffer[] = [];
  for await (const c of a.body) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return { status: a.status, body: JSON.parse(text) as Record<string, unknown> };
  } catch {
    return { status: a.status, body: { ok: false, reason: text } };
  }
}

/** The URL of an endpoint of a node's agent API. */
export function agentUrl(cluster: Cluster, ip: string, path: string): string {
  return `${cluster.agent.insecurePlaintext ? 'http' : 'https'}://${ip}:${cluster.agent.port}${path}`;
}

/** What one node's agent said, or why it said nothing. */
export interface NodeView {
  name: string;
  ip: string;
  reachable: boolean;
  error?: string;
  role?: string;
  generation?: number;
  pg?: { up: boolean; role: string; lsn: string | null; timeline: number | null; readOnly: boolean | null; syncState: string | null; lagBytes: number | null; receiverStreaming: boolean | null };
  degraded?: boolean;
  vipHere?: boolean;
  lease?: { held: boolean; msLeft: number };
  slot?: { booted: string | null; active: string | null; state: string | null };
  version?: string;
  lastTransition?: { at: string; from: string; to: string; reason: string };
  /** What each slot holds, as far as the node knows. */
  slots?: { A: string | null; B: string | null };
  /** The last upgrade staged on the node. */
  upgrade?: { version: string; slot: string; state: string; at: string; reason: string | null };
}

/** The witness's durable record, or why it could not be read. */
export interface WitnessView {
  kind: 'lease' | 'none';
  url?: string;
  reachable: boolean;
  error?: string;
  holder?: string | null;
  generation?: number;
  promotable?: string | null;
  timeline?: number | null;
}

export type Health = 'healthy' | 'degraded' | 'down';

export interface ClusterStatus {
  cluster: string;
  at: string;
  health: Health;
  /** Why the health is what it is; empty when healthy. */
  reasons: string[];
  leader: string | null;
  nodes: NodeView[];
  witness: WitnessView;
}

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => (v !== null && typeof v === 'object' ? (v as Json) : {});
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const bool = (v: unknown): boolean | null => (typeof v === 'boolean' ? v : null);

/** One node's view from its /v1/status body (pure). */
export function nodeViewOf(name: string, ip: string, body: unknown): NodeView {
  const b = obj(body);
  const pg = obj(b.postgres);
  const standby = obj(pg.standby);
  const lease = obj(b.lease);
  const boot = obj(b.boot);
  const lt = obj(b.lastTransition);
  return {
    name, ip, reachable: true,
    role: str(b.role) ?? undefined,
    generation: num(b.generation) ?? undefined,
    pg: b.postgres
      ? { up: pg.up === true, role: str(pg.role) ?? 'unknown', lsn: str(pg.lsn), timeline: num(pg.timeline), readOnly: bool(pg.readOnly), syncState: str(standby.syncState), lagBytes: num(pg.lagBytes), receiverStreaming: bool(pg.receiverStreaming) }
      : undefined,
    degraded: bool(b.degraded) ?? undefined,
    vipHere: bool(obj(b.vip).heldHere) ?? undefined,
    lease: b.lease ? { held: lease.held === true, msLeft: num(lease.msLeft) ?? 0 } : undefined,
    slot: b.boot ? { booted: str(boot.booted), active: str(boot.active), state: str(boot.state) } : { booted: str(b.slot), active: null, state: null },
    version: str(b.version) ?? undefined,
    slots: boot.slots ? { A: str(obj(boot.slots).A), B: str(obj(boot.slots).B) } : undefined,
    upgrade: boot.upgrade
      ? { version: str(obj(boot.upgrade).version) ?? '?', slot: str(obj(boot.upgrade).slot) ?? '?', state: str(obj(boot.upgrade).state) ?? '?', at: str(obj(boot.upgrade).at) ?? '', reason: str(obj(boot.upgrade).reason) }
      : undefined,
    lastTransition: b.lastTransition ? { at: str(lt.at) ?? '', from: str(lt.from) ?? '', to: str(lt.to) ?? '', reason: str(lt.reason) ?? '' } : undefined,
  };
}

/**
 * The pair's health (pure):
 * - down: no node is a leader whose PostgreSQL is a writable primary;
 * - degraded: a leader writes, but a node or the witness does not answer, the standby is not
 *   synchronous, or the witness does not record it as promotable (no automatic failover then);
 * - healthy: otherwise.
 */
export function assess(nodes: NodeView[], witness: WitnessView): { health: Health; reasons: string[]; leader: string | null } {
  const writable = nodes.filter((n) => n.reachable && n.role === 'leader' && n.pg?.up && n.pg.role === 'primary' && n.pg.readOnly !== true);
  const reasons: string[] = [];
  for (const n of nodes) if (!n.reachable) reasons.push(`${n.name} does not answer (${n.error ?? 'no answer'})`);
  if (writable.length === 0) {
    reasons.unshift('no node is a leader with a writable primary');
    return { health: 'down', reasons, leader: null };
  }
  if (writable.length > 1) {
    reasons.unshift(`${writable.map((n) => n.name).join(' and ')} both report a writable primary`);
    return { health: 'down', reasons, leader: null };
  }
  const leader = writable[0]!;
  const follower = nodes.find((n) => n !== leader);
  if (leader.pg?.syncState !== 'sync') reasons.push(`the standby is ${leader.pg?.syncState ?? 'not connected'}, not synchronous`);
  if (leader.degraded) reasons.push('synchronous replication is switched off (degraded)');
  if (follower?.reachable && follower.role !== 'follower') reasons.push(`${follower.name} is ${follower.role ?? 'unknown'}, not follower`);
  if (witness.kind === 'lease') {
    if (!witness.reachable) reasons.push(`the witness does not answer (${witness.error ?? 'no answer'})`);
    else {
      if (witness.holder !== leader.name) reasons.push(`the witness records ${witness.holder ?? 'nobody'} as the lease holder`);
      if (follower && witness.promotable !== follower.name) reasons.push(`the witness records ${witness.promotable ?? 'nobody'} as promotable: no automatic failover now`);
    }
  }
  return { health: reasons.length ? 'degraded' : 'healthy', reasons, leader: leader.name };
}

/** Read both agents (read-token) and the witness (witness-token), then assess. */
export async function collectStatus(cluster: Cluster, secrets: Secrets, fetcher: Fetcher, now = new Date()): Promise<ClusterStatus> {
  const timeoutMs = Math.max(2000, cluster.failover.checkTimeout * 2);
  const nodes = await Promise.all(
    cluster.nodes.map(async (n): Promise<NodeView> => {
      try {
        const r = await fetcher(agentUrl(cluster, n.ip, '/v1/status'), { headers: { authorization: `Bearer ${secrets.readToken}` }, timeoutMs });
        if (r.status !== 200) return { name: n.name, ip: n.ip, reachable: false, error: `HTTP ${r.status}${str(obj(r.body).error) ? `: ${str(obj(r.body).error)}` : ''}` };
        return nodeViewOf(n.name, n.ip, r.body);
      } catch (err) {
        return { name: n.name, ip: n.ip, reachable: false, error: (err as Error).message };
      }
    }),
  );
  let witness: WitnessView = { kind: 'none', reachable: false };
  if (cluster.witness.type === 'lease') {
    const url = cluster.witness.url.replace(/\/+$/, '');
    witness = { kind: 'lease', url, reachable: false };
    try {
      const r = await fetcher(`${url}/v1/clusters/${encodeURIComponent(cluster.name)}`, { headers: { authorization: `Bearer ${secrets.witnessToken}` }, timeoutMs });
      const b = obj(r.body);
      if (r.status === 200) witness = { ...witness, reachable: true, holder: str(b.holder), generation: num(b.generation) ?? 0, promotable: str(b.promotable), timeline: num(b.timeline) };
      else witness.error = `HTTP ${r.status}${str(b.error) ? `: ${str(b.error)}` : ''}`;
    } catch (err) {
      witness.error = (err as Error).message;
    }
  }
  return { cluster: cluster.name, at: now.toISOString(), ...assess(nodes, witness), nodes, witness };
}

/** The status as a table for people (pure). */
export function renderStatusTable(s: ClusterStatus): string {
  const rows: string[][] = [['NODE', 'ROLE', 'GEN', 'POSTGRES', 'TL', 'LSN', 'R/W', 'SYNC', 'LAG', 'VIP', 'SLOT', 'LAST TRANSITION']];
  for (const n of s.nodes) {
    if (!n.reachable) {
      rows.push([n.name, 'unreachable', '-', '-', '-', '-', '-', '-', '-', '-', '-', n.error ?? '']);
      continue;
    }
    const pg = n.pg;
    const rw = !pg?.up ? '-' : pg.role === 'primary' ? (pg.readOnly ? 'read-only' : 'read-write') : 'read-only';
    const sync = !pg?.up ? '-' : pg.role === 'primary' ? (pg.syncState ?? 'none') : pg.receiverStreaming ? 'streaming' : 'not streaming';
    const slot = n.slot?.booted ? `${n.slot.booted}${n.slot.active && n.slot.active !== n.slot.booted ? ` (active ${n.slot.active})` : ''}${n.slot.state && n.slot.state !== 'steady' && n.slot.state !== 'unknown' ? ` ${n.slot.state}` : ''}` : '-';
    const lt = n.lastTransition ? `${n.lastTransition.from}->${n.lastTransition.to} ${n.lastTransition.at}: ${n.lastTransition.reason}` : '';
    rows.push([n.name, n.role ?? '?', String(n.generation ?? '?'), pg ? (pg.up ? pg.role : 'down') : '?', String(pg?.timeline ?? '-'), pg?.lsn ?? '-', rw, sync, pg?.lagBytes == null ? '-' : String(pg.lagBytes), n.vipHere ? 'yes' : 'no', slot, lt]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
  const w = s.witness;
  for (const n of s.nodes) {
    if (!n.reachable || (!n.slots && !n.upgrade)) continue;
    const slots = n.slots ? `slots A ${n.slots.A ?? '?'}, B ${n.slots.B ?? '?'}` : '';
    const u = n.upgrade ? `last upgrade ${n.upgrade.version} on slot ${n.upgrade.slot}: ${n.upgrade.state} ${n.upgrade.at}${n.upgrade.reason ? ` (${n.upgrade.reason})` : ''}` : 'no upgrade staged';
    lines.push(`${n.name}: ${[slots, u].filter(Boolean).join('; ')}`);
  }
  lines.push('');
  if (w.kind === 'none') lines.push('witness: none (failover is manual)');
  else if (!w.reachable) lines.push(`witness: ${w.url} unreachable (${w.error ?? 'no answer'})`);
  else lines.push(`witness: ${w.url}  holder ${w.holder ?? 'nobody'}  generation ${w.generation}  promotable ${w.promotable ?? 'nobody'}  timeline ${w.timeline ?? '-'}`);
  lines.push(`cluster ${s.cluster}: ${s.health.toUpperCase()}${s.leader ? ` (leader ${s.leader})` : ''}${s.reasons.length ? `\n  - ${s.reasons.join('\n  - ')}` : ''}`);
  return lines.join('\n');
}
