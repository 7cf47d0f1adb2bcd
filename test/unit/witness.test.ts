import test from 'ava';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { request, type Server } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { LogPort } from '#agent/core/ports.ts';
import { arbitrate, emptyRecord, restoredState, type ArbiterRecord, type ArbiterRequest, type ArbiterState } from '#agent/witness/arbiter.ts';
import { FileRecordStore } from '#agent/witness/file-store.ts';
import { httpWitnessPort, startWitnessHttp } from '#agent/witness/http.ts';
import { WitnessService, type RecordStore } from '#agent/witness/service.ts';
import { fakeCa, fakeTls, tempDir } from '../helpers/fixtures.ts';
import { issueCa, issueLeaf } from '#common/tls.ts';
import { expiredLeaf } from '../helpers/expired-cert.ts';

const TTL = 6000;
const MARGIN = 2000;

/** Apply requests in order at the given times; returns every result. */
function run(steps: [number, ArbiterRequest][], start: ArbiterState = { record: emptyRecord('site-a'), expiresAt: 0 }) {
  let state = start;
  return steps.map(([now, req]) => {
    const r = arbitrate(state, req, now);
    state = r.state;
    return r;
  });
}

const boot = (node = 'a', ttlMs = TTL): ArbiterRequest => ({ op: 'acquire', node, generation: 0, ttlMs, bootstrap: true });
const acquire = (node: string, generation: number, ttlMs = TTL): ArbiterRequest => ({ op: 'acquire', node, generation, ttlMs });
const promotable = (node: string, generation: number, p: string | null): ArbiterRequest => ({ op: 'promotable', node, generation, promotable: p });

// --- the arbiter's rules (pure) -------------------------------------------------------------

test('bootstrap: only a bootstrap request takes the first lease, at generation 1, nobody promotable', (t) => {
  const [plain, first, again] = run([[0, acquire('b', 0)], [10, boot('a')], [20, boot('b')]]);
  t.like(plain!.answer, { ok: false, code: 'not-promotable', generation: 0, holder: null });
  t.false(plain!.persist);
  t.like(first!.answer, { ok: true, code: 'granted', generation: 1, holder: 'a', promotable: null, remainingMs: TTL });
  t.true(first!.persist, 'a grant is persisted before it is answered');
  t.like(again!.answer, { ok: false, code: 'held', holder: 'a' }, 'a second bootstrap while the lease runs is refused');
});

test('renew: the holder at its generation extends the lease from now; persisted only when the ttl grows', (t) => {
  const [, renew, longer] = run([[0, boot('a')], [4000, acquire('a', 1)], [5000, acquire('a', 1, TTL * 2)]]);
  t.like(renew!.answer, { ok: true, code: 'renewed', generation: 1, remainingMs: TTL });
  t.is(renew!.state.expiresAt, 4000 + TTL);
  t.false(renew!.persist);
  t.like(longer!.answer, { ok: true, code: 'renewed', remainingMs: TTL * 2 });
  t.true(longer!.persist, 'a longer ttl is part of the restart guard: it must be durable');
  t.is(longer!.state.record.ttlMs, TTL * 2);
});

test('stale generation: the holder asking with another generation is refused', (t) => {
  const [, old, future] = run([[0, boot('a')], [100, acquire('a', 0)], [200, acquire('a', 7)]]);
  t.like(old!.answer, { ok: false, code: 'stale', generation: 1 });
  t.like(future!.answer, { ok: false, code: 'stale', generation: 1 });
  t.is(old!.state.expiresAt, TTL, 'a refused renewal does not extend the lease');
});

test('held: another node cannot take a running lease, even when it is the promotable standby', (t) => {
  const [, , held] = run([[0, boot('a')], [10, promotable('a', 1, 'b')], [TTL - 1, acquire('b', 1)]]);
  t.like(held!.answer, { ok: false, code: 'held', holder: 'a', promotable: 'b', remainingMs: 1 });
  t.false(held!.persist);
});

