import test from 'ava';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { peerIdentity } from '#common/tls.ts';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { createClock } from '#agent/adapters/clock.ts';
import { kubeRestartPlan } from '#agent/adapters/kube.ts';
import { createLogPort, redactFields } from '#agent/adapters/log.ts';
import { createPeerPort, peerBaseUrl, peerViewOf } from '#agent/adapters/peer.ts';
import {
  canKeepAside, createPgPort, inProgressMarker, livePostmasterPid, olderAsides, preRejoinName, standbyRefusal, statusFromRows, timelineOfWalFile,
} from '#agent/adapters/pg.ts';
import { createStatePort } from '#agent/adapters/state.ts';
import { createVipPort } from '#agent/adapters/vip.ts';
import { nodeContext, type NodeContext } from '#agent/context.ts';
import { formatLsn, lsnToBigInt } from '#agent/core/lsn.ts';
import type { LogPort } from '#agent/core/ports.ts';
import { spawnPlan } from '#common/exec.ts';
import { freePort } from '#lab/guest-cluster.ts';
import { registerSecret } from '#common/log.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { NodeSeedSchema } from '#common/schema/seed.ts';
import { FAKE_SECRETS, fakeCa, fakeTls, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';
import { expiredLeaf } from '../helpers/expired-cert.ts';

async function context(over: { stateDir?: string; tls?: boolean; vip?: boolean; kubernetes?: boolean; serviceManager?: 'systemd' | 'direct'; pgPort?: number } = {}): Promise<NodeContext> {
  const stateDir = over.stateDir ?? tempDir();
  const cluster = await loadFixtureCluster();
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = cluster;
  const seed = NodeSeedSchema.parse({
    apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1',
    cluster: { ...spec, agent: { ...spec.agent, insecurePlaintext: !(over.tls ?? true) }, postgresql: { ...spec.postgresql, port: over.pgPort ?? spec.postgresql.port } },
    secrets: FAKE_SECRETS,
    ...(over.tls ?? true ? { tls: fakeTls('node1') } : {}),
  });
  const config = AgentConfigSchema.parse({
    stateDir, seedFile: join(stateDir, 'seed.yaml'), listen: { host: '127.0.0.1', port: 0 },
    postgresql: { binDir: '/usr/lib/postgresql/15/bin', dataDir: join(stateDir, 'pg') },
    serviceManager: over.serviceManager ?? 'direct', vip: { enabled: over.vip ?? false }, kubernetes: { enabled: over.kubernetes ?? false },
  });
  const ctx = nodeContext(config, seed);
  // Tests reach only loopback: the peer is 127.0.0.2, where nothing listens.
  // The fixture's durations are already milliseconds; parsing them again in the seed reads them as seconds.
  const failover = { ...ctx.spec.failover, checkInterval: 1000, checkTimeout: 800, fenceAfter: 4000, promoteAfter: 6000, degradeAfter: 5000 };
  return { ...ctx, spec: { ...ctx.spec, failover }, peer: { ...ctx.peer, ip: '127.0.0.2' } };
}

const quiet: LogPort = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };

/** A port nothing listens on. */
const closedPort = freePort;

test('LSNs: parse, compare and print as PostgreSQL does', (t) => {
  t.is(lsnToBigInt('0/3000148'), 0x3000148n);
  t.is(lsnToBigInt('16/B374D848'), (0x16n << 32n) + 0xb374d848n);
  t.true(lsnToBigInt('1/0') > lsnToBigInt('0/FFFFFFFF'));
  for (const s of ['0/0', '0/3000148', '16/B374D848', 'FFFFFFFF/FFFFFFFF']) t.is(formatLsn(lsnToBigInt(s)), s);
  for (const bad of ['', '0', '0/', 'x/1', '1/2/3', '123456789/0']) t.throws(() => lsnToBigInt(bad), { message: /not a PostgreSQL LSN/ });
  t.throws(() => formatLsn(-1n));
});

