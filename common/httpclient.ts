import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';

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
}

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
    const options = { method: call.method ?? 'GET', headers, timeout: call.timeoutMs };
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
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), headers: res.headers });
      });
      res.on('error', (err) => fail(err));
    };
    const req = https
      ? httpsRequest(u, { ...options, ca: call.tls!.ca, ...(call.tls!.cert ? { cert: call.tls!.cert, key: call.tls!.key } : {}) }, onAnswer)
      : httpRequest(u, options, onAnswer);
    const fail = (err: Error): void => {
      clearTimeout(deadline);
      reject(err);
    };
    // `timeout` only covers idle sockets; this bounds the whole call.
    const deadline = setTimeout(() => req.destroy(new Error(`no answer within ${call.timeoutMs} ms`)), call.timeoutMs);
    req.on('timeout', () => req.destroy(new Error(`no answer within ${call.timeoutMs} ms`)));
    req.on('error', fail);
    req.end(call.body);
  });
}