test('not-promotable: after expiry nobody takes the lease when the leader recorded nobody', (t) => {
  const [, , , refused] = run([[0, boot('a')], [10, promotable('a', 1, 'b')], [20, promotable('a', 1, null)], [TTL * 10, acquire('b', 1)]]);
  t.like(refused!.answer, { ok: false, code: 'not-promotable', holder: 'a', promotable: null });
  t.regex(refused!.answer.reason, /nobody may be promoted/);
});

test('handover: only the recorded promotable standby, only after expiry, at generation + 1', (t) => {
  const r = run([
    [0, boot('a')],
    [10, promotable('a', 1, 'b')],
    [TTL - 1, acquire('b', 1)], // before expiry
    [TTL, acquire('c', 1)], // expired, but c is not the promotable node
    [TTL, acquire('b', 1)], // expired, b is promotable
    [TTL + 1, acquire('a', 1)], // the old holder comes back
    [TTL + 2, promotable('a', 1, 'b')],
  ]);
  t.like(r[2]!.answer, { ok: false, code: 'held' });
  t.like(r[3]!.answer, { ok: false, code: 'not-promotable' });
  t.like(r[4]!.answer, { ok: true, code: 'granted', generation: 2, holder: 'b', promotable: null });
  t.true(r[4]!.persist);
  t.like(r[4]!.event, { previousHolder: 'a', holder: 'b', generation: 2 });
  t.like(r[5]!.answer, { ok: false, code: 'held', holder: 'b' });
  t.like(r[6]!.answer, { ok: false, code: 'not-holder' });
});

test('a standby claiming a generation newer than the witness knows is refused', (t) => {
  const [, , , r] = run([[0, boot('a')], [10, promotable('a', 1, 'b')], [TTL, acquire('a', 1)], [TTL * 3, acquire('b', 5)]]);
  t.like(r!.answer, { ok: false, code: 'stale' });
});

test('promotable: refused for a non-holder or a wrong generation; the holder cannot name itself; naming a standby needs a live lease', (t) => {
  const r = run([
    [0, boot('a')],
    [10, promotable('b', 1, 'b')],
    [20, promotable('a', 2, 'b')],
    [30, promotable('a', 1, 'a')],
    [TTL + 1, promotable('a', 1, 'b')], // expired: may not widen
    [TTL + 2, promotable('a', 1, null)], // expired: may still narrow
  ]);
  t.like(r[1]!.answer, { ok: false, code: 'not-holder', promotable: null });
  t.like(r[2]!.answer, { ok: false, code: 'not-holder' });
  t.like(r[3]!.answer, { ok: false, code: 'invalid' });
  t.like(r[4]!.answer, { ok: false, code: 'not-holder', promotable: null });
  t.like(r[5]!.answer, { ok: true, code: 'set', promotable: null });
  t.false(r[1]!.persist || r[2]!.persist || r[3]!.persist || r[4]!.persist);
});

test('release: the holder ends its lease now and the promotable standby takes over at once; others cannot release', (t) => {
  const r = run([
    [0, boot('a')],
    [10, promotable('a', 1, 'b')],
    [20, { op: 'release', node: 'b', generation: 1 }],
    [30, { op: 'release', node: 'a', generation: 1 }],
    [31, acquire('b', 1)],
  ]);
  t.like(r[2]!.answer, { ok: false, code: 'not-holder' });
  t.like(r[3]!.answer, { ok: true, code: 'released', promotable: 'b', remainingMs: 0 });
  t.like(r[4]!.answer, { ok: true, code: 'granted', holder: 'b', generation: 2 });
});

