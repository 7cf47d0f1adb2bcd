import test from 'ava';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { Agent } from '#agent/agent.ts';
import { agentLogger, createLogPort } from '#agent/adapters/log.ts';
import { AuthLimiter, MAX_BODY_BYTES, metricsOf, routes, startApi, statusOf } from '#agent/api.ts';
import { registerSecret } from '#common/log.ts';
import { loadAgentConfig, nodeContext } from '#agent/context.ts';
import { ValidationError } from '#common/errors.ts';
import { readHostMeta, writeHostMeta } from '#agent/hostmeta.ts';
import { basebackupPlan, clusterState, controlDataPlan, crashRecoveryPlan, initdbPlan, needsCrashRecovery, rewindCopied, rewindPlan } from '#agent/postgres.ts';
import { NotifyPipe, sdNotify, watchdogIntervalMs } from '#agent/sdnotify.ts';
import { garpPlan, vipAddPlan, vipDelPlan } from '#agent/vip.ts';
import { runPlan, spawnPlan } from '#common/exec.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import type { HostMeta } from '#common/schema/hostmeta.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { NodeSeedSchema } from '#common/schema/seed.ts';
import { FAKE_SECRETS, fakeCa, fakeTls, loadFixtureCluster, ROOT, tempDir } from '../helpers/fixtures.ts';
import { expiredLeaf } from '../helpers/expired-cert.ts';
import { tlsFetch } from '../helpers/tlsfetch.ts';

/** Calls as the peer (node2's client certificate) and as an operator (the CA only, no certificate). */
const peerFetch = tlsFetch(fakeTls('node2'));
const operatorFetch = tlsFetch({ ca: fakeTls('node2').ca });

/** node1's context, with mutual TLS from the fixture CA as init sets it up, or in development plaintext. */
async function context(stateDir = tempDir(), tls = true) {
  const cluster = await loadFixtureCluster();
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = cluster;
  const seed = NodeSeedSchema.parse({
    apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1',
    cluster: { ...spec, witness: { type: 'lease', url: `${tls ? 'https' : 'http'}://127.0.0.1:1` }, agent: { ...spec.agent, insecurePlaintext: !tls } },
    secrets: FAKE_SECRETS, ...(tls ? { tls: fakeTls('node1') } : {}),
  });
  const config = AgentConfigSchema.parse({ stateDir, seedFile: join(stateDir, 'seed.yaml'), listen: { host: '127.0.0.1', port: 0 }, postgresql: { binDir: '/usr/lib/postgresql/15/bin', dataDir: join(stateDir, 'pg') }, serviceManager: 'direct' });
  return nodeContext(config, seed);
}

const meta = (over: Partial<HostMeta> = {}): HostMeta => ({
  cluster: 'site-a', node: 'node1', role: 'leader', peer: 'node2', generation: 3, timeline: 2,
  lastTransition: { at: '2026-01-01T00:00:00.000Z', from: 'follower', to: 'leader', reason: 'test' }, ...over,
});

test('hostmeta is written atomically and its generation never goes down', async (t) => {
  const dir = tempDir();
  await writeHostMeta(dir, meta());
  t.deepEqual(await readHostMeta(dir), meta());
  await writeHostMeta(dir, meta({ generation: 4 }));
  await t.throwsAsync(writeHostMeta(dir, meta({ generation: 2 })), { message: /refusing to lower the generation from 4 to 2/ });
  t.is((await readHostMeta(dir))?.generation, 4);
  t.deepEqual(readdirSync(dir), ['hostmeta.json']);
  writeFileSync(join(dir, 'hostmeta.json'), '{"role": 12}');
  await t.throwsAsync(readHostMeta(dir), { message: /hostmeta.json is unreadable/ });
});