test('pg status: rows of a primary and of a standby become a PgStatus with bigint LSNs', (t) => {
  const primary = statusFromRows(
    { rec: false, lsn: '0/5000060', walfile: '000000030000000000000005', tli: '2', ssn: '"node2"', ro: 'off', waiters: '2' },
    undefined,
    { state: 'streaming', sync_state: 'sync', flush: '0/5000060', replay: '0/5000000' },
  );
  t.deepEqual(primary, {
    up: true, inRecovery: false, lsn: 0x5000060n, timeline: 3, synchronousStandbyNames: '"node2"', readOnly: false, syncWaiters: 2,
    standby: { state: 'streaming', syncState: 'sync', flushLsn: 0x5000060n, replayLsn: 0x5000000n },
  }, 'a primary reports the timeline it writes on, newer than its last checkpoint');
  const noStandby = statusFromRows({ rec: false, lsn: '0/1', walfile: null, tli: 1, ssn: '', ro: 'on', waiters: 0 }, undefined, undefined);
  t.like(noStandby, { timeline: 1, readOnly: true, syncWaiters: 0 });
  t.is(noStandby.standby, undefined);
  const standby = statusFromRows({ rec: true, lsn: '0/4000000', walfile: null, tli: 1, ssn: '', ro: 'off', waiters: 0 }, { status: 'streaming', received_tli: 2 }, undefined);
  t.like(standby, { inRecovery: true, lsn: 0x4000000n, timeline: 2, receiverStreaming: true });
  const lonely = statusFromRows({ rec: true, lsn: null, walfile: null, tli: 1, ssn: '', ro: 'off', waiters: 0 }, undefined, undefined);
  t.like(lonely, { receiverStreaming: false, timeline: 1 });
  t.is(lonely.lsn, undefined);
  t.is(timelineOfWalFile('00000002000000000000000A'), 2);
  t.is(timelineOfWalFile('garbage'), undefined);
});