test('release names the lease it gives up: one overtaken by a later renewal of the holder is refused as stale and the lease stays; the current one ends it; one without a name ends whatever lease is current', (t) => {
  const r = run([
    [0, boot('a')],
    [10, promotable('a', 1, 'b')],
    [20, acquire('a', 1)],
  ]);
  const first = r[0]!.answer.lease;
  const renewed = r[2]!.answer.lease;
  t.true(Number.isInteger(first) && Number.isInteger(renewed) && first !== renewed, `a grant and a renewal are different leases (${first}, ${renewed})`);
  // The release sent before that renewal (the switchover's, landing after the old leader took its lease back):
  const late = arbitrate(r[2]!.state, { op: 'release', node: 'a', generation: 1, lease: first! }, 30);
  t.like(late.answer, { ok: false, code: 'stale', holder: 'a', lease: renewed });
  t.is(late.state.expiresAt, 20 + TTL, 'the renewed lease runs on');
  t.like(arbitrate(late.state, acquire('b', 1), 31).answer, { ok: false, code: 'held' }, 'so the standby still asking is refused');
  const current = arbitrate(r[2]!.state, { op: 'release', node: 'a', generation: 1, lease: renewed! }, 30);
  t.like(current.answer, { ok: true, code: 'released', remainingMs: 0 });
  t.like(arbitrate(current.state, acquire('b', 1), 31).answer, { ok: true, code: 'granted', holder: 'b' });
  t.like(arbitrate(r[2]!.state, { op: 'release', node: 'a', generation: 1 }, 30).answer, { ok: true, code: 'released' }, 'an older agent names no lease');
});

test('lease tags: the service draws each from its source, and a restarted witness does not repeat them', async (t) => {
  const store: RecordStore = { load: async () => [], save: async () => undefined };
  const service = new WitnessService({ store, now: () => 0, audit: () => undefined });
  await service.load();
  const a = await service.handle('site-a', boot('a'));
  const b = await service.handle('site-a', acquire('a', 1));
  const again = new WitnessService({ store, now: () => 0, audit: () => undefined });
  await again.load();
  const c = await again.handle('site-a', boot('a'));
  t.true(new Set([a.lease, b.lease, c.lease]).size === 3, JSON.stringify([a.lease, b.lease, c.lease]));
});

const force = (node: string, generation: number): ArbiterRequest => ({ op: 'force', node, generation });

test('force: only after the lease expired, only at the generation the operator saw, never for the holder; it revokes the lease (generation + 1, nobody holds) and names the standby, durably', (t) => {
  const r = run([
    [0, boot('a')],
    [20, promotable('a', 1, null)], // degraded: nobody may be promoted
    [TTL - 1, force('b', 1)], // the lease still runs: the old leader may be writing
    [TTL, force('b', 0)], // the operator looked at another generation
    [TTL, force('a', 1)], // the holder itself
    [TTL, acquire('b', 1)], // without the operator, b may not take it
    [TTL, force('b', 1)],
    [TTL + 1, acquire('a', 1)], // the old leader comes back: refused, so it stays fenced
    [TTL + 1, force('b', 1)], // a replay of the same decision
    [TTL + 2, acquire('b', 1)], // b asks as in any failover
    [TTL + 3, promotable('b', 3, 'a')],
  ]);
  t.like(r[2]!.answer, { ok: false, code: 'held', holder: 'a', remainingMs: 1 });
  t.regex(r[2]!.answer.reason, /may still be writing/);
  t.like(r[3]!.answer, { ok: false, code: 'stale', generation: 1 });
  t.like(r[4]!.answer, { ok: false, code: 'invalid' });
  t.like(r[5]!.answer, { ok: false, code: 'not-promotable' });
  t.false(r[2]!.persist || r[3]!.persist || r[4]!.persist || r[5]!.persist);
  t.like(r[6]!.answer, { ok: true, code: 'forced', generation: 2, holder: null, promotable: 'b', remainingMs: 0 });
  t.regex(r[6]!.answer.reason, /although it was not recorded as synchronous/);
  t.true(r[6]!.persist, 'a forced revocation is on disk before it is answered');
  t.like(r[6]!.event, { op: 'force', node: 'b', previousHolder: 'a', generation: 2 });
  t.like(r[7]!.answer, { ok: false, code: 'not-promotable', holder: null, promotable: 'b' });
  t.like(r[8]!.answer, { ok: false, code: 'stale', generation: 2 }, 'the same decision twice does not revoke twice');
  t.like(r[9]!.answer, { ok: true, code: 'granted', generation: 3, holder: 'b', promotable: null });
  t.like(r[10]!.answer, { ok: true, code: 'set', promotable: 'a' });
});

