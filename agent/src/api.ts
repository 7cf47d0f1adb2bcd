import { readFileSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Server as TlsServer } from 'node:tls';
import { SERVER_KEEP_ALIVE_MS } from '#common/httpclient.ts';
import type { Agent, BootStatus } from './agent.ts';
import { formatLsn, lsnToBigInt } from './core/lsn.ts';
import type { PgStatus } from './core/ports.ts';
import { tokenMatches } from '#common/token.ts';
import { peerIdentity } from '#common/tls.ts';
import { apiScheme } from './context.ts';
import { startBackup } from './backup.ts';
import { replacePeerHere } from './replacepeer.ts';
import { rotateTlsHere } from './tlsrotate.ts';
import { recloneHere, restoreHere } from './restore.ts';
import { MAX_BUNDLE_BYTES, stageHere } from './upgradestage.ts';
import { clusterView, STATUS_PAGE_HTML, statusPageCsp } from './statuspage.ts';
import { hostPreflight } from './preflight.ts';
import { slotFromCmdline } from './bootslot.ts';

/** The slot this system booted from (kernel command line `geminik8s.slot=A|B`). */
export function bootSlot(cmdlineFile: string): string | null {
  try {
    return slotFromCmdline(readFileSync(cmdlineFile, 'utf8')) ?? null;
  } catch {
    return null;
  }
}

/**
 * WAL bytes the standby has not replayed, on a primary with a standby; else null. Our LSN and
 * the standby's replay position come from two reads, so a standby that replayed in between is
 * "ahead" by a few bytes: that is no lag, not a negative one.
 */
function lagBytes(pg: PgStatus): number | null {
  return pg.lsn !== undefined && pg.standby?.replayLsn != null ? Math.max(0, Number(pg.lsn - pg.standby.replayLsn)) : null;
}

/** Everything /v1/status reports. */
export function statusOf(agent: Agent): Record<string, unknown> {
  const round = agent.snapshot.round;
  const c = agent.controller;
  const { ctx } = agent;
  return {
    cluster: ctx.spec.name,
    node: ctx.self.name,
    role: agent.role,
    generation: agent.meta.generation,
    lastTransition: agent.meta.lastTransition,
    version: ctx.config.image.version,
    slot: bootSlot(ctx.config.image.slotFile),
    postgres: round
      ? { up: round.pg.up, role: round.pg.up ? (round.pg.inRecovery ? 'standby' : 'primary') : 'down', lsn: lsnText(round.pg.lsn), timeline: round.pg.timeline ?? null, readOnly: round.pg.readOnly ?? null,
          synchronousStandbyNames: round.pg.synchronousStandbyNames ?? null, receiverStreaming: round.pg.receiverStreaming ?? null, syncWaiters: round.pg.syncWaiters ?? null,
          standby: round.pg.standby ? { state: round.pg.standby.state, syncState: round.pg.standby.syncState, flushLsn: lsnText(round.pg.standby.flushLsn), replayLsn: lsnText(round.pg.standby.replayLsn) } : null,
          lagBytes: lagBytes(round.pg) }
      : null,
    // For the peer's health gate: our view of its replication, when we are the primary.
    standbySyncState: round?.pg.standby?.syncState ?? null,
    degraded: Boolean(round?.pg.up && !round.pg.inRecovery && !round.pg.synchronousStandbyNames),
    lease: { arbiter: c.arbiter, ...c.leaseInfo() },
    switching: c.snapshot.switching,
    lastRejoin: c.snapshot.lastRejoin ?? null,
    vip: { address: ctx.spec.network.vip, heldHere: round?.vipHeld ?? false },
    peer: { name: ctx.peer.name, ip: ctx.peer.ip, apiReachable: Boolean(round?.peer), postgresReachable: round?.peerPg.ok ?? false, view: round?.peer ?? null },
    witness: { kind: ctx.witness.kind },
    userChecks: agent.snapshot.userChecks ?? [],
    decision: agent.snapshot.lastDecision ?? null,
    boot: bootStatusOf(agent.snapshot.boot),
  };
}

