import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

/** How to reach a party over TLS: trust only the cluster CA; present a client certificate when given. */
export interface ClientTls {
  ca: string;
  cert?: string;
  key?: string;
}

export interface HttpCall {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  timeoutMs: number;
  /** Required for an https URL: there is no fallback to the platform's trust store. */
  tls?: ClientTls;
  /** Connections kept open between calls to one party (see WarmPool). */
  pool?: WarmPool;
  /**
   * With a pool: on timeout, fail the call but let the request finish for up to the pool's
   * lingerMs, keeping its connection. Only for requests that are harmless when they arrive late
   * or after a later one (a read, a lease renewal); any other request is torn down at its timeout.
   */
  linger?: boolean;
}

/** How long a timed-out lingering request may still finish, by default. */
export const LINGER_MS = 10_000;

/**
 * Kept-alive connections to one party, which a timed-out call marked `linger` does not tear
 * down: the call fails at its own timeout, but its request may go on for `lingerMs` more, and
 * when the answer comes the connection goes back to the pool warm. On a slow link (400 ms round
 * trips) a new connection costs three round trips (TCP, TLS, the request) and a reused one
 * costs one, so closing the connection on each timeout would make every later call time out too.
 */
export class WarmPool {
  readonly http: HttpAgent;
  readonly https: HttpsAgent;
  constructor(readonly lingerMs = LINGER_MS, maxSockets = 4) {
    // fifo: calls take turns on the open connections, so none sits idle long enough for the
    // server to close it; idle ones are closed by us (30 s) before the server would (65 s).
    const options = { keepAlive: true, scheduling: 'fifo' as const, maxSockets, timeout: 30_000 };
    this.http = new HttpAgent(options);
    this.https = new HttpsAgent(options);
  }

  destroy(): void {
    this.http.destroy();
    this.https.destroy();
  }
}

/** How long a server keeps an idle kept-alive connection: longer than a WarmPool keeps one. */
export const SERVER_KEEP_ALIVE_MS = 65_000;

/** Largest answer read; more is an error (no party of ours answers more than a status page). */
export const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

/**
 * One request to an agent or the witness, over http or https (node:https, because fetch cannot
 * take a CA or a client certificate). Throws with the reason when no complete answer arrives:
 * refused, timed out, or a certificate that does not verify against the cluster CA.
 */