test('force: a cluster that never had a leader has nothing to fail over from; a forced node that already was promotable is said so', (t) => {
  t.like(run([[0, force('b', 0)]])[0]!.answer, { ok: false, code: 'not-promotable' });
  const r = run([[0, boot('a')], [10, promotable('a', 1, 'b')], [TTL, force('b', 1)]]);
  t.like(r[2]!.answer, { ok: true, code: 'forced', generation: 2, promotable: 'b' });
  t.notRegex(r[2]!.answer.reason, /not recorded as synchronous/);
});

test('restart guard: a restored record keeps everyone but the holder out for ttl + margin', (t) => {
  const record: ArbiterRecord = { cluster: 'site-a', generation: 3, holder: 'a', promotable: 'b', ttlMs: TTL, timeline: 2 };
  const restored = restoredState(record, 1000, MARGIN);
  t.is(restored.expiresAt, 1000 + TTL + MARGIN);
  t.like(arbitrate(restored, acquire('b', 3), 1000 + TTL + MARGIN - 1).answer, { ok: false, code: 'held' });
  t.like(arbitrate(restored, acquire('b', 3), 1000 + TTL + MARGIN).answer, { ok: true, code: 'granted', generation: 4, holder: 'b' });
  t.like(arbitrate(restored, acquire('a', 3), 1001).answer, { ok: true, code: 'renewed' }, 'the holder renews at once');
  t.is(restoredState({ ...record, holder: null }, 1000, MARGIN).expiresAt, 1000, 'no holder: nothing to wait for');
});

test('invalid ttl and read', (t) => {
  const [bad, , read] = run([[0, boot('a', 0)], [0, boot('a', 700_000)], [0, { op: 'read' }]]);
  t.like(bad!.answer, { ok: false, code: 'invalid' });
  t.like(read!.answer, { ok: true, code: 'read', holder: null });
  t.is(read!.event, undefined);
});

// --- the service: durable before answering --------------------------------------------------

class MemoryStore implements RecordStore {
  saved: ArbiterRecord[] = [];
  fail = false;
  gate?: Promise<void>;
  async load(): Promise<ArbiterRecord[]> {
    return [];
  }
  async save(record: ArbiterRecord): Promise<void> {
    if (this.gate) await this.gate;
    if (this.fail) throw new Error('disk full');
    this.saved.push(structuredClone(record));
  }
}

test('service: a change is saved before the answer leaves; a failed save rejects and changes nothing', async (t) => {
  const store = new MemoryStore();
  let now = 0;
  const audit: string[] = [];
  const service = new WitnessService({ store, now: () => now, audit: (c, e) => audit.push(`${c}:${e.code}`) });
  await t.throwsAsync(service.handle('site-a', boot('a')), { message: /not loaded/ });
  await service.load();

  // The answer waits for the save.
  let release!: () => void;
  store.gate = new Promise((r) => (release = r));
  let answered = false;
  const pending = service.handle('site-a', boot('a')).then((a) => {
    answered = true;
    return a;
  });
  await new Promise((r) => setTimeout(r, 30));
  t.false(answered, 'no answer before the record is saved');
  t.is(service.record('site-a'), undefined, 'the state changes only once saved');
  release();
  t.like(await pending, { ok: true, code: 'granted', generation: 1 });
  store.gate = undefined;
  t.deepEqual(store.saved.map((r) => [r.holder, r.generation]), [['a', 1]]);
  t.deepEqual(audit, ['site-a:granted']);

  // A save that fails: the call rejects, memory keeps the old record, no audit line.
  store.fail = true;
  now = 10;
  await t.throwsAsync(service.handle('site-a', promotable('a', 1, 'b')), { message: 'disk full' });
  t.is(service.record('site-a')!.promotable, null);
  t.deepEqual(audit, ['site-a:granted']);
  // Requests that persist nothing still work, and the queue is not wedged by the failure.
  t.like(await service.handle('site-a', acquire('a', 1)), { ok: true, code: 'renewed' });
  store.fail = false;
  t.like(await service.handle('site-a', promotable('a', 1, 'b')), { ok: true, promotable: 'b' });
});

