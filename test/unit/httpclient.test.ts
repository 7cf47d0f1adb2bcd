import test from 'ava';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { httpCall, WarmPool } from '#common/httpclient.ts';

/** A server that answers after `delays[i]` ms for its i-th request and counts the connections it accepted. */
async function slowServer(delays: number[]): Promise<{ url: string; connections: () => number; close: () => Promise<void> }> {
  let n = 0;
  let conns = 0;
  const server: Server = createServer((req, res) => {
    const wait = delays[n++] ?? 0;
    setTimeout(() => res.end('ok'), wait);
  });
  server.on('connection', () => conns++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    connections: () => conns,
    close: () => new Promise((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('a lingering call fails at its timeout but keeps its connection for the next call', async (t) => {
  const s = await slowServer([400, 0, 0]);
  const pool = new WarmPool(5000);
  try {
    await t.throwsAsync(httpCall(s.url, { timeoutMs: 100, pool, linger: true }), { message: /no answer within 100 ms/ });
    await sleep(600); // the late answer arrives and frees the connection
    t.is((await httpCall(s.url, { timeoutMs: 1000, pool, linger: true })).text, 'ok');
    t.is((await httpCall(s.url, { timeoutMs: 1000, pool })).text, 'ok');
    t.is(s.connections(), 1, 'one connection for all three calls');
  } finally {
    pool.destroy();
    await s.close();
  }
});

test('a pooled call that may not linger is torn down at its timeout: the next call connects anew', async (t) => {
  const s = await slowServer([400, 0]);
  const pool = new WarmPool(5000);
  try {
    await t.throwsAsync(httpCall(s.url, { timeoutMs: 100, pool }), { message: /no answer within 100 ms/ });
    await sleep(600);
    t.is((await httpCall(s.url, { timeoutMs: 1000, pool })).text, 'ok');
    t.is(s.connections(), 2);
  } finally {
    pool.destroy();
    await s.close();
  }
});

test('a lingering request is torn down after the pool lingerMs', async (t) => {
  const s = await slowServer([3000, 0]);
  const pool = new WarmPool(300);
  try {
    await t.throwsAsync(httpCall(s.url, { timeoutMs: 100, pool, linger: true }), { message: /no answer within 100 ms/ });
    await sleep(600);
    t.is((await httpCall(s.url, { timeoutMs: 1000, pool, linger: true })).text, 'ok');
    t.is(s.connections(), 2, 'the first connection was closed at 100 + 300 ms, before its answer');
  } finally {
    pool.destroy();
    await s.close();
  }
});
