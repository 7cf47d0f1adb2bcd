import { timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';

/** A lease held at the witness: whoever holds it may act as the only writable primary. */
interface Lease {
  holder: string;
  expiresAt: number;
}

export interface WitnessServerOptions {
  host: string;
  port: number;
  token: string;
  /** Monotonic clock, injectable for tests. */
  now?: () => number;
}

function tokenOk(header: string | undefined, token: string): boolean {
  const given = Buffer.from(header?.replace(/^Bearer\s+/i, '') ?? '');
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

/**
 * The geminik8s witness: a third party that grants one lease per cluster. Expiry is measured
 * on the witness's own monotonic clock from the moment a request arrives, so a holder that
 * counts from the moment it sent the request always gives the lease up first.
 */
export function startWitnessServer(opts: WitnessServerOptions): Promise<Server> {
  const now = opts.now ?? (() => performance.now());
  const leases = new Map<string, Lease>();
  const server = createServer((req, res) => {
    const arrived = now();
    const send = (code: number, body: unknown): void => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/healthz') return send(200, { ok: true });
    if (!tokenOk(req.headers.authorization, opts.token)) return send(401, { error: 'unauthorized' });
    if (req.method !== 'POST' || req.url !== '/v1/lease') return send(404, { error: 'not found' });
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
      if (body.length > 4096) req.destroy();
    });
    req.on('end', () => {
      let parsed: { cluster?: unknown; node?: unknown; ttlMs?: unknown; release?: unknown };
      try {
        parsed = JSON.parse(body) as typeof parsed;
      } catch {
        return send(400, { error: 'body must be JSON' });
      }
      const { cluster, node, ttlMs } = parsed;
      if (typeof cluster !== 'string' || typeof node !== 'string' || typeof ttlMs !== 'number' || ttlMs <= 0 || ttlMs > 600_000) {
        return send(400, { error: 'expected {cluster, node, ttlMs}' });
      }
      const current = leases.get(cluster);
      if (parsed.release === true) {
        if (current?.holder === node) leases.delete(cluster);
        return send(200, { granted: false, released: true });
      }
      if (!current || current.holder === node || current.expiresAt <= arrived) {
        leases.set(cluster, { holder: node, expiresAt: arrived + ttlMs });
        return send(200, { granted: true, holder: node, ttlMs });
      }
      return send(409, { granted: false, holder: current.holder, remainingMs: Math.round(current.expiresAt - arrived) });
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve(server));
  });
}

/** Ask the witness for (or renew) the lease. Resolves with the local deadline when granted. */
export async function requestLease(url: string, token: string, cluster: string, node: string, ttlMs: number, timeoutMs: number): Promise<{ granted: boolean; deadline?: number; holder?: string }> {
  const sentAt = performance.now();
  const res = await fetch(new URL('/v1/lease', url), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ cluster, node, ttlMs }),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const body = (await res.json()) as { granted?: boolean; holder?: string };
  if (res.status === 200 && body.granted) return { granted: true, deadline: sentAt + ttlMs, holder: node };
  if (res.status === 409) return { granted: false, holder: body.holder };
  throw new Error(`witness answered ${res.status}`);
}