test('configureStandby refuses a running primary, or a running server it cannot query that has no standby.signal', (t) => {
  t.regex(standbyRefusal({ status: { up: true, inRecovery: false }, postmasterRunning: true, standbySignal: false })!, /running here as a primary/);
  t.regex(standbyRefusal({ status: { up: true, inRecovery: false }, postmasterRunning: false, standbySignal: true })!, /primary/, 'what the server says wins over files');
  t.regex(standbyRefusal({ status: { up: false, error: 'password authentication failed' }, postmasterRunning: true, standbySignal: false })!, /does not answer \(password/);
  t.is(standbyRefusal({ status: { up: true, inRecovery: true }, postmasterRunning: true, standbySignal: true }), undefined);
  t.is(standbyRefusal({ status: { up: false }, postmasterRunning: false, standbySignal: false }), undefined, 'stopped: fine');
  t.is(standbyRefusal({ status: { up: false }, postmasterRunning: true, standbySignal: true }), undefined, 'a starting standby: fine');
});

test('rejoin fallback: the name of the copy kept aside, older copies, and the free-space rule', (t) => {
  t.is(preRejoinName('/var/lib/postgresql/15/main/', new Date('2026-03-04T05:06:07.089Z')), '/var/lib/postgresql/15/main.pre-rejoin-2026-03-04T050607.089Z');
  t.deepEqual(olderAsides('/d/main', ['main', 'main.pre-rejoin-2026-01-01T000000.000Z', 'mainly', 'other.pre-rejoin-x', 'main.pre-rejoin-2025-12-31T000000.000Z']),
    ['/d/main.pre-rejoin-2026-01-01T000000.000Z', '/d/main.pre-rejoin-2025-12-31T000000.000Z']);
  t.true(canKeepAside(1000, 1101));
  t.false(canKeepAside(1000, 1100));
  t.false(canKeepAside(1000, 0));
});

test('postmaster.pid: only a live PostgreSQL process counts', async (t) => {
  const dir = tempDir();
  t.is(livePostmasterPid(dir), undefined, 'no pid file');
  writeFileSync(join(dir, 'postmaster.pid'), `${process.pid}\n${dir}\n`);
  t.is(livePostmasterPid(dir), undefined, 'a live process that is not PostgreSQL (pid reuse) does not count');
  writeFileSync(join(dir, 'postmaster.pid'), '999999999\n');
  t.is(livePostmasterPid(dir), undefined, 'a dead pid');
  const fake = join(tempDir(), 'postgres');
  copyFileSync('/bin/sleep', fake);
  const p = spawnPlan({ cmd: fake, args: ['30'] });
  try {
    writeFileSync(join(dir, 'postmaster.pid'), `${p.pid}\n`);
    t.is(livePostmasterPid(dir), p.pid);
  } finally {
    p.kill('SIGKILL');
    await p.exited;
  }
  t.is(livePostmasterPid(dir), undefined);
});

test('pg port guards: disk facts, and no standby.signal, clone or initdb over a running postmaster', async (t) => {
  const ctx = await context({ pgPort: await closedPort() });
  const data = ctx.config.postgresql.dataDir;
  const pg = createPgPort(ctx, quiet);
  t.deepEqual(await pg.disk(), { hasData: false, standbySignal: false });
  mkdirSync(data, { recursive: true });
  writeFileSync(join(data, 'PG_VERSION'), '15\n');
  writeFileSync(inProgressMarker(ctx), 'basebackup\n');
  t.deepEqual(await pg.disk(), { hasData: false, standbySignal: false }, 'an unfinished clone is no data');
  writeFileSync(join(data, 'standby.signal'), '');
  const { rmSync } = await import('node:fs');
  rmSync(inProgressMarker(ctx));
  t.deepEqual(await pg.disk(), { hasData: true, standbySignal: true });
  await t.throwsAsync(pg.initPrimary(''), { message: /refusing to initdb/ });
  rmSync(join(data, 'standby.signal'));

  // A "postmaster" (a process named postgres) that does not answer on the port.
  const fake = join(tempDir(), 'postgres');
  copyFileSync('/bin/sleep', fake);
  const p = spawnPlan({ cmd: fake, args: ['60'] });
  try {
    writeFileSync(join(data, 'postmaster.pid'), `${p.pid}\n`);
    await t.throwsAsync(pg.configureStandby(), { message: /postmaster runs without standby.signal/ });
    t.false(existsSync(join(data, 'standby.signal')), 'nothing written');
    await t.throwsAsync(pg.clone(), { message: /refusing to clone/ });
    t.true(existsSync(join(data, 'PG_VERSION')), 'nothing deleted');
  } finally {
    p.kill('SIGKILL');
    await p.exited;
  }
});

test('pg fence: when the immediate shutdown does not stop the postmaster, SIGKILL it (direct mode)', async (t) => {
  const ctx = await context({ pgPort: await closedPort() });
  const data = ctx.config.postgresql.dataDir;
  mkdirSync(data, { recursive: true });
  const warnings: string[] = [];
  const pg = createPgPort(ctx, { ...quiet, warn: (_f, m) => warnings.push(m) });
  const fake = join(tempDir(), 'postgres');
  copyFileSync('/bin/sleep', fake);
  // Ignores SIGQUIT and SIGTERM like a wedged server would not; only SIGKILL stops it.
  const p = spawnPlan({ cmd: 'bash', args: ['-c', `trap '' QUIT TERM INT; exec -a postgres ${fake} 120`] });
  writeFileSync(join(data, 'postmaster.pid'), `${p.pid}\n`);
  const started = performance.now();
  await pg.fence();
  t.true(performance.now() - started >= 10_000, 'waited for the immediate shutdown first');
  t.is(await p.exited, 'SIGKILL');
  t.true(warnings.some((w) => /SIGKILL/.test(w)));
  await pg.fence(); // fencing a stopped server is a no-op
});

test('peer: status mapping, mutual TLS with the cluster CA (http only in development plaintext), promote sends the LSN as PostgreSQL spells it', async (t) => {
  t.deepEqual(peerViewOf({ role: 'leader', generation: 4, postgres: { role: 'primary', timeline: 3 } }), { role: 'leader', generation: 4, timeline: 3, pgPrimary: true });
  t.deepEqual(peerViewOf({ role: 'follower', generation: 4, postgres: null }), { role: 'follower', generation: 4 });
  t.deepEqual(peerViewOf({ role: 'leader', generation: 4, postgres: null, standbySyncState: 'sync' }), { role: 'leader', generation: 4, standbySyncState: 'sync' });
  t.deepEqual(peerViewOf({ role: 'follower', generation: 4, postgres: { role: 'standby', timeline: null } }), { role: 'follower', generation: 4, pgPrimary: false });
  t.is(peerViewOf({ role: 'king', generation: 1 }), undefined);
  t.is(peerViewOf({ role: 'leader', generation: -1 }), undefined);
  t.regex(peerBaseUrl(await context()), /^https:\/\/127\.0\.0\.2:/);
  t.regex(peerBaseUrl(await context({ tls: false })), /^http:\/\/127\.0\.0\.2:/);

  const seen: { auth?: string; body?: string; client?: string }[] = [];
  let answer: [number, unknown] = [200, {}];
  // node2's agent as the peer: its certificate from the fixture CA, asking for node1's.
  const node2 = fakeTls('node2');
  const server = createHttpsServer({ cert: node2.cert, key: node2.key, ca: node2.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ auth: req.headers.authorization, body, client: peerIdentity(req.socket)?.name });
      if (req.url === '/v1/status') {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ role: 'follower', generation: 2, postgres: { role: 'standby', timeline: 1 } }));
      }
      res.writeHead(answer[0], { 'content-type': 'application/json' });
      res.end(typeof answer[1] === 'string' ? answer[1] : JSON.stringify(answer[1]));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const base = await context();
    const ctx: NodeContext = { ...base, peer: { ...base.peer, ip: '127.0.0.1' }, peerApiPort: (server.address() as AddressInfo).port };
    const peer = createPeerPort(ctx);
    t.deepEqual(await peer.status(), { role: 'follower', generation: 2, timeline: 1, pgPrimary: false });
    t.is(seen[0]!.auth, `Bearer ${FAKE_SECRETS.agentToken}`);
    t.is(seen[0]!.client, 'node1', 'the peer presents its own client certificate');
    answer = [200, { ok: true, generation: 3, reason: 'promoted' }];
    t.deepEqual(await peer.promote({ lsn: 0x16b374d848n, generation: 2 }), { ok: true, generation: 3, reason: 'promoted' });
    t.deepEqual(JSON.parse(seen[1]!.body!), { lsn: '16/B374D848', generation: 2 });
    answer = [409, { ok: false, reason: 'replayed 0/1, need 16/B374D848' }];
    t.deepEqual(await peer.promote({ lsn: 1n, generation: 2 }), { ok: false, reason: 'replayed 0/1, need 16/B374D848' });
    answer = [500, 'oops'];
    t.deepEqual(await peer.promote({ lsn: 1n, generation: 2 }), { ok: false, reason: 'peer answered 500' });
    answer = [200, { ok: true, reason: 'synchronous replication off' }];
    t.deepEqual(await peer.leave({ generation: 2 }, 3000), { ok: true, reason: 'synchronous replication off' });
    t.deepEqual({ body: JSON.parse(seen.at(-1)!.body!), client: seen.at(-1)!.client }, { body: { generation: 2 }, client: 'node1' });
    answer = [409, { ok: false, reason: 'syncPolicy is strict: commits wait for the standby until it is back' }];
    t.deepEqual(await peer.leave({ generation: 2 }, 3000), { ok: false, reason: 'syncPolicy is strict: commits wait for the standby until it is back' });
    answer = [500, 'oops'];
    t.deepEqual(await peer.leave({ generation: 2 }, 3000), { ok: false, reason: 'peer answered 500' });
    // A peer whose certificate is not from the cluster CA is not talked to.
    const stranger = createPeerPort({ ...ctx, tls: { ...ctx.tls!, ca: fakeTls('node1').cert } });
    const before = seen.length;
    t.is(await stranger.status(), undefined);
    await t.throwsAsync(stranger.promote({ lsn: 1n, generation: 2 }), { message: /outcome unknown.*(certificate|issuer)/i });
    t.is(seen.length, before);
  } finally {
    server.close();
  }
  // A peer serving an expired certificate (the right CA, the right address) is not talked to either.
  const expired = await expiredLeaf(fakeCa(), { cluster: 'site-a', name: 'node2', hosts: ['127.0.0.1'] });
  const old = createHttpsServer({ ...expired, ca: fakeTls('node2').ca, requestCert: true, rejectUnauthorized: true }, (_req, res) => res.end('{}'));
  await new Promise<void>((r) => old.listen(0, '127.0.0.1', r));
  try {
    const base = await context();
    const toOld = createPeerPort({ ...base, peer: { ...base.peer, ip: '127.0.0.1' }, peerApiPort: (old.address() as AddressInfo).port });
    t.is(await toOld.status(), undefined);
    await t.throwsAsync(toOld.promote({ lsn: 1n, generation: 2 }), { message: /outcome unknown.*expired/i });
  } finally {
    old.close();
  }
  const gone = await context();
  const unreachable = createPeerPort({ ...gone, peer: { ...gone.peer, ip: '127.0.0.1' }, peerApiPort: await closedPort() });
  t.is(await unreachable.status(), undefined);
  await t.throwsAsync(unreachable.promote({ lsn: 1n, generation: 1 }), { message: /outcome unknown/ });
  await t.throwsAsync(unreachable.leave({ generation: 1 }, 3000));
});