test('API: /healthz is open, everything else needs the bearer token; status and metrics', async (t) => {
  const ctx = await context();
  const agent = new Agent(ctx, pino({ level: 'silent' }));
  agent.meta = meta();
  agent.snapshot.round = {
    now: 10, pg: { up: true, inRecovery: false, lsn: 0x5000n, timeline: 2, synchronousStandbyNames: '"node2"', standby: { state: 'streaming', syncState: 'sync', replayLsn: 0x4f00n, flushLsn: 0x5000n } },
    peer: { role: 'follower', generation: 3 }, peerPg: { ok: true, primary: false }, vipHeld: true,
  };
  const server = await startApi(agent);
  const base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const health = await peerFetch(`${base}/healthz`);
    t.is(health.status, 200);
    t.deepEqual(await health.json(), { ok: true }, '/healthz says the process lives, nothing about the cluster');
    for (const path of ['/v1/status', '/metrics']) {
      t.is((await peerFetch(`${base}${path}`)).status, 401, path);
      t.is((await peerFetch(`${base}${path}`, { headers: { authorization: 'Bearer nope' } })).status, 401, path);
    }
    t.is((await peerFetch(`${base}/v1/switchover`, { method: 'POST' })).status, 401);
    const auth = { authorization: `Bearer ${FAKE_SECRETS.agentToken}` };
    const status = (await (await peerFetch(`${base}/v1/status`, { headers: auth })).json()) as Record<string, any>;
    t.like(status, { role: 'leader', generation: 3, standbySyncState: 'sync', node: 'node1' });
    t.like(status.postgres, { role: 'primary', lsn: '0/5000', timeline: 2, lagBytes: 0x100 });
    t.like(status.vip, { address: '192.168.10.50', heldHere: true });
    t.like(status.witness, { kind: 'lease' });
    t.like(status.lease, { arbiter: true, held: false });
    t.false(status.degraded);
    t.false(JSON.stringify(status).includes(FAKE_SECRETS.agentToken));
    const metrics = await (await peerFetch(`${base}/metrics`, { headers: auth })).text();
    t.regex(metrics, /^# TYPE geminik8s_role gauge$/m);
    t.regex(metrics, /^geminik8s_role\{node="node1",role="leader"\} 1$/m);
    t.regex(metrics, /^geminik8s_generation\{node="node1"\} 3$/m);
    t.regex(metrics, /^geminik8s_standby_sync\{node="node1"\} 1$/m);
    t.regex(metrics, /^geminik8s_peer_reachable\{node="node1",path="postgres"\} 1$/m);
    t.regex(metrics, /^geminik8s_lease_held\{node="node1"\} 0$/m);
    t.like(status.peer, { apiReachable: true, postgresReachable: true });
    t.regex(metrics, /^geminik8s_replication_lag_bytes\{node="node1"\} 256$/m);
    for (const line of metrics.trim().split('\n')) t.regex(line, /^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? -?\d+(\.\d+)?)$/, line);
    t.deepEqual(statusOf(agent).role, 'leader');
    t.true(metricsOf(agent).endsWith('\n'));
    // The standby replayed between the two reads of a round (seen as lag -224 in the cluster e2e).
    agent.snapshot.round = { ...agent.snapshot.round, pg: { ...agent.snapshot.round.pg, standby: { state: 'streaming', syncState: 'sync', replayLsn: 0x50e0n, flushLsn: 0x50e0n } } };
    const ahead = (await (await peerFetch(`${base}/v1/status`, { headers: auth })).json()) as Record<string, any>;
    t.like(ahead.postgres, { lsn: '0/5000', lagBytes: 0 }, 'a standby read after our LSN is not behind');
    t.regex(metricsOf(agent), /^geminik8s_replication_lag_bytes\{node="node1"\} 0$/m);
  } finally {
    server.close();
  }
});

