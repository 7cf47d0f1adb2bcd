import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { LogPort, WitnessPort } from '../core/ports.ts';
import { parseRequest, type ArbiterAnswer, type ArbiterRequest } from './arbiter.ts';
import { CLUSTER_NAME } from './file-store.ts';
import type { WitnessService } from './service.ts';
import { tokenMatches } from '#common/token.ts';
import { httpCall, SERVER_KEEP_ALIVE_MS, WarmPool, type ClientTls } from '#common/httpclient.ts';
import { peerIdentity, type TlsMaterial } from '#common/tls.ts';
import { createServer as createHttpsServer } from 'node:https';

/** Largest request body the witness reads. */
export const MAX_BODY_BYTES = 4096;

export interface WitnessHttpOptions {
  host: string;
  port: number;
  token: string;
  service: WitnessService;
  log: LogPort;
  /**
   * The witness's certificate and key and the cluster CA it trusts. With it a lease call is
   * answered only over a connection with a node certificate from that CA, for that node (its CN)
   * of that cluster (its O); reading the record needs the token only. Without it: plain HTTP,
   * development only.
   */
  tls?: TlsMaterial;
}

function tokenOk(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  return tokenMatches(m?.[1] ?? '', token);
}

class BodyTooLarge extends Error {}

async function readBody(req: IncomingMessage): Promise<string> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) throw new BodyTooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new BodyTooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The witness's HTTP face:
 * - `POST /v1/clusters/<cluster>/arbiter` (bearer token): an ArbiterRequest → 200 with the
 *   ArbiterAnswer, also when it refuses (the answer says why); 400 for a bad body, 413 above
 *   4096 bytes, 503 when the record could not be made durable (and no answer at all then);
 * - `GET /v1/clusters/<cluster>` (bearer token): the durable record;
 * - `GET /healthz`: open.
 */
export function startWitnessHttp(opts: WitnessHttpOptions): Promise<Server> {
  const { service, log } = opts;
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const send = (code: number, body: unknown, extra: Record<string, string> = {}): void => {
      if (res.headersSent) return;
      res.writeHead(code, { 'content-type': 'application/json', 'cache-control': 'no-store', ...extra });
      res.end(JSON.stringify(body));
    };
    const path = (req.url ?? '/').split('?')[0]!;
    if (path === '/healthz') return req.method === 'GET' ? send(200, { ok: true }) : send(405, { error: 'method not allowed' });
    if (!tokenOk(req.headers.authorization, opts.token)) return send(401, { error: 'missing or wrong bearer token' });
    // A verified client certificate: a node's (the CA issues client certificates to the nodes only).
    const id = opts.tls ? peerIdentity(req.socket) : undefined;
    const m = /^\/v1\/clusters\/([^/]+)(\/arbiter)?$/.exec(path);
    if (!m) return send(404, { error: 'not found' });
    let cluster: string;
    try {
      cluster = decodeURIComponent(m[1]!);
    } catch {
      return send(400, { error: 'bad cluster name' });
    }
    if (!CLUSTER_NAME.test(cluster)) return send(400, { error: 'the cluster name must be a DNS label' });
    if (!m[2]) {
      if (req.method !== 'GET') return send(405, { error: 'method not allowed' });
      const record = service.record(cluster);
      return record ? send(200, record) : send(404, { error: `no record for cluster ${cluster}` });
    }
    if (req.method !== 'POST') return send(405, { error: 'method not allowed' });
    let body: string;
    try {
      body = await readBody(req);
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        // Answer now and close: the rest of the body is not worth reading.
        send(413, { error: `the body exceeds ${MAX_BODY_BYTES} bytes` }, { connection: 'close' });
        req.resume();
        return;
      }
      throw err;
    }
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      return send(400, { error: 'the body must be JSON' });
    }
    const parsed = parseRequest(json);
    if (typeof parsed === 'string') return send(400, { error: parsed });
    // Reading needs the token only; a lease call needs that node's own certificate of this cluster.
    if (opts.tls && parsed.op !== 'read' && (id?.cluster !== cluster || parsed.node !== id.name)) {
      const shown = id ? `${id.name ?? '?'} of cluster ${id.cluster ?? '?'}` : 'none';
      log.warn({ event: 'witness-auth', cluster, op: parsed.op, claimed: parsed.node, certificate: shown }, `refused ${parsed.op} for ${parsed.node} of ${cluster}: client certificate ${shown}`);
      return send(403, { error: `a node may only speak for itself: the request is for ${parsed.node} of cluster ${cluster}, the client certificate names ${shown}` });
    }
    let answer: ArbiterAnswer;
    try {
      answer = await service.handle(cluster, parsed);
    } catch (err) {
      // The record could not be made durable: promise nothing.
      log.error({ event: 'witness-store', cluster, op: parsed.op, err: (err as Error).message }, 'witness could not persist its record; request refused');
      return send(503, { error: 'the witness could not persist its record' });
    }
    return send(200, answer);
  };
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    handler(req, res).catch((err: Error) => {
      log.error({ event: 'witness-http', err: err.message }, 'witness request failed');
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'internal error' }));
      } else res.destroy();
    });
  };
  const server = opts.tls
    ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key, ca: opts.tls.ca, requestCert: true, rejectUnauthorized: false }, onRequest)
    : createServer(onRequest);
  server.requestTimeout = 10_000;
  server.headersTimeout = 5000;
  // The agents keep their connections to us warm between rounds (WarmPool).
  server.keepAliveTimeout = SERVER_KEEP_ALIVE_MS;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