test('log port: every string in fields and message is redacted; bigints and errors survive', (t) => {
  const secret = 'SeCrEt-value-for-the-log-test';
  registerSecret(secret);
  const lines: string[] = [];
  const sink = new Writable({ write(chunk, _e, cb) { lines.push(String(chunk)); cb(); } });
  const log = createLogPort(pino({ level: 'debug' }, sink));
  const cyclic: Record<string, unknown> = { name: secret };
  cyclic.self = cyclic;
  log.warn({ event: 'x', dsn: `postgres://u:${secret}@h/db`, nested: [{ deep: { v: secret } }], lsn: 0x16b374d848n, err: new Error(`failed with ${secret}`), cyclic }, `message ${secret}`);
  log.debug({}, 'debug line');
  t.is(lines.length, 2);
  t.false(lines.join('').includes(secret));
  const first = JSON.parse(lines[0]!) as Record<string, any>;
  t.is(first.msg, 'message ***');
  t.is(first.dsn, 'postgres://u:***@h/db');
  t.is(first.nested[0].deep.v, '***');
  t.is(first.lsn, String(0x16b374d848n));
  t.like(first.err, { type: 'Error', message: 'failed with ***' });
  t.regex(first.err.stack, /^Error: failed with \*\*\*\n/);
  t.is(first.cyclic.self, '[circular]');
  t.deepEqual(redactFields({ a: [1, true, null, undefined] }), { a: [1, true, null, undefined] });
  t.deepEqual(redactFields({ e: new Error(secret) }), { e: { type: 'Error', message: '***' } }, 'errors below the top level become plain objects');
});