test('API: every endpoint with every credential; bad input is a 4xx naming what was wrong and changes nothing; mutating calls are audited', async (t) => {
  const ctx = await context();
  const agent = new Agent(ctx, pino({ level: 'silent' }));
  agent.meta = meta();
  let switchovers = 0;
  let promotes = 0;
  agent.switchover = async () => {
    switchovers++;
    return { ok: false, reason: 'test: refused', tookMs: 0 };
  };
  const forces: number[] = [];
  agent.forcePromote = async (generation) => {
    forces.push(generation);
    return { ok: false, forced: false, reason: 'test: refused' };
  };
  agent.promoteOnRequest = async () => {
    promotes++;
    return { ok: false, reason: 'test: refused' };
  };
  const leaves: number[] = [];
  agent.standbyLeaving = async (req) => {
    leaves.push(req.generation);
    return { ok: false, reason: 'test: refused' };
  };
  let upgradeReboots = 0;
  agent.upgradeReboot = async () => {
    upgradeReboots++;
    return { ok: false, reason: 'test: refused', retryable: true, switchedOver: false };
  };
  let rollbacks = 0;
  agent.upgradeRollback = async () => {
    rollbacks++;
    return { ok: false, reason: 'test: refused' };
  };
  // This test fails authentication on purpose, many times: its own limiter, out of the way.
  const server = await startApi(agent, new AuthLimiter(1000));
  const base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const token = { authorization: `Bearer ${FAKE_SECRETS.agentToken}` };
  const call = (path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}) => peerFetch(`${base}${path}`, init).then(async (r) => ({ status: r.status, allow: r.headers.get('allow'), body: await r.text() }));
  try {
    // The role matrix: every endpoint with every credential. 409 = the (stubbed) controller refused.
    const creds: Record<string, string | undefined> = {
      none: undefined, wrong: 'wrong-token-of-some-length', witness: FAKE_SECRETS.witnessToken,
      peer: FAKE_SECRETS.agentToken, read: FAKE_SECRETS.readToken, admin: FAKE_SECRETS.adminToken,
    };
    const matrix: Record<string, [string, Record<keyof typeof creds, number>]> = {
      '/healthz': ['GET', { none: 200, wrong: 200, witness: 200, peer: 200, read: 200, admin: 200 }],
      '/v1/status': ['GET', { none: 401, wrong: 401, witness: 401, peer: 200, read: 200, admin: 200 }],
      '/metrics': ['GET', { none: 401, wrong: 401, witness: 401, peer: 200, read: 200, admin: 200 }],
      '/ui': ['GET', { none: 401, wrong: 401, witness: 401, peer: 403, read: 200, admin: 200 }],
      '/v1/cluster': ['GET', { none: 401, wrong: 401, witness: 401, peer: 403, read: 200, admin: 200 }],
      '/v1/check': ['GET', { none: 401, wrong: 401, witness: 401, peer: 403, read: 200, admin: 200 }],
      '/v1/preflight': ['GET', { none: 401, wrong: 401, witness: 401, peer: 403, read: 200, admin: 200 }],
      '/v1/switchover': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      '/v1/promote': ['POST', { none: 401, wrong: 401, witness: 401, peer: 409, read: 403, admin: 403 }],
      '/v1/leave': ['POST', { none: 401, wrong: 401, witness: 401, peer: 409, read: 403, admin: 403 }],
      '/v1/force-promote': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      // No x-geminik8s-bundle-bytes header: refused as bad input before any byte is read.
      '/v1/upgrade/stage': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 400 }],
      '/v1/upgrade/reboot': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      '/v1/upgrade/rollback': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      // A leader without a PostgreSQL round or a lease: backup and restore refuse; a re-clone is for followers.
      '/v1/backup': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      '/v1/restore': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      '/v1/reclone': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      // No lease: the survivor refuses to move its peer. The certificate names the other node: refused as bad input.
      '/v1/replace-peer': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 409 }],
      '/v1/tls': ['POST', { none: 401, wrong: 401, witness: 401, peer: 403, read: 403, admin: 400 }],
    };
    t.deepEqual(Object.keys(matrix).sort(), Object.keys(routes(agent)).sort(), 'the matrix covers every endpoint');
    for (const [path, [method, expect]] of Object.entries(matrix)) {
      const bodies: Record<string, unknown> = {
        '/v1/promote': { lsn: '0/10', generation: 3 },
        '/v1/leave': { generation: 4 },
        '/v1/force-promote': { generation: 7 },
        '/v1/replace-peer': { name: agent.ctx.peer.name, ip: '192.168.10.21' },
        '/v1/tls': { cert: fakeTls(agent.ctx.peer.name).cert, key: fakeTls(agent.ctx.peer.name).key },
      };
      const body = bodies[path] === undefined ? undefined : JSON.stringify(bodies[path]);
      for (const [who, secret] of Object.entries(creds)) {
        const headers: Record<string, string> = secret ? { authorization: `Bearer ${secret}` } : {};
        const answer = await call(path, { method, body, headers });
        t.is(answer.status, expect[who]!, `${method} ${path} as ${who}: ${answer.body.slice(0, 300)}`);
      }
      const other = method === 'GET' ? 'POST' : 'GET';
      const r = await call(path, { method: other, headers: token });
      t.is(r.status, 405, `${other} ${path}`);
      t.is(r.allow, method);
    }
    // A browser on the status page: Basic with the token as the password; a 401 asks for it.
    const basic = (pass: string) => ({ authorization: `Basic ${Buffer.from(`operator:${pass}`).toString('base64')}` });
    t.is((await call('/v1/status', { headers: basic(FAKE_SECRETS.readToken) })).status, 200);
    const prompt = await peerFetch(`${base}/ui`, { headers: basic('wrong-token-of-some-length') });
    t.is(prompt.status, 401);
    t.regex(prompt.headers.get('www-authenticate') ?? '', /^Basic realm="geminik8s"/);
    const page = await peerFetch(`${base}/ui`, { headers: basic(FAKE_SECRETS.readToken) });
    t.regex(page.headers.get('content-type') ?? '', /^text\/html/);
    t.regex(page.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'sha256-[A-Za-z0-9+/]+=*'/);
    t.notRegex(await page.text(), /<script src=|<link |https?:\/\//, 'no external asset');
    t.is((await call('/v1/nope', { headers: token })).status, 404);
    t.is((await call('/v1/nope')).status, 404, 'unknown routes are 404 before authentication');
    t.is(switchovers, 1, 'only the admin reached the switchover');
    t.is(promotes, 1, 'only the peer reached the promote handshake');
    // The agent token is in both seeds: as the peer it counts only with the peer's client certificate.
    const promote = { method: 'POST', headers: token, body: JSON.stringify({ lsn: '0/10', generation: 3 }) };
    for (const [who, as] of [['no certificate (an operator)', operatorFetch], ["node1's own certificate", tlsFetch(fakeTls('node1'))], ["the witness's (server-only) certificate", tlsFetch(fakeTls('witness'))]] as const) {
      const r = await as(`${base}/v1/promote`, promote);
      t.is(r.status, 403, who);
      t.regex(await r.text(), /needs node2's client certificate/, who);
      t.is((await as(`${base}/v1/status`, { headers: token })).status, 403, `status with the agent token and ${who}`);
      t.is((await as(`${base}/v1/status`, { headers: { authorization: `Bearer ${FAKE_SECRETS.readToken}` } })).status, 200, `the read token with ${who}`);
    }
    // The peer's name and the right CA, but expired.
    const expired = await expiredLeaf(fakeCa(), { cluster: 'site-a', name: 'node2', hosts: ['192.168.10.12'] });
    const stale = await tlsFetch({ ca: fakeTls('node2').ca, ...expired })(`${base}/v1/promote`, promote);
    t.is(stale.status, 403, 'an expired peer certificate');
    t.is(promotes, 1, 'no promote without the peer certificate');
    // A client that does not trust the cluster CA gets no answer at all.
    await t.throwsAsync(tlsFetch({ ca: fakeTls('node2').cert })(`${base}/healthz`), { message: /certificate|issuer/i });
    await t.throwsAsync(fetch(`${base}/healthz`), undefined, 'the platform trust store does not know the cluster CA');
    t.is(upgradeReboots, 1, 'only the admin reached the upgrade reboot');
    t.is(rollbacks, 1, 'only the admin reached the rollback');
    const admin = { authorization: `Bearer ${FAKE_SECRETS.adminToken}` };
    const badReason = await call('/v1/upgrade/rollback', { method: 'POST', headers: admin, body: JSON.stringify({ reason: 42 }) });
    t.is(badReason.status, 400);
    t.regex(badReason.body, /reason: expected a string of at most 500 characters \(found 42\)/);
    t.is(rollbacks, 1, 'a bad reason never reached the rollback');

    // Bad input: a clear 4xx, and the handler never runs.
    const bad: [string, string, number, RegExp][] = [
      ['not json', 'lsn=0/10', 400, /not JSON/],
      ['truncated', '{"lsn": "0/10", "gener', 400, /not JSON/],
      ['an array', '[1,2]', 400, /JSON object/],
      ['lsn of the wrong type', JSON.stringify({ lsn: 16, generation: 3 }), 400, /^\{"error":"lsn: expected a WAL position/],
      ['generation a string', JSON.stringify({ lsn: '0/10', generation: '3' }), 400, /generation: expected a non-negative integer \(found \\"3\\"\)/],
      ['negative generation', JSON.stringify({ lsn: '0/10', generation: -1 }), 400, /generation: expected a non-negative integer/],
      ['oversized', JSON.stringify({ lsn: '0/10', generation: 3, pad: 'x'.repeat(MAX_BODY_BYTES) }), 413, /larger than 4096 bytes/],
    ];
    for (const [what, body, status, message] of bad) {
      const r = await call('/v1/promote', { method: 'POST', headers: token, body });
      t.is(r.status, status, what);
      t.regex(r.body, message, what);
    }
    t.is(promotes, 1, 'no bad request reached the controller');
    t.is((await call('/v1/switchover', { method: 'POST', headers: { authorization: `Bearer ${FAKE_SECRETS.adminToken}` }, body: '{' })).status, 400);
    t.is(switchovers, 1);
    t.deepEqual(forces, [7], 'only the admin reached the forced failover, with the generation it sent');
    t.deepEqual(leaves, [4], 'only the peer reached the leave, with the generation it sent');
    for (const body of ['{}', JSON.stringify({ generation: -1 }), JSON.stringify({ generation: 'x' })]) {
      const r = await call('/v1/leave', { method: 'POST', headers: token, body });
      t.is(r.status, 400, body);
      t.regex(r.body, /generation: expected a non-negative integer/);
    }
    t.deepEqual(leaves, [4], 'no bad leave reached the controller');
    for (const body of ['{}', JSON.stringify({ generation: -2 }), JSON.stringify({ generation: '7' })]) {
      const r = await call('/v1/force-promote', { method: 'POST', headers: admin, body });
      t.is(r.status, 400, body);
      t.regex(r.body, /generation: expected the witness generation the operator decided on/, body);
    }
    t.deepEqual(forces, [7], 'no bad request reached the forced failover');

    // Every mutating call is audited, with its result; nothing secret in the file, and only we read it.
    const file = join(ctx.config.stateDir, 'audit.log');
    const entries = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    t.true(entries.length >= 10);
    t.like(entries.find((e) => e.what === 'POST /v1/switchover' && e.status === 409), { who: 'admin', from: '127.0.0.1' });
    t.true(entries.some((e) => e.what === 'POST /v1/switchover' && e.status === 403 && e.who === 'read'));
    t.like(entries.find((e) => e.what === 'POST /v1/switchover' && e.status === 401), { who: 'nobody' });
    t.true(entries.some((e) => e.what === 'POST /v1/promote' && e.status === 413));
    for (const secret of Object.values(FAKE_SECRETS)) t.false(readFileSync(file, 'utf8').includes(secret));
    t.is(statSync(file).mode & 0o077, 0, 'the audit log is not readable by others');
  } finally {
    server.close();
  }
});

test('API: failed authentications are rate-limited per address, logged once per window, never with the token', async (t) => {
  let now = 0;
  const limiter = new AuthLimiter(3, 10_000, () => now);
  t.true(limiter.fail('10.0.0.9'), 'the first failure is logged');
  t.false(limiter.fail('10.0.0.9'));
  t.false(limiter.blocked('10.0.0.9'));
  limiter.fail('10.0.0.9');
  t.true(limiter.blocked('10.0.0.9'), 'blocked after 3 failures');
  t.false(limiter.blocked('10.0.0.8'), 'other addresses are not');
  now = 10_001;
  t.false(limiter.blocked('10.0.0.9'), 'the window passes');

  const ctx = await context();
  const lines: string[] = [];
  const agent = new Agent(ctx, agentLogger('node1', { write: (l: string) => void lines.push(l) }));
  agent.meta = meta();
  const server = await startApi(agent);
  const base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const presented = `Bearer ${FAKE_SECRETS.agentToken}x`;
    const codes: number[] = [];
    for (let i = 0; i < 12; i++) codes.push((await peerFetch(`${base}/v1/status`, { headers: { authorization: presented } })).status);
    t.deepEqual(codes, [...Array(10).fill(401), 429, 429]);
    t.is((await peerFetch(`${base}/v1/status`, { headers: { authorization: `Bearer ${FAKE_SECRETS.agentToken}` } })).status, 429, 'even the right token waits out the window');
    const refusals = lines.filter((l) => l.includes('auth-failed'));
    t.is(refusals.length, 1, 'one log line per window, not one per attempt');
    t.false(lines.join('').includes(FAKE_SECRETS.agentToken));
  } finally {
    server.close();
  }
});