/** The A/B boot part of /v1/status (null until the agent has read it). */
export function bootStatusOf(b: BootStatus | undefined): Record<string, unknown> | null {
  if (!b) return null;
  return {
    state: b.state, booted: b.booted ?? null, active: b.active ?? null, trySlot: b.trySlot ?? null, tryCount: b.tryCount ?? null,
    detail: b.detail, pending: b.pending, last: b.last ?? null, gate: b.gate ?? null,
    slots: b.slots ?? null,
    upgrade: b.upgrade?.current ?? null,
    failedUpgrades: b.upgrade?.failed ?? [],
  };
}

function lsnText(lsn: bigint | null | undefined): string | null {
  return lsn === undefined || lsn === null ? null : formatLsn(lsn);
}

/** Prometheus text exposition of the agent's state. */
export function metricsOf(agent: Agent): string {
  const o = agent.snapshot.round;
  const lease = agent.controller.leaseInfo();
  const lines: string[] = [];
  const metric = (name: string, help: string, type: 'gauge' | 'counter', samples: [Record<string, string>, number][]): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) {
      const l = Object.entries(labels).map(([k, val]) => `${k}="${val.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`).join(',');
      lines.push(`${name}${l ? `{${l}}` : ''} ${v}`);
    }
  };
  const node = { node: agent.ctx.self.name };
  metric('geminik8s_role', 'Current role of this node (1 for the active role).', 'gauge', (['init', 'leader', 'follower', 'fenced', 'unconfigured'] as const).map((r) => [{ ...node, role: r }, agent.role === r ? 1 : 0]));
  metric('geminik8s_generation', 'Cluster generation as seen by this node; increases on every promotion.', 'gauge', [[node, agent.meta.generation]]);
  metric('geminik8s_transitions_total', 'Role transitions since the agent started.', 'counter', [[node, agent.controller.snapshot.transitions]]);
  metric('geminik8s_postgres_up', 'PostgreSQL answers queries.', 'gauge', [[node, o?.pg.up ? 1 : 0]]);
  metric('geminik8s_peer_reachable', 'The peer answered on a path.', 'gauge', [[{ ...node, path: 'api' }, o?.peer ? 1 : 0], [{ ...node, path: 'postgres' }, o?.peerPg.ok ? 1 : 0]]);
  metric('geminik8s_lease_held', 'This node holds the witness lease (its own fencing deadline has not passed).', 'gauge', [[node, lease.held ? 1 : 0]]);
  metric('geminik8s_lease_remaining_seconds', 'Time left before this node fences itself unless the witness renews its lease.', 'gauge', [[node, lease.msLeft / 1000]]);
  metric('geminik8s_vip_held', 'This node holds the VIP.', 'gauge', [[node, o?.vipHeld ? 1 : 0]]);
  metric('geminik8s_replication_degraded', 'Synchronous replication is switched off because the standby is lost.', 'gauge', [[node, o?.pg.up && !o.pg.inRecovery && !o.pg.synchronousStandbyNames ? 1 : 0]]);
  const sync = o?.pg.standby?.syncState;
  metric('geminik8s_standby_sync', 'The standby is synchronous (leader only).', 'gauge', [[node, sync === 'sync' ? 1 : 0]]);
  const lag = o ? lagBytes(o.pg) : null;
  if (lag !== null) metric('geminik8s_replication_lag_bytes', 'WAL bytes the standby has not replayed yet (leader only).', 'gauge', [[node, lag]]);
  const boot = agent.snapshot.boot;
  if (boot) {
    const slots = ['A', 'B'] as const;
    metric('geminik8s_boot_slot', 'The A/B slot this system booted from (1 for that slot).', 'gauge', slots.map((s) => [{ ...node, slot: s }, boot.booted === s ? 1 : 0]));
    metric('geminik8s_boot_active_slot', 'The active slot in the GRUB environment (1 for that slot).', 'gauge', slots.map((s) => [{ ...node, slot: s }, boot.active === s ? 1 : 0]));
    metric('geminik8s_boot_state', 'A/B boot state (1 for the current one).', 'gauge', (['steady', 'trying', 'fell-back', 'unknown'] as const).map((st) => [{ ...node, state: st }, boot.state === st ? 1 : 0]));
    metric('geminik8s_boot_trying', 'This boot is a try of a new slot, not blessed yet.', 'gauge', [[node, boot.state === 'trying' ? 1 : 0]]);
    metric('geminik8s_boot_fell_back', 'The last try ended without a bless: GRUB fell back to the active slot.', 'gauge', [[node, boot.state === 'fell-back' ? 1 : 0]]);
    if (boot.state === 'trying') {
      metric('geminik8s_boot_tries_left', 'Boots of the try slot GRUB still grants after this one.', 'gauge', [[node, boot.tryCount ?? 0]]);
      metric('geminik8s_boot_gate_ok', 'The health gate for blessing the try slot passes now.', 'gauge', [[node, boot.gate?.ok ? 1 : 0]]);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** Who may call the agent API: the peer agent, or an operator with the read or the admin token. */
export type Caller = 'peer' | 'read' | 'admin';

/** The caller a token identifies (Bearer, or Basic with the token as the password), if any. The witness's token is not one of them. */
export function callerOf(authorization: string | undefined, secrets: { agentToken: string; readToken: string; adminToken: string }): Caller | undefined {
  const header = authorization ?? '';
  let given: string;
  if (header.startsWith('Bearer ')) given = header.slice(7);
  else if (header.startsWith('Basic ')) {
    // A browser on the status page: any user name, the token as the password.
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return undefined;
    given = decoded.slice(colon + 1);
  } else return undefined;
  // Every comparison runs, so the time taken does not say which token came close.
  const peer = tokenMatches(given, secrets.agentToken);
  const read = tokenMatches(given, secrets.readToken);
  const admin = tokenMatches(given, secrets.adminToken);
  return peer ? 'peer' : admin ? 'admin' : read ? 'read' : undefined;
}

/** Largest request body the API reads; more is a 413 and the rest is not read. */
export const MAX_BODY_BYTES = 4096;

/** An answer with a status other than 200, raised from a handler. */
class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `request body is not JSON: ${(err as Error).message}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'request body must be a JSON object');
  return body as Record<string, unknown>;
}

/** Failed authentications per remote address: past the limit within the window, 429 without checking. */
export class AuthLimiter {
  private readonly failures = new Map<string, { since: number; count: number; logged: boolean }>();
  constructor(private readonly limit = 10, private readonly windowMs = 10_000, private readonly now = () => performance.now()) {}

  blocked(addr: string): boolean {
    const f = this.failures.get(addr);
    if (!f) return false;
    if (this.now() - f.since > this.windowMs) {
      this.failures.delete(addr);
      return false;
    }
    return f.count >= this.limit;
  }

  /** Count a failure; true when it should be logged (the first of each window). */
  fail(addr: string): boolean {
    const t = this.now();
    let f = this.failures.get(addr);
    if (!f || t - f.since > this.windowMs) {
      f = { since: t, count: 0, logged: false };
      this.failures.set(addr, f);
    }
    f.count++;
    if (f.logged) return false;
    f.logged = true;
    return true;
  }
}

interface Route {
  method: 'GET' | 'POST';
  /** Who may call it; empty: anyone (liveness only). */
  callers: Caller[];
  /** Changes something: every call is written to the audit log. */
  mutating?: boolean;
  handle: (req: IncomingMessage) => Promise<{ status: number; body: unknown; type?: string; stream?: StreamedBody; headers?: Record<string, string> }>;
}

/**
 * A 200 answer whose body is a stream (a base backup): after its last byte the trailer
 * `x-geminik8s-result` says `ok` or why it failed, so a client never takes a cut stream for a
 * whole one.
 */
export interface StreamedBody {
  source: NodeJS.ReadableStream;
  done: Promise<void>;
  headers: Record<string, string>;
  kill: () => void;
}

/** The trailer a streamed answer ends with. */
export const RESULT_TRAILER = 'x-geminik8s-result';

function sendStream(res: ServerResponse, s: StreamedBody): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-store', trailer: RESULT_TRAILER, ...s.headers });
  // A client gone mid-stream: stop the producer instead of filling a dead socket.
  res.on('close', () => {
    if (!res.writableFinished) s.kill();
  });
  s.source.on('error', () => s.kill());
  s.source.pipe(res, { end: false });
  s.source.on('end', () => {
    s.done.then(
      () => res.addTrailers({ [RESULT_TRAILER]: 'ok' }),
      (err: Error) => res.addTrailers({ [RESULT_TRAILER]: `failed: ${err.message.split('\n').slice(-3).join(' ').replace(/[^\x20-\x7e]/g, ' ').slice(0, 500)}` }),
    ).finally(() => res.end());
  });
}

/** Every endpoint of the agent API, with its method and who may call it. */
export function routes(agent: Agent): Record<string, Route> {
  const notReady = (): { status: number; body: unknown } | undefined =>
    // Between the listener opening and the state being read, there is nothing true to report yet.
    agent.meta ? undefined : { status: 503, body: { error: 'starting: the node state is not read yet' } };
  return {
    '/healthz': { method: 'GET', callers: [], handle: async () => ({ status: 200, body: { ok: true } }) },
    '/v1/status': { method: 'GET', callers: ['peer', 'read', 'admin'], handle: async () => notReady() ?? { status: 200, body: statusOf(agent) } },
    // The status page and what it reads: the whole pair as this node sees it.
    '/ui': {
      method: 'GET', callers: ['read', 'admin'],
      handle: async () => ({ status: 200, body: STATUS_PAGE_HTML, type: 'text/html; charset=utf-8', headers: { 'content-security-policy': statusPageCsp(), 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' } }),
    },
    // The upgrade's health gate, now, item by item (geminik8s check).
    '/v1/check': { method: 'GET', callers: ['read', 'admin'], handle: async () => notReady() ?? { status: 200, body: await agent.healthReport() } },
    // Memory, disk, link and the node's clock (geminik8s preflight); true before the state is read.
    '/v1/preflight': { method: 'GET', callers: ['read', 'admin'], handle: async () => ({ status: 200, body: await hostPreflight(agent.ctx) }) },
    '/v1/cluster': { method: 'GET', callers: ['read', 'admin'], handle: async () => notReady() ?? { status: 200, body: await clusterView(agent) } },
    '/metrics': { method: 'GET', callers: ['peer', 'read', 'admin'], handle: async () => notReady() ?? { status: 200, body: metricsOf(agent), type: 'text/plain; version=0.0.4' } },
    '/v1/switchover': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        await readJson(req);
        if (!agent.meta) return notReady()!;
        const r = await agent.switchover();
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
    // A bundle streamed in the body, written to the passive slot with its try armed (geminik8s upgrade).
    '/v1/upgrade/stage': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        const declared = req.headers['x-geminik8s-bundle-bytes'];
        const bytes = Number(declared);
        if (declared === undefined || !Number.isInteger(bytes) || bytes <= 0 || bytes > MAX_BUNDLE_BYTES) {
          throw new HttpError(400, `x-geminik8s-bundle-bytes: expected the bundle's size in bytes, at most ${MAX_BUNDLE_BYTES} (found ${JSON.stringify(declared) ?? 'nothing'})`);
        }
        const retry = req.headers['x-geminik8s-retry'];
        if (retry !== undefined && retry !== '0' && retry !== '1') throw new HttpError(400, `x-geminik8s-retry: expected 0 or 1 (found ${JSON.stringify(retry)})`);
        if (!agent.meta) return notReady()!;
        return stageHere(agent, req, bytes, retry === '1');
      },
    },
    // Reboot into a staged upgrade when the pair allows it (a leader switches over first).
    '/v1/upgrade/reboot': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        await readJson(req);
        if (!agent.meta) return notReady()!;
        const r = await agent.upgradeReboot();
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
    // Back to the version the other slot holds, then the same ordered reboot as an upgrade.
    '/v1/upgrade/rollback': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        if (body.reason !== undefined && (typeof body.reason !== 'string' || body.reason.length > 500)) {
          throw new HttpError(400, `reason: expected a string of at most 500 characters (found ${JSON.stringify(body.reason).slice(0, 60)})`);
        }
        if (!agent.meta) return notReady()!;
        const r = await agent.upgradeRollback((body.reason as string | undefined) || 'no reason given');
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
    // A base backup of the leader's primary, streamed (geminik8s backup).
    '/v1/backup': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        await readJson(req);
        if (!agent.meta) return notReady()!;
        const r = await startBackup(agent);
        if (!r.ok) return { status: 409, body: r };
        const { proc, identity } = r;
        return { status: 200, body: null, stream: { source: proc.stdout, done: proc.done, kill: () => proc.kill(), headers: { 'x-geminik8s-backup': JSON.stringify(identity) } } };
      },
    },
    // Replace the leader's data with a backup streamed in the body (geminik8s restore).
    '/v1/restore': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        if (!agent.meta) return notReady()!;
        const declared = req.headers['x-geminik8s-restore-bytes'];
        const bytes = declared === undefined ? undefined : Number(declared);
        if (bytes !== undefined && !(Number.isInteger(bytes) && bytes >= 0)) throw new HttpError(400, `x-geminik8s-restore-bytes: expected a byte count (found ${JSON.stringify(declared)})`);
        return restoreHere(agent, req, bytes);
      },
    },
    // Rebuild this follower's standby from the leader (after a restore).
    '/v1/reclone': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        await readJson(req);
        if (!agent.meta) return notReady()!;
        return recloneHere(agent);
      },
    },
    // An operator's forced failover onto this follower, the leader being gone (geminik8s failover --force).
    '/v1/force-promote': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        if (!Number.isInteger(body.generation) || (body.generation as number) < 0) {
          throw new HttpError(400, `generation: expected the witness generation the operator decided on, a non-negative integer (found ${JSON.stringify(body.generation) ?? 'nothing'})`);
        }
        if (!agent.meta) return notReady()!;
        const r = await agent.forcePromote(body.generation as number);
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
    // The peer was replaced by a new box at a new address (geminik8s replace-node): run on the survivor.
    '/v1/replace-peer': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        for (const key of ['name', 'ip'] as const) {
          if (typeof body[key] !== 'string' || body[key] === '') throw new HttpError(400, `${key}: expected the replaced node's ${key === 'name' ? 'name' : 'new IPv4 address'} (found ${JSON.stringify(body[key]) ?? 'nothing'})`);
        }
        if (body.mac !== undefined && typeof body.mac !== 'string') throw new HttpError(400, `mac: expected a MAC address such as 52:54:00:12:34:56 (found ${JSON.stringify(body.mac)})`);
        if (!agent.meta) return notReady()!;
        return replacePeerHere(agent, body.name as string, body.ip as string, body.mac as string | undefined);
      },
    },
    // This node's new certificate and key from the cluster CA (geminik8s certs rotate).
    '/v1/tls': {
      method: 'POST', callers: ['admin'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        for (const key of ['cert', 'key'] as const) {
          if (typeof body[key] !== 'string' || body[key] === '') throw new HttpError(400, `${key}: expected this node's new ${key === 'cert' ? 'certificate' : 'private key'} as PEM text`);
        }
        if (body.k3s !== undefined && typeof body.k3s !== 'boolean') throw new HttpError(400, `k3s: expected true or false (found ${JSON.stringify(body.k3s)})`);
        if (!agent.meta) return notReady()!;
        return rotateTlsHere(agent, body.cert as string, body.key as string, body.k3s === true);
      },
    },
    // The switchover handshake between the two agents: never an operator's call.
    '/v1/promote': {
      method: 'POST', callers: ['peer'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        let lsn: bigint;
        try {
          lsn = lsnToBigInt(String(body.lsn));
        } catch {
          throw new HttpError(400, `lsn: expected a WAL position such as "0/16B3748" (found ${JSON.stringify(body.lsn) ?? 'nothing'})`);
        }
        if (!Number.isInteger(body.generation) || (body.generation as number) < 0) {
          throw new HttpError(400, `generation: expected a non-negative integer (found ${JSON.stringify(body.generation) ?? 'nothing'})`);
        }
        if (!agent.meta) return notReady()!;
        const r = await agent.promoteOnRequest({ lsn, generation: body.generation as number });
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
    // The peer's standby stops cleanly: synchronous commit off before it goes (docs/failover.md).
    '/v1/leave': {
      method: 'POST', callers: ['peer'], mutating: true,
      handle: async (req) => {
        const body = await readJson(req);
        if (!Number.isInteger(body.generation) || (body.generation as number) < 0) {
          throw new HttpError(400, `generation: expected a non-negative integer (found ${JSON.stringify(body.generation) ?? 'nothing'})`);
        }
        if (!agent.meta) return notReady()!;
        const r = await agent.standbyLeaving({ generation: body.generation as number });
        return { status: r.ok ? 200 : 409, body: r };
      },
    },
  };
}