// --- the file store: survives a restart -----------------------------------------------------

test('file store: a new witness on the same directory keeps holder, generation and promotable, and holds the lease for ttl + margin', async (t) => {
  const dir = join(tempDir(), 'witness');
  let now = 100;
  const first = new WitnessService({ store: new FileRecordStore(dir), now: () => now, audit: () => undefined, restartMarginMs: MARGIN });
  await first.load();
  t.like(await first.handle('site-a', boot('a')), { ok: true, generation: 1 });
  t.like(await first.handle('site-a', promotable('a', 1, 'b')), { ok: true, promotable: 'b' });
  t.deepEqual(readdirSync(dir), ['site-a.json']);
  t.is(statSync(join(dir, 'site-a.json')).mode & 0o777, 0o600);

  // "Restart": a new process whose monotonic clock starts elsewhere.
  now = 50;
  const second = new WitnessService({ store: new FileRecordStore(dir), now: () => now, audit: () => undefined, restartMarginMs: MARGIN });
  await second.load();
  t.like(second.record('site-a'), { holder: 'a', generation: 1, promotable: 'b', ttlMs: TTL });
  now = 50 + TTL + MARGIN - 1;
  t.like(await second.handle('site-a', acquire('b', 1)), { ok: false, code: 'held', holder: 'a' });
  now = 50 + TTL + MARGIN;
  t.like(await second.handle('site-a', acquire('b', 1)), { ok: true, code: 'granted', generation: 2, holder: 'b' });

  const third = new FileRecordStore(dir);
  t.like((await third.load())[0], { holder: 'b', generation: 2, promotable: null });
});

test('file store: a corrupt or misnamed record stops the load, naming the file; temp files are ignored', async (t) => {
  const dir = tempDir();
  const store = new FileRecordStore(dir);
  t.deepEqual(await store.load(), []);
  writeFileSync(join(dir, '.site-a.json.tmp-1-abcd'), '{');
  t.deepEqual(await store.load(), []);
  writeFileSync(join(dir, 'site-a.json'), '{"cluster": "site-a", "generation": ');
  await t.throwsAsync(store.load(), { message: new RegExp(`${join(dir, 'site-a.json')} is unreadable`) });
  writeFileSync(join(dir, 'site-a.json'), JSON.stringify({ ...emptyRecord('site-a'), generation: -1 }));
  await t.throwsAsync(store.load(), { message: /site-a\.json is corrupt: generation/ });
  writeFileSync(join(dir, 'site-a.json'), JSON.stringify(emptyRecord('site-b')));
  await t.throwsAsync(store.load(), { message: /site-a\.json holds cluster site-b/ });
  const service = new WitnessService({ store, now: () => 0, audit: () => undefined });
  await t.throwsAsync(service.load(), { message: /site-a\.json/ }, 'the witness does not start empty');
  t.throws(() => store.fileOf('../etc/passwd'), { message: /not a cluster name/ });
});

// --- HTTP -----------------------------------------------------------------------------------

const TOKEN = 'witness-token-0123456789';
const quiet: LogPort = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };

async function serve(store: RecordStore = new MemoryStore()): Promise<{ server: Server; base: string; service: WitnessService }> {
  const service = new WitnessService({ store, now: () => performance.now(), audit: () => undefined });
  await service.load();
  const server = await startWitnessHttp({ host: '127.0.0.1', port: 0, token: TOKEN, service, log: quiet });
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, service };
}

/** `token` '' sends no Authorization header. */
const post = (base: string, body: string, token = TOKEN, cluster = 'site-a') =>
  fetch(`${base}/v1/clusters/${cluster}/arbiter`, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body });