test('API: without listen.host it listens on the node\'s own address and loopback, never on every interface', async (t) => {
  // About addresses, not TLS: node1's certificate does not cover 127.0.0.2.
  const base = await context(tempDir(), false);
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const ctx = { ...base, apiPort: port, self: { ...base.self, ip: '127.0.0.2' }, config: { ...base.config, listen: { ...base.config.listen, host: undefined } } };
  const agent = new Agent(ctx, pino({ level: 'silent' }));
  agent.meta = meta();
  const server = await startApi(agent);
  try {
    for (const host of ['127.0.0.1', '127.0.0.2']) t.is((await fetch(`http://${host}:${port}/healthz`)).status, 200, host);
    await t.throwsAsync(fetch(`http://127.0.0.3:${port}/healthz`), undefined, 'not on an address that is not ours');
  } finally {
    server.close();
  }
});

test('agent logger: every line is redacted, whoever logs it and however', (t) => {
  const lines: string[] = [];
  const log = agentLogger('node1', { write: (l: string) => void lines.push(l) });
  const secret = FAKE_SECRETS.postgresPassword;
  registerSecret(secret);
  log.info(`connecting with ${secret}`);
  log.warn({ dsn2: `postgres://postgres:${secret}@10.0.0.1/postgres`, nested: { list: [secret] } }, 'fields');
  log.error({ err: new Error(`auth failed for ${secret}`) }, 'an error object');
  log.error(new Error(`thrown: ${secret}`));
  createLogPort(log).warn({ why: secret }, `port ${secret}`);
  t.is(lines.length, 5);
  for (const l of lines) t.false(l.includes(secret), l);
  t.true(lines.every((l) => l.includes('***')));
});