test('clock: timers fire, cancel works (also after firing), sleep waits', async (t) => {
  const clock = createClock();
  const fired: string[] = [];
  const a = clock.setTimer(20, () => fired.push('a'));
  const b = clock.setTimer(20, () => fired.push('b'));
  b.cancel();
  const t0 = clock.now();
  await clock.sleep(60);
  t.true(clock.now() - t0 >= 55);
  t.deepEqual(fired, ['a']);
  a.cancel();
  b.cancel();
});

test('vip, state and kube ports', async (t) => {
  const ctx = await context({ vip: false });
  const vip = createVipPort(ctx);
  t.false(await vip.held());
  await vip.take();
  t.true(await vip.held());
  await vip.drop();
  t.false(await vip.held());

  const state = createStatePort(ctx);
  t.is(await state.read(), undefined);
  const meta = { cluster: 'site-a', node: 'node1', role: 'leader' as const, peer: 'node2', generation: 2, lastTransition: { at: '2026-01-01T00:00:00.000Z', from: 'init' as const, to: 'leader' as const, reason: 't' } };
  await state.write(meta);
  t.deepEqual(await state.read(), meta);
  await t.throwsAsync(state.write({ ...meta, generation: 1 }), { message: /refusing to lower the generation/ });
  const { statSync, readdirSync } = await import('node:fs');
  t.is(statSync(join(ctx.config.stateDir, 'hostmeta.json')).mode & 0o777, 0o644);
  t.deepEqual(readdirSync(ctx.config.stateDir), ['hostmeta.json'], 'no temp file left');

  t.is(kubeRestartPlan(await context({ kubernetes: true, serviceManager: 'direct' })), undefined);
  t.is(kubeRestartPlan(await context({ kubernetes: false, serviceManager: 'systemd' })), undefined);
  t.deepEqual(kubeRestartPlan(await context({ kubernetes: true, serviceManager: 'systemd' })), { cmd: 'systemctl', args: ['restart', 'kine.service', 'k3s.service'] });
});