const ANSWER_CODES = new Set(['granted', 'renewed', 'set', 'released', 'recorded', 'forced', 'read', 'held', 'not-promotable', 'stale', 'not-holder', 'invalid']);

/** Check the shape of an answer from the wire. */
export function isArbiterAnswer(v: unknown): v is ArbiterAnswer {
  if (typeof v !== 'object' || v === null) return false;
  const a = v as Record<string, unknown>;
  const name = (x: unknown): boolean => x === null || typeof x === 'string';
  return typeof a.ok === 'boolean' && typeof a.code === 'string' && ANSWER_CODES.has(a.code) && Number.isInteger(a.generation) && name(a.holder) && name(a.promotable)
    && typeof a.remainingMs === 'number' && (a.lease === undefined || Number.isInteger(a.lease)) && typeof a.reason === 'string';
}

/** Whether a timed-out request may still reach the witness later (see httpWitnessPort). */
export const lingers = (req: ArbiterRequest): boolean => req.op === 'acquire' || req.op === 'read';

/**
 * The agent's WitnessPort over HTTP. Throws on a network error, a timeout or any status but 200.
 * `tls` may be a function, read at each call: the agent's certificate can be rotated while it runs.
 * Connections stay open between calls. A timed-out `acquire` (a renewal, a takeover) or `read`
 * keeps its connection and may still reach the witness later: the arbiter answers a late
 * renewal or takeover as it would a timely one whose answer was lost, which the agent already
 * has to survive. Other requests are torn down at their timeout, so a late one cannot land
 * after a newer one (a stale `promotable` overwriting a newer record).
 */
export function httpWitnessPort(url: string, token: string, cluster: string, timeoutMs: number, tls?: ClientTls | (() => ClientTls | undefined)): WitnessPort {
  const endpoint = new URL(`/v1/clusters/${encodeURIComponent(cluster)}/arbiter`, url);
  const pool = new WarmPool();
  return {
    async call(req: ArbiterRequest): Promise<ArbiterAnswer> {
      const clientTls = typeof tls === 'function' ? tls() : tls;
      let res: { status: number; text: string };
      try {
        res = await httpCall(endpoint, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify(req),
          timeoutMs,
          pool,
          linger: lingers(req),
          ...(clientTls ? { tls: clientTls } : {}),
        });
      } catch (err) {
        throw new Error(`witness ${endpoint.origin} unreachable: ${(err as Error).message}`);
      }
      const { text } = res;
      if (res.status !== 200) throw new Error(`witness answered ${res.status}: ${text.slice(0, 200)}`);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw new Error('witness answered 200 with a body that is not JSON');
      }
      if (!isArbiterAnswer(body)) throw new Error('witness answered 200 with something that is not an arbiter answer');
      return body;
    },
  };
}
