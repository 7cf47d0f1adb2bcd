import { httpCall, type ClientTls } from '#common/httpclient.ts';

/** The part of a fetch Response the API tests read. */
export interface FetchedAnswer {
  status: number;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
  json(): Promise<unknown>;
}

/**
 * fetch() over common/httpclient with the cluster CA and, when given, a client certificate:
 * what the agent API and the witness are called with (fetch itself cannot take a CA or a
 * client certificate).
 */
export function tlsFetch(tls: ClientTls | undefined) {
  return async (url: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<FetchedAnswer> => {
    const r = await httpCall(url, {
      method: (init.method ?? 'GET') as 'GET' | 'POST',
      headers: init.headers ?? {},
      ...(init.body !== undefined ? { body: init.body } : {}),
      timeoutMs: 10_000,
      ...(tls ? { tls } : {}),
    });
    return {
      status: r.status,
      headers: { get: (name: string) => { const v = r.headers[name.toLowerCase()]; return v === undefined ? null : String(v); } },
      text: async () => r.text,
      json: async () => JSON.parse(r.text) as unknown,
    };
  };
}