test('command plans: VIP, gratuitous ARP, initdb, clone and rewind carry no secret', async (t) => {
  const ctx = await context('/var/lib/geminik8s');
  const vip = { address: '192.168.10.50', prefix: 24, device: 'eth0' };
  t.deepEqual(vipAddPlan(vip), { cmd: 'ip', args: ['addr', 'replace', '192.168.10.50/24', 'dev', 'eth0', 'label', 'eth0:gk'] });
  t.deepEqual(vipDelPlan(vip), { cmd: 'ip', args: ['addr', 'del', '192.168.10.50/24', 'dev', 'eth0'] });
  t.deepEqual(garpPlan(vip), { cmd: 'arping', args: ['-U', '-c', '3', '-w', '2', '-I', 'eth0', '192.168.10.50'] });
  const plans = [initdbPlan(ctx, '/var/lib/geminik8s/initdb-pw'), basebackupPlan(ctx), rewindPlan(ctx)];
  t.snapshot(plans);
  const text = JSON.stringify(plans);
  for (const s of Object.values(FAKE_SECRETS)) t.false(text.includes(s));
  t.false(text.includes(fakeTls('node1').key.split('\n')[1]!), 'the key stays in its file');
  t.like(basebackupPlan(ctx).env, { PGSSLMODE: 'verify-full', PGSSLROOTCERT: '/var/lib/geminik8s/pgtls/ca.crt', PGSSLCERT: '/var/lib/geminik8s/pgtls/node.crt', PGSSLKEY: '/var/lib/geminik8s/pgtls/node.key' });
  t.regex(rewindPlan(ctx).args.join(' '), / sslmode=verify-full sslrootcert=\/var\/lib\/geminik8s\/pgtls\/ca\.crt sslcert=\S+ sslkey=\S+$/);
  t.true(plans.every((p) => p.cmd === 'runuser' && p.args.slice(0, 3).join(' ') === '-u postgres --'));
  t.true(initdbPlan(ctx, 'x').args.includes('--data-checksums'));
  // pg_rewind 15's stderr with --progress (its own wording); without the line, nothing is claimed.
  t.deepEqual(rewindCopied('pg_rewind: servers diverged at WAL location 0/3000060 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: reading source file list\npg_rewind: reading target file list\npg_rewind: reading WAL in target\npg_rewind: need to copy 53 MB (total source directory size is 1071 MB)\n54712/54712 kB (100%) copied\npg_rewind: creating backup label and updating control file\npg_rewind: syncing target data directory\npg_rewind: Done!\n'), { copiedMB: 53, sourceMB: 1071 });
  t.is(rewindCopied('pg_rewind: no rewind required\n'), undefined);
  // Crash recovery before pg_rewind keeps every WAL segment, from a stdin at EOF (single-user mode reads commands there).
  t.like(crashRecoveryPlan(ctx), { cmd: 'runuser', input: '' });
  t.deepEqual(crashRecoveryPlan(ctx).args.slice(3), ['/usr/lib/postgresql/15/bin/postgres', '--single', '-D', '/var/lib/geminik8s/pg', '-c', 'wal_keep_size=1TB', 'template1']);
  t.like(controlDataPlan(ctx), { env: { LC_ALL: 'C' } });
});