test('http: 401 without the token, 400 for bad JSON or a bad request, 413 above 4096 bytes, 200 with the answer', async (t) => {
  const { server, base } = await serve();
  try {
    t.is((await fetch(`${base}/healthz`)).status, 200, '/healthz is open');
    t.is((await post(base, JSON.stringify(boot('a')), '')).status, 401);
    t.is((await post(base, JSON.stringify(boot('a')), 'witness-token-0123456780')).status, 401);
    t.is((await post(base, JSON.stringify(boot('a')), 'short')).status, 401);
    t.is((await fetch(`${base}/v1/clusters/site-a`)).status, 401);

    const badJson = await post(base, '{"op": ');
    t.is(badJson.status, 400);
    t.regex(((await badJson.json()) as { error: string }).error, /JSON/);
    const badReq = await post(base, JSON.stringify({ op: 'acquire', node: 'a' }));
    t.is(badReq.status, 400);
    t.regex(((await badReq.json()) as { error: string }).error, /acquire needs node, generation, ttlMs/);
    t.is((await post(base, JSON.stringify(boot('a')), TOKEN, 'Not_A_Label')).status, 400);

    const big = await post(base, JSON.stringify({ ...boot('a'), pad: 'x'.repeat(5000) }));
    t.is(big.status, 413);

    const granted = await post(base, JSON.stringify(boot('a')));
    t.is(granted.status, 200);
    t.like(await granted.json(), { ok: true, code: 'granted', generation: 1, holder: 'a' });
    const held = await post(base, JSON.stringify(acquire('b', 1)));
    t.is(held.status, 200, 'a refusal is an answer too');
    t.like(await held.json(), { ok: false, code: 'held', holder: 'a' });

    const record = await fetch(`${base}/v1/clusters/site-a`, { headers: { authorization: `Bearer ${TOKEN}` } });
    t.is(record.status, 200);
    t.like(await record.json(), { cluster: 'site-a', holder: 'a', generation: 1 });
    t.is((await fetch(`${base}/v1/clusters/site-z`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 404);
  } finally {
    server.close();
  }
});

test('http: 503 and no answer when the record cannot be persisted', async (t) => {
  const store = new MemoryStore();
  store.fail = true;
  const { server, base, service } = await serve(store);
  try {
    const res = await post(base, JSON.stringify(boot('a')));
    t.is(res.status, 503);
    const body = (await res.json()) as Record<string, unknown>;
    t.false('ok' in body || 'holder' in body || 'generation' in body);
    t.is(service.record('site-a'), undefined);
  } finally {
    server.close();
  }
});

test('http client: the WitnessPort round-trips requests and throws on a wrong token, a timeout or no server', async (t) => {
  const { server, base } = await serve();
  try {
    const port = httpWitnessPort(base, TOKEN, 'site-a', 2000);
    t.like(await port.call(boot('a')), { ok: true, code: 'granted', generation: 1 });
    t.like(await port.call(acquire('b', 1)), { ok: false, code: 'held' });
    t.like(await port.call({ op: 'read' }), { ok: true, holder: 'a' });
    await t.throwsAsync(httpWitnessPort(base, 'wrong-token-000000000000', 'site-a', 2000).call({ op: 'read' }), { message: /witness answered 401/ });
  } finally {
    server.close();
  }
  await t.throwsAsync(httpWitnessPort(base, TOKEN, 'site-a', 2000).call({ op: 'read' }), { message: /unreachable/ }, 'no server');
});

test('http: 413 also for a chunked body without Content-Length', async (t) => {
  const { server, base } = await serve();
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${base}/v1/clusters/site-a/arbiter`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'transfer-encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      for (let i = 0; i < 5; i++) req.write('x'.repeat(1000));
      req.end();
    });
    t.is(status, 413);
  } finally {
    server.close();
  }
});

test('http client: a witness that accepts but never answers makes the call throw after the timeout', async (t) => {
  // The accepted sockets are ended by the test: a silent peer's connection otherwise stays open
  // (the client lingers on it) and keeps the worker alive after the last test.
  const accepted: import('node:net').Socket[] = [];
  const silent = createTcpServer((s) => void accepted.push(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  try {
    const started = performance.now();
    await t.throwsAsync(httpWitnessPort(`http://127.0.0.1:${(silent.address() as AddressInfo).port}`, TOKEN, 'site-a', 300).call({ op: 'read' }), { message: /no answer within 300 ms/ });
    t.true(performance.now() - started < 3000);
  } finally {
    for (const s of accepted) s.destroy();
    silent.close();
  }
});

test('mutual TLS: a lease call needs that node\'s own certificate of this cluster; no certificate, another node\'s, an expired one, another CA\'s or another cluster\'s is refused; reading needs the token only', async (t) => {
  const ca = fakeCa();
  // The witness on loopback: a certificate for 127.0.0.1 from the fixture CA (site-a).
  const witnessCert = await issueLeaf(ca, { cluster: 'site-a', name: 'witness', hosts: ['127.0.0.1'], usage: 'server' });
  const warnings: string[] = [];
  const log: LogPort = { ...quiet, warn: (_f, m) => void warnings.push(m) };
  const service = new WitnessService({ store: new MemoryStore(), now: () => performance.now(), audit: () => undefined });
  await service.load();
  const server = await startWitnessHttp({ host: '127.0.0.1', port: 0, token: TOKEN, service, log, tls: { ...witnessCert, ca: ca.cert } });
  t.teardown(() => server.close());
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const node1 = httpWitnessPort(url, TOKEN, 'site-a', 5000, fakeTls('node1'));
  t.like(await node1.call(boot('node1')), { ok: true, code: 'granted', holder: 'node1' });
  // node1's certificate, speaking for node2: refused, whatever the token.
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-a', 5000, fakeTls('node1')).call(acquire('node2', 1)), { message: /403.*may only speak for itself.*request is for node2 of cluster site-a, the client certificate names node1 of cluster site-a/ });
  t.regex(warnings.join('\n'), /refused acquire for node2 of site-a: client certificate node1 of cluster site-a/);
  // The operator (the CA to verify the witness, no certificate): may read with the token, not act.
  const operator = httpWitnessPort(url, TOKEN, 'site-a', 5000, { ca: ca.cert });
  t.like(await operator.call({ op: 'read' }), { ok: true, holder: 'node1' });
  await t.throwsAsync(operator.call(acquire('node1', 1)), { message: /403.*names none/ });
  await t.throwsAsync(operator.call({ op: 'release', node: 'node1', generation: 1 }), { message: /403/ });
  // node1's certificate in another cluster's name: refused.
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-b', 5000, fakeTls('node1')).call(boot('node1')), { message: /403.*node1 of cluster site-b.*names node1 of cluster site-a/ });
  // A certificate from another CA naming node2: not verified, so it names nobody.
  const strangerCa = await issueCa('site-a');
  const stranger = await issueLeaf(strangerCa, { cluster: 'site-a', name: 'node2', hosts: ['127.0.0.1'], usage: 'both' });
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-a', 5000, { ca: ca.cert, ...stranger }).call(acquire('node2', 1)), { message: /403.*names none/ });
  // node2's certificate from the right CA, but expired: it names nobody either.
  const expired = await expiredLeaf(ca, { cluster: 'site-a', name: 'node2', hosts: ['127.0.0.1'] });
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-a', 5000, { ca: ca.cert, ...expired }).call(acquire('node2', 1)), { message: /403.*names none/ });
  // The witness's own certificate is for serving only: it cannot act as a client at all.
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-a', 5000, { ca: ca.cert, ...witnessCert }).call(acquire('witness', 1)), { message: /403.*names none|unreachable/ });
  // And the node does not talk to a witness whose certificate is not from its CA.
  await t.throwsAsync(httpWitnessPort(url, TOKEN, 'site-a', 5000, { ...fakeTls('node1'), ca: strangerCa.cert }).call({ op: 'read' }), { message: /unreachable.*(certificate|issuer)/i });
  // Without the token nothing, certificate or not.
  await t.throwsAsync(httpWitnessPort(url, 'wrong-token-0123456789', 'site-a', 5000, fakeTls('node1')).call({ op: 'read' }), { message: /401/ });
  t.is(service.record('site-a')?.holder, 'node1', 'nothing refused changed the record');
});