/** One JSON line per mutating call: who, what, when, result. 0600, appended. */
async function audit(file: string, entry: Record<string, unknown>): Promise<void> {
  await appendFile(file, `${JSON.stringify(entry)}\n`, { mode: 0o600 });
}

/** The agent's HTTP API: /healthz open (liveness only); every other endpoint names the callers it accepts. */
export function startApi(agent: Agent, limiter = new AuthLimiter()): Promise<Server> {
  const { ctx } = agent;
  const table = routes(agent);
  const auditFile = join(ctx.config.stateDir, 'audit.log');
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const send = (code: number, body: unknown, type = 'application/json', extra: Record<string, string> = {}): void => {
      if (res.headersSent) return;
      res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store', ...extra });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    const path = (req.url ?? '/').split('?')[0]!;
    const addr = req.socket.remoteAddress ?? 'unknown';
    const route = Object.hasOwn(table, path) ? table[path] : undefined;
    if (!route) return send(404, { error: `no such endpoint: ${path}` });
    if (req.method !== route.method) return send(405, { error: `${path} accepts ${route.method} only` }, 'application/json', { allow: route.method });
    let caller: Caller | 'anyone' | 'nobody' = route.callers.length > 0 ? 'nobody' : 'anyone';
    let status = 500;
    let reply: { body: unknown; type?: string; stream?: StreamedBody; headers?: Record<string, string> } = { body: { error: 'internal error' } };
    // The answer goes out after the audit entry is written: a caller never sees the result of
    // a call the trail does not hold yet.
    const answer = (code: number, body: unknown, type?: string, stream?: StreamedBody, headers?: Record<string, string>): void => {
      status = code;
      reply = { body, type, stream, headers };
    };
    try {
      if (route.callers.length > 0) {
        if (limiter.blocked(addr)) return answer(429, { error: 'too many failed authentications from this address; try again later' });
        const who = callerOf(req.headers.authorization, ctx.secrets);
        if (!who) {
          // The presented credential is never logged, only that it failed and from where.
          if (limiter.fail(addr)) agent.log.warn({ event: 'auth-failed', from: addr, path }, `refused ${req.method} ${path} from ${addr}: missing or wrong bearer token`);
          return answer(401, { error: 'missing or wrong bearer token' });
        }
        caller = who;
        if (who === 'peer' && ctx.tls) {
          // The agent token alone is in every seed: the peer must also prove itself with its certificate.
          const id = peerIdentity(req.socket);
          if (id?.cluster !== ctx.spec.name || id.name !== ctx.peer.name) {
            if (limiter.fail(addr)) agent.log.warn({ event: 'auth-failed', from: addr, path }, `refused ${req.method} ${path} from ${addr}: the agent token without ${ctx.peer.name}'s client certificate`);
            return answer(403, { error: `the peer credential needs ${ctx.peer.name}'s client certificate from the cluster CA` });
          }
        }
        if (!route.callers.includes(who)) return answer(403, { error: `${req.method} ${path} is for ${route.callers.join(' or ')}, not for the ${who} credential` });
      }
      const r = await route.handle(req);
      answer(r.status, r.body, r.type, r.stream, r.headers);
    } catch (err) {
      if (err instanceof HttpError) {
        answer(err.status, { error: err.message });
      } else {
        agent.log.error({ err: (err as Error).message, path }, 'API request failed');
        answer(500, { error: (err as Error).message });
      }
    } finally {
      // Refused calls too: an audit trail that only shows what succeeded hides the probing.
      if (route.mutating) {
        const entry = { at: new Date().toISOString(), from: addr, who: caller, what: `${req.method} ${path}`, status };
        agent.log.info({ event: 'audit', ...entry }, `audit: ${entry.what} by ${caller} from ${addr} -> ${status}`);
        await audit(auditFile, entry).catch((err: Error) => agent.log.error({ event: 'audit', err: err.message }, 'could not append to the audit log'));
      }
      if (reply.stream) sendStream(res, reply.stream);
      // A browser asked for the status page gets the Basic prompt (the token as the password).
      else send(status, reply.body, reply.type, { ...(status === 401 ? { 'www-authenticate': 'Basic realm="geminik8s", charset="UTF-8"' } : {}), ...reply.headers });
    }
  };
  const { host } = ctx.config.listen;
  const tls = apiScheme(ctx) === 'https' ? ctx.tls! : undefined;
  // A client certificate is asked for, not required: operators authenticate with a token, the
  // peer with its certificate and token (checked per call above).
  // No limit on receiving a whole request: a restore's body is a database. Headers still must
  // arrive within headersTimeout, and an unauthenticated call is answered before its body.
  // The peer keeps its connection for status checks warm between rounds (WarmPool).
  const make = (): Server => (tls
    ? createHttpsServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: false, requestTimeout: 0, keepAliveTimeout: SERVER_KEEP_ALIVE_MS }, (q, s) => void handler(q, s))
    : createHttpServer({ requestTimeout: 0, keepAliveTimeout: SERVER_KEEP_ALIVE_MS }, (q, s) => void handler(q, s)));
  const listen = (server: Server, address: string): Promise<Server> => new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(agent.ctx.apiPort, address, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
  const servers: Server[] = [];
  const tracked = (): Server => {
    const server = make();
    servers.push(server);
    return server;
  };
  // A rotated certificate is served from the next handshake on: no restart, no dropped connection.
  if (tls) agent.tlsListeners.push((next) => {
    for (const server of servers) (server as unknown as TlsServer).setSecureContext({ cert: next.cert, key: next.key, ca: next.ca });
  });
  if (host) return listen(tracked(), host);
  // The node's own address and loopback, not every interface (the VIP, a management NIC).
  const local = tracked();
  const own = tracked();
  local.on('close', () => own.close());
  return listen(local, '127.0.0.1').then(async (server) => {
    try {
      await listen(own, ctx.self.ip);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRNOTAVAIL') {
        server.close();
        throw err;
      }
      // Early in boot the address may not be configured yet: keep trying rather than give up.
      agent.log.warn({ event: 'api', address: ctx.self.ip }, `${ctx.self.ip} is not configured yet: the API listens on 127.0.0.1 only until it is`);
      const retry = (): void => {
        setTimeout(() => {
          if (!local.listening) return;
          listen(own, ctx.self.ip).then(
            () => agent.log.info({ event: 'api', address: ctx.self.ip }, `the API listens on ${ctx.self.ip} too`),
            () => retry(),
          );
        }, 1000).unref();
      };
      retry();
    }
    return server;
  });
}