test('the cluster state in pg_controldata decides whether crash recovery runs before pg_rewind', (t) => {
  // pg_controldata 15's layout (abridged).
  const out = (state: string): string => `pg_control version number:            1300\nCatalog version number:               202209061\nDatabase system identifier:           7442003512462950419\nDatabase cluster state:               ${state}\npg_control last modified:             Thu 03 Dec 2026 19:02:16 UTC\n`;
  t.is(clusterState(out('in production')), 'in production');
  t.is(clusterState('no such line\n'), undefined);
  for (const s of ['in production', 'in crash recovery', 'shutting down', 'starting up']) t.true(needsCrashRecovery(clusterState(out(s))), s);
  for (const s of ['shut down', 'shut down in recovery', 'in archive recovery']) t.false(needsCrashRecovery(clusterState(out(s))), s);
  t.false(needsCrashRecovery(undefined));
});

test.serial('sd_notify never throws: a systemd-notify killed by a signal (a unit stop did that to the agent) is a false, not a crash', async (t) => {
  // Serial: ava runs serial tests before the concurrent ones, so PATH is ours alone here.
  const bin = tempDir();
  writeFileSync(join(bin, 'systemd-notify'), '#!/bin/sh\nkill -TERM $$\n', { mode: 0o755 });
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  try {
    t.false(await sdNotify('WATCHDOG=1', { socket: join(bin, 'notify.sock') }));
  } finally {
    process.env.PATH = path;
  }
});