export function httpCall(url: string | URL, call: HttpCall): Promise<{ status: number; text: string; headers: IncomingHttpHeaders }> {
  const u = new URL(url);
  const https = u.protocol === 'https:';
  if (!https && u.protocol !== 'http:') return Promise.reject(new Error(`${u.origin}: only http and https URLs are supported`));
  if (https && !call.tls) return Promise.reject(new Error(`${u.origin}: an https call needs the cluster CA`));
  return new Promise((resolve, reject) => {
    const headers = { ...call.headers, ...(call.body !== undefined ? { 'content-length': String(Buffer.byteLength(call.body)) } : {}) };
    const pool = call.pool;
    const linger = pool && call.linger ? pool.lingerMs : 0;
    const options = { method: call.method ?? 'GET', headers, timeout: Math.max(linger, call.timeoutMs), ...(pool ? { agent: https ? pool.https : pool.http } : {}) };
    const onAnswer = (res: IncomingMessage): void => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_ANSWER_BYTES) {
          req.destroy(new Error(`answer larger than ${MAX_ANSWER_BYTES} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => {
        clearTimeout(deadline);
        clearTimeout(lingering);
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), headers: res.headers });
      });
      res.on('error', (err) => fail(err));
    };
    const req = https
      ? httpsRequest(u, { ...options, ca: call.tls!.ca, ...(call.tls!.cert ? { cert: call.tls!.cert, key: call.tls!.key } : {}) }, onAnswer)
      : httpRequest(u, options, onAnswer);
    let lingering: NodeJS.Timeout | undefined;
    const fail = (err: Error): void => {
      clearTimeout(deadline);
      clearTimeout(lingering);
      reject(err);
    };
    const late = new Error(`no answer within ${call.timeoutMs} ms`);
    // `timeout` only covers idle sockets; this bounds the whole call. Lingering, the call fails
    // now and its request may finish later (nobody reads the answer), up to `linger` ms.
    const deadline = setTimeout(() => {
      if (!linger) return req.destroy(late);
      reject(late);
      lingering = setTimeout(() => req.destroy(late), linger);
      lingering.unref();
    }, call.timeoutMs);
    req.on('timeout', () => req.destroy(late));
    req.on('error', fail);
    req.end(call.body);
  });
}

/** A streamed answer: the body is read by the caller; `trailers` once it has ended. */
export interface StreamedAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: IncomingMessage;
  /** The trailers, after the body has been read to its end; rejects when the stream broke. */
  ended: Promise<Record<string, string | undefined>>;
}

/**
 * One request whose answer is streamed (a backup), with the same TLS rules as `httpCall`.
 * `connectTimeoutMs` bounds the wait for the answer's head; after that a stalled body fails
 * after `idleTimeoutMs` without a byte.
 */
export function httpStream(url: string | URL, call: Omit<HttpCall, 'timeoutMs' | 'body'> & { body?: string | AsyncIterable<Uint8Array>; connectTimeoutMs: number; idleTimeoutMs: number }): Promise<StreamedAnswer> {
  const u = new URL(url);
  const https = u.protocol === 'https:';
  if (!https && u.protocol !== 'http:') return Promise.reject(new Error(`${u.origin}: only http and https URLs are supported`));
  if (https && !call.tls) return Promise.reject(new Error(`${u.origin}: an https call needs the cluster CA`));
  return new Promise((resolve, reject) => {
    const streamed = call.body !== undefined && typeof call.body !== 'string';
    const headers = { ...call.headers, ...(typeof call.body === 'string' ? { 'content-length': String(Buffer.byteLength(call.body)) } : {}) };
    const options = { method: call.method ?? 'GET', headers, timeout: call.idleTimeoutMs };
    const onAnswer = (res: IncomingMessage): void => {
      clearTimeout(deadline);
      const ended = new Promise<Record<string, string | undefined>>((ok, fail) => {
        res.once('end', () => ok(res.trailers));
        res.once('error', fail);
        res.once('aborted', () => fail(new Error('the connection broke before the end of the answer')));
        res.once('close', () => {
          if (!res.complete) fail(new Error('the connection broke before the end of the answer'));
        });
      });
      ended.catch(() => undefined);
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res, ended });
    };
    const req = https
      ? httpsRequest(u, { ...options, ca: call.tls!.ca, ...(call.tls!.cert ? { cert: call.tls!.cert, key: call.tls!.key } : {}) }, onAnswer)
      : httpRequest(u, options, onAnswer);
    let deadline = setTimeout(() => req.destroy(new Error(`no answer within ${call.connectTimeoutMs} ms`)), call.connectTimeoutMs);
    req.on('timeout', () => req.destroy(new Error(`nothing received for ${call.idleTimeoutMs} ms`)));
    req.on('error', (err) => {
      clearTimeout(deadline);
      reject(err);
    });
    if (!streamed) {
      req.end(call.body as string | undefined);
      return;
    }
    // A streamed body: the answer may only come once it is all sent (a restore), so the
    // deadline for the answer's head starts after the last byte.
    clearTimeout(deadline);
    void (async () => {
      try {
        for await (const chunk of call.body as AsyncIterable<Uint8Array>) {
          if (req.destroyed) return;
          // Drained, or closed (the server answered early and hung up): never wait forever.
          if (!req.write(chunk)) {
            // Both listeners go once either fires: a long upload waits for drain thousands of times.
            await new Promise<void>((r) => {
              const done = (): void => {
                req.off('drain', done);
                req.off('close', done);
                r();
              };
              req.once('drain', done);
              req.once('close', done);
            });
          }
        }
        req.end();
        deadline = setTimeout(() => req.destroy(new Error(`no answer within ${call.connectTimeoutMs} ms of the end of the request`)), call.connectTimeoutMs);
      } catch (err) {
        req.destroy(err as Error);
      }
    })();
  });
}