test('sd_notify reaches the socket systemd gives us, with READY=1 and our PID', async (t) => {
  const dir = tempDir();
  const sock = join(dir, 'notify.sock');
  const out = join(dir, 'got.txt');
  // A tiny stand-in for systemd's notification socket: one datagram, written to a file. Then it
  // takes systemd-notify's BARRIER=1 (its passed fd is closed on receipt, which releases the
  // barrier); leaving before it made systemd-notify fail with "Failed to invoke barrier".
  const py = `import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nopen(sys.argv[2],'wb').write(s.recv(4096))\ns.settimeout(5)\ntry:\n  s.recv(4096)\nexcept OSError:\n  pass\n`;
  const listener = spawnPlan({ cmd: 'python3', args: ['-c', py, sock, out] });
  // Python's start-up alone can take seconds while the rest of the fast tier loads the machine.
  for (let i = 0; i < 400 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(existsSync(sock), 'the stand-in notification socket is bound');
  // The socket is handed over, not put in process.env: a PostgreSQL another test starts
  // meanwhile would inherit NOTIFY_SOCKET and send its own READY=1 to the stand-in.
  t.true(await sdNotify('READY=1\nSTATUS=role leader', { socket: sock }));
  await listener.exited;
  const got = readFileSync(out, 'utf8');
  t.regex(got, /READY=1/);
  t.regex(got, new RegExp(`MAINPID=${process.pid}`));
  t.false(await sdNotify('READY=1'), 'without NOTIFY_SOCKET nothing is sent');
  process.env.WATCHDOG_USEC = '30000000';
  t.is(watchdogIntervalMs(), 15_000);
  delete process.env.WATCHDOG_USEC;
  t.is(watchdogIntervalMs(), undefined);
  t.is((await runPlan({ cmd: 'systemd-notify', args: ['--help'] }, { allowFailure: true })).exitCode, 0);
});

test('agent.yaml.d: local drop-ins merge over the image\'s agent.yaml in name order; a bad one is named with its line and column', async (t) => {
  const dir = tempDir('gk-agent-conf-');
  const file = join(dir, 'agent.yaml');
  copyFileSync(join(ROOT, 'test/golden/render/amd64/image/etc/geminik8s/agent.yaml'), file);
  const plain = await loadAgentConfig(file);
  t.is(plain.boot, undefined, 'no drop-in directory: the image\'s file alone');
  mkdirSync(`${file}.d`);
  writeFileSync(join(`${file}.d`, '50-site.yaml'), 'boot:\n  trialTimeoutMs: 120000\nupgrade:\n  tries: 2\n');
  writeFileSync(join(`${file}.d`, '60-later.yml'), 'boot:\n  trialTimeoutMs: 90000\n');
  writeFileSync(join(`${file}.d`, 'README'), 'not yaml: [');
  const c = await loadAgentConfig(file);
  t.is(c.boot?.trialTimeoutMs, 90_000, 'the later drop-in wins');
  t.is(c.upgrade?.tries, 2);
  t.is(c.upgrade?.slotDevices.B, '/dev/disk/by-partlabel/ROOT_B', 'mappings merge: the image\'s other upgrade settings stay');
  t.is(c.image.version, '0.1.0', 'the image\'s own facts come from its file');

  // Keys this image does not know, each in its own drop-in (written for a newer image, say):
  // left out with a warning naming the file that set it, so an older slot still starts.
  writeFileSync(join(`${file}.d`, '61-newer.yaml'), 'boot:\n  typo1: 1\n');
  writeFileSync(join(`${file}.d`, '62-newer.yaml'), 'boot:\n  typo2: 2\n');
  writeFileSync(join(`${file}.d`, '.#63-lock.yaml'), 'not: [valid');
  const warnings: string[] = [];
  const tolerant = await loadAgentConfig(file, (m) => warnings.push(m));
  t.is(tolerant.boot?.trialTimeoutMs, 90_000);
  t.is(warnings.length, 2, warnings.join('\n'));
  t.regex(warnings[0]!, /61-newer\.yaml:2:\d+: boot\.typo1: .*left out/);
  t.regex(warnings[1]!, /62-newer\.yaml:2:\d+: boot\.typo2: .*left out/);
  writeFileSync(join(`${file}.d`, '70-bad.yaml'), 'boot:\n  trialTimeoutMs: soon\n  tryTimeout: 5\n');
  const err = await t.throwsAsync(loadAgentConfig(file), { instanceOf: ValidationError });
  const bad = join(`${file}.d`, '70-bad.yaml');
  t.like(err.issues.find((i) => i.path === 'boot.trialTimeoutMs'), { file: bad, line: 2, col: 19, message: 'wrong type' });
  t.like(err.issues.find((i) => i.path === 'boot.tryTimeout'), { file: bad, line: 3, message: 'unknown field (check the spelling)' });
  t.like(err.issues.find((i) => i.path === 'boot.typo2'), { file: join(`${file}.d`, '62-newer.yaml'), line: 2 }, 'with a real error, every unknown key is reported, each in its own file');
  writeFileSync(bad, 'boot: [\n');
  const syntax = await t.throwsAsync(loadAgentConfig(file), { instanceOf: ValidationError });
  t.like(syntax.issues[0], { file: bad, line: 2 });
  t.regex(syntax.issues[0]!.message, /YAML syntax/);
  writeFileSync(bad, '- a list\n');
  const list = await t.throwsAsync(loadAgentConfig(file), { instanceOf: ValidationError });
  t.like(list.issues[0], { file: bad, message: 'expected a mapping of settings' });
});

(process.getuid?.() === 0 ? test : test.skip)('NotifyPipe: the watchdog pings go through one python3 helper, each a datagram with the agent\'s PID in its credentials (NotifyAccess=main), several lines kept', async (t) => {
  const dir = tempDir();
  const sock = join(dir, 'notify.sock');
  const out = join(dir, 'got.jsonl');
  // A stand-in for systemd's socket that reads the sender's credentials as systemd does (SO_PASSCRED).
  const py = `import json,socket,struct,sys
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET,socket.SO_PASSCRED,1)
with open(sys.argv[2],'w') as f:
  for i in range(3):
    msg,anc,_,_=s.recvmsg(4096,socket.CMSG_SPACE(12))
    pid=[struct.unpack('3i',d)[0] for (l,ty,d) in anc if ty==socket.SCM_CREDENTIALS]
    f.write(json.dumps([msg.decode(),pid])+'\\n')
    f.flush()
`;
  const listener = spawnPlan({ cmd: 'python3', args: ['-c', py, sock, out] });
  for (let i = 0; i < 400 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  // The helper sends for a PID that is not its own (ours here, as the agent's in a node).
  const pipe = new NotifyPipe(sock, process.pid);
  t.teardown(() => pipe.close());
  pipe.prepare();
  for (let i = 0; i < 400 && !pipe.isReady(); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(pipe.isReady());
  for (const state of ['WATCHDOG=1\nSTATUS=role leader', 'WATCHDOG=1\nSTATUS=role follower', 'WATCHDOG=1']) t.true(await pipe.send(state));
  await listener.exited;
  const got = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as [string, number[]]);
  t.deepEqual(got, [['WATCHDOG=1\nSTATUS=role leader', [process.pid]], ['WATCHDOG=1\nSTATUS=role follower', [process.pid]], ['WATCHDOG=1', [process.pid]]]);
  t.false(await new NotifyPipe(undefined).send('WATCHDOG=1'), 'without NOTIFY_SOCKET nothing is sent');
});

test('NotifyPipe.whenReady: true once the helper said ready (what the agent waits for before it arms its watchdog), false at once without a socket', async (t) => {
  t.false(await new NotifyPipe(undefined).whenReady(60_000));
  // The helper needs no socket to start: it opens none until the first line.
  const pipe = new NotifyPipe(join(tempDir(), 'no.sock'), process.pid);
  t.teardown(() => pipe.close());
  t.false(pipe.isReady());
  t.true(await pipe.whenReady(60_000));
  t.true(pipe.isReady());
  t.true(await pipe.whenReady(1), 'ready stays ready');
});
