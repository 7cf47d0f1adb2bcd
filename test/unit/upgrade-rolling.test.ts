import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import pino from 'pino';
import { Agent } from '#agent/agent.ts';
import { routes, startApi } from '#agent/api.ts';
import { nodeContext } from '#agent/context.ts';
import { upgradeStatus } from '#agent/upgrade.ts';
import { collectStatus, type Fetcher } from '#builder/ops/status.ts';
import { planRollingUpgrade, runRollingUpgrade, stageBundle, type StageAnswer } from '#builder/ops/upgrade.ts';
import { httpStream } from '#common/httpclient.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { NodeSeedSchema } from '#common/schema/seed.ts';
import { cli } from '#lab/cli.ts';
import { CLUSTER_FIXTURE, FAKE_SECRETS, fakeTls, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';
import { bundle, nodeWithBundle } from '../helpers/upgrade-node.ts';

// ------------------------------------------------------------ the agent's end: POST /v1/upgrade/stage

/** node1's real agent API on loopback (mutual TLS from the fixture CA), over a node on files, and the cluster as an operator reaches it. */
async function agentServing(node: Awaited<ReturnType<typeof nodeWithBundle>>['node']) {
  const fixture = await loadFixtureCluster();
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = fixture;
  const seed = NodeSeedSchema.parse({ apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1', cluster: spec, secrets: FAKE_SECRETS, tls: fakeTls('node1') });
  const config = AgentConfigSchema.parse({ ...node.config, listen: { host: '127.0.0.1', port: 0 }, serviceManager: 'direct', kubernetes: { enabled: false } });
  const agent = new Agent(nodeContext(config, seed), pino({ level: 'silent' }));
  agent.meta = { cluster: 'site-a', node: 'node1', role: 'follower', peer: 'node2', generation: 3, lastTransition: { at: '2026-01-01T00:00:00Z', from: 'init', to: 'follower', reason: 'test' } };
  const server = await startApi(agent);
  const port = (server.address() as AddressInfo).port;
  const cluster: Cluster = { ...fixture, agent: { ...fixture.agent, port }, nodes: fixture.nodes.map((n) => (n.name === 'node1' ? { ...n, ip: '127.0.0.1' } : n)) };
  return { agent, cluster, tls: { ca: fakeTls('node1').ca }, close: () => new Promise<void>((r) => {
    server.close(() => r());
    // A connection still open (a client that stopped mid-body) must not keep the worker alive:
    // once, with the fast tier beside two TCG guests, this file's worker stayed 10 min after its tests passed.
    server.closeAllConnections();
  }) };
}

const slotBytes = (file: string): Buffer => readFileSync(file);

test('POST /v1/upgrade/stage: a bundle streamed to the real agent API over TLS is verified, written to the passive slot and its try armed; admin only', async (t) => {
  const { node, file } = await nodeWithBundle();
  const a = await agentServing(node);
  t.teardown(a.close);
  t.deepEqual(routes(a.agent)['/v1/upgrade/stage']?.callers, ['admin']);
  t.true(routes(a.agent)['/v1/upgrade/stage']?.mutating);

  // The read credential may look, not stage.
  const asReader = await stageBundle(a.cluster, { ...FAKE_SECRETS, adminToken: FAKE_SECRETS.readToken }, a.tls, 'node1', file, false);
  t.false(asReader.ok);
  t.true(slotBytes(node.slots.B).equals(Buffer.alloc(slotBytes(node.slots.B).length, 0)), 'nothing written');

  const r = await stageBundle(a.cluster, FAKE_SECRETS, a.tls, 'node1', file, false);
  t.true(r.ok, r.reason);
  t.like(r, { slot: 'B', version: '1.1.0' });
  t.regex(r.reason, /staged 1\.1\.0 \(running 1\.0\.0\) on slot B, signed by \w+; its try is armed/);
  // Where the time went, in the line the operator's progress shows.
  t.regex(r.reason, /\(upload \d+\.\d s at \d+\.\d MB\/s, verify \d+\.\d s, root \d+\.\d s, kernel and initrd \d+\.\d s\)$/);
  const s = await upgradeStatus(node.upgrade, node.boot);
  t.is(s.boot.trySlot, 'B');
  t.like(s.record.current, { version: '1.1.0', slot: 'B', state: 'armed' });
  // The slot holds the bundle's root.img from its start: compare with the part the builder wrote.
  const root = readFileSync(join(node.dir, 'root.img'));
  t.true(slotBytes(node.slots.B).subarray(0, root.length).equals(root));
  t.deepEqual(readdirSync(node.config.stateDir).filter((f) => f.includes('incoming')), [], 'the uploaded file is gone');
});

test('POST /v1/upgrade/stage refuses, writing nothing to a slot: a bundle cut short, one that is tampered with, one signed by an untrusted key, a bad size header', async (t) => {
  const { node, file } = await nodeWithBundle();
  const a = await agentServing(node);
  t.teardown(a.close);
  const zeros = Buffer.alloc(statSync(node.slots.B).size, 0);
  const post = async (body: Buffer, bytes: string): Promise<{ status: number; text: string }> => {
    const r = await httpStream(`https://127.0.0.1:${a.cluster.agent.port}/v1/upgrade/stage`, {
      method: 'POST', headers: { authorization: `Bearer ${FAKE_SECRETS.adminToken}`, 'x-geminik8s-bundle-bytes': bytes },
      body: (async function* () { yield body; })(), connectTimeoutMs: 60_000, idleTimeoutMs: 60_000, tls: a.tls,
    });
    const chunks: Buffer[] = [];
    for await (const c of r.body) chunks.push(c as Buffer);
    return { status: r.status, text: Buffer.concat(chunks).toString('utf8') };
  };
  const whole = readFileSync(file);

  // The sender declares the whole size and sends half: the agent waits for the rest, then the connection ends.
  const cut = await post(whole.subarray(0, whole.length >> 1), String(whole.length)).catch((err: Error) => ({ status: 0, text: err.message }));
  t.not(cut.status, 200, cut.text);
  const longer = await post(whole, String(whole.length - 10));
  t.is(longer.status, 400);
  t.regex(longer.text, /did not arrive whole .*more than the \d+ bytes declared/);

  const tampered = Buffer.from(whole);
  tampered[tampered.length - 5000] = tampered[tampered.length - 5000]! ^ 0xff;
  const bad = await post(tampered, String(tampered.length));
  t.is(bad.status, 409, bad.text);
  t.regex(bad.text, /upgrade refused/);

  const stranger = await bundle(tempDir(), (await import('#common/minisign.ts')).generateKeyPair(), {}, 'stranger.upgrade.tar');
  const untrusted = await post(readFileSync(stranger), String(statSync(stranger).size));
  t.is(untrusted.status, 409);
  t.regex(untrusted.text, /upgrade refused: .*(key|signature)/i);

  for (const h of ['0', 'lots', String(2 ** 40)]) t.is((await post(Buffer.from('x'), h)).status, 400, h);
  t.true(slotBytes(node.slots.B).equals(zeros), 'slot B is as it was');
  t.is((await upgradeStatus(node.upgrade, node.boot)).boot.trySlot, undefined, 'no try armed');
  t.deepEqual(readdirSync(node.config.stateDir).filter((f) => f.includes('incoming')), []);
});

// ------------------------------------------------------------ the operator's end: the rolling order

type Name = 'node1' | 'node2';
interface FakeNode { role: 'leader' | 'follower'; slot: 'A' | 'B'; version: string; state: 'steady' | 'trying'; downPolls: number; armed?: 'A' | 'B'; upgradeState?: string }

/**
 * Two agents and the witness as the CLI sees them: a staged node reboots when asked and its
 * peer is a healthy, blessed leader or follower; a leader switches over first; a rebooted node
 * is away for a few polls, then runs its armed slot as a try for one poll, then blessed (or,
 * with `failGate`, falls back to its old slot).
 */
function fakePair(o: { failGate?: Name; versions?: Record<Name, string> } = {}) {
  const n: Record<Name, FakeNode> = {
    node1: { role: 'leader', slot: 'A', version: o.versions?.node1 ?? '1.0.0', state: 'steady', downPolls: 0 },
    node2: { role: 'follower', slot: 'A', version: o.versions?.node2 ?? '1.0.0', state: 'steady', downPolls: 0 },
  };
  const events: string[] = [];
  const peerOf = (x: Name): Name => (x === 'node1' ? 'node2' : 'node1');
  const up = (x: Name): boolean => n[x].downPolls === 0;
  const body = (x: Name) => {
    const v = n[x];
    const leader = v.role === 'leader';
    return {
      role: v.role, generation: 5, version: v.version, degraded: false, vip: { heldHere: leader }, lease: { held: leader, msLeft: 3000 },
      boot: { state: v.state, booted: v.slot, active: v.slot, ...(v.upgradeState ? { upgrade: { version: '1.1.0', slot: v.armed ?? 'B', state: v.upgradeState, at: '2026-12-03T00:00:00Z', reason: 'the health gate did not pass' } } : {}) },
      postgres: { up: true, timeline: 3, lsn: '0/5000', readOnly: !leader, ...(leader ? { role: 'primary', standby: up(peerOf(x)) ? { state: 'streaming', syncState: 'sync' } : undefined, lagBytes: 0 } : { role: 'standby', receiverStreaming: true }) },
    };
  };
  const fetcher: Fetcher = async (url, init) => {
    const u = new URL(url);
    const leader = (Object.keys(n) as Name[]).find((x) => n[x].role === 'leader' && up(x)) ?? null;
    if (u.pathname.startsWith('/v1/clusters/')) return { status: 200, body: { cluster: 'site-a', generation: 5, holder: leader, promotable: leader ? peerOf(leader) : null, timeline: 3 } };
    const x: Name = u.hostname === '192.168.10.11' ? 'node1' : 'node2';
    if (n[x].downPolls > 0) {
      if (u.pathname === '/v1/status' && --n[x].downPolls === 0) {
        // Back: the armed slot boots as a try.
        n[x].slot = n[x].armed!;
        n[x].version = '1.1.0';
        n[x].state = 'trying';
      }
      throw new Error('connect ECONNREFUSED');
    }
    if (u.pathname === '/v1/status') {
      const answer = { status: 200, body: body(x) };
      if (n[x].state === 'trying') {
        if (o.failGate === x) Object.assign(n[x], { slot: n[x].slot === 'A' ? 'B' : 'A', version: '1.0.0', state: 'steady', upgradeState: 'fell-back' });
        else n[x].state = 'steady';
      }
      return answer;
    }
    if (u.pathname === '/v1/upgrade/reboot') {
      if (init.headers.authorization !== `Bearer ${FAKE_SECRETS.adminToken}`) return { status: 403, body: { error: 'admin only' } };
      const p = peerOf(x);
      if (!up(p) || n[p].state !== 'steady') return { status: 409, body: { ok: false, retryable: true, reason: `the peer is ${up(p) ? n[p].state : 'away'}` } };
      const switched = n[x].role === 'leader';
      if (switched) [n[x].role, n[p].role] = ['follower', 'leader'];
      events.push(`reboot ${x}${switched ? ' after a switchover' : ''}`);
      n[x].downPolls = 3;
      return { status: 200, body: { ok: true, reason: switched ? `switched over to ${p}; rebooting` : 'the peer leads; rebooting', switchedOver: switched } };
    }
    return { status: 404, body: { error: 'no such endpoint' } };
  };
  const stage = async (_c: Cluster, _s: unknown, _t: unknown, node: string, _f: string, _r: boolean): Promise<StageAnswer> => {
    const x = node as Name;
    events.push(`stage ${x}`);
    n[x].armed = n[x].slot === 'A' ? 'B' : 'A';
    return { ok: true, reason: `staged 1.1.0 on slot ${n[x].armed}`, slot: n[x].armed, version: '1.1.0' };
  };
  return { n, events, fetcher, stage };
}

async function rolling(pair: ReturnType<typeof fakePair>, only?: string) {
  const cluster = await loadFixtureCluster();
  const before = await collectStatus(cluster, FAKE_SECRETS, pair.fetcher);
  const plan = planRollingUpgrade(before, '1.1.0', only);
  let clock = 0;
  const lines: string[] = [];
  const r = plan.refusal
    ? undefined
    : await runRollingUpgrade(cluster, FAKE_SECRETS, plan, { file: '/dev/null', version: '1.1.0', retry: false, timeoutMs: 600_000, tls: undefined, fetcher: pair.fetcher, stage: pair.stage, sleep: async (ms) => void (clock += ms), now: () => clock, progress: (l) => lines.push(l) });
  return { plan, r, lines };
}

test('a rolling upgrade: the follower first, until it is blessed with the pair healthy again, then the leader after its switchover', async (t) => {
  const pair = fakePair();
  const { plan, r, lines } = await rolling(pair);
  t.deepEqual(plan.steps.map((s) => [s.node, s.action]), [['node2', 'upgrade'], ['node1', 'upgrade']], 'the follower first');
  t.deepEqual(pair.events, ['stage node2', 'reboot node2', 'stage node1', 'reboot node1 after a switchover']);
  t.true(r!.outcomes.every((o) => o.done), lines.join('\n'));
  t.deepEqual(r!.outcomes.map((o) => [o.node, o.slot]), [['node2', 'B'], ['node1', 'B']]);
  t.is(r!.status.health, 'healthy');
  t.is(r!.status.leader, 'node2', 'the lease moved once, to the node upgraded first');
  t.true(lines.some((l) => /node2 runs 1\.1\.0 on slot B, blessed, and the pair is healthy/.test(l)));
  // The leader's reboot was asked for only once the follower was blessed again.
  t.true(lines.findIndex((l) => /^node1: staging/.test(l)) > lines.findIndex((l) => /node2 runs 1\.1\.0 on slot B, blessed/.test(l)));
});

test('a node whose try falls back stops the rolling upgrade: the other node is never staged', async (t) => {
  const pair = fakePair({ failGate: 'node2' });
  const { r } = await rolling(pair);
  t.deepEqual(pair.events, ['stage node2', 'reboot node2']);
  t.is(r!.outcomes.length, 1);
  t.false(r!.outcomes[0]!.done);
  t.regex(r!.outcomes[0]!.reason, /the try of slot B fell back: the health gate did not pass/);
  t.is(pair.n.node1.version, '1.0.0');
});

test('the plan: a node already on the version is skipped, an unhealthy or trying pair is refused, --node takes one', async (t) => {
  const done = fakePair({ versions: { node1: '1.0.0', node2: '1.1.0' } });
  const a = await rolling(done);
  t.deepEqual(a.plan.steps.map((s) => [s.node, s.action]), [['node2', 'skip'], ['node1', 'upgrade']]);
  t.deepEqual(done.events, ['stage node1', 'reboot node1 after a switchover']);

  const away = fakePair();
  away.n.node2.downPolls = 1000;
  const b = await rolling(away);
  t.regex(b.plan.refusal ?? '', /the pair is degraded \(node2 does not answer .*\): an upgrade starts only from a healthy pair/);
  t.deepEqual(away.events, []);

  const trying = fakePair();
  trying.n.node1.state = 'trying';
  trying.n.node1.slot = 'B';
  t.regex((await rolling(trying)).plan.refusal ?? '', /node1 boots an unblessed try of slot B/);

  const one = fakePair();
  const c = await rolling(one, 'node1');
  t.deepEqual(c.plan.steps.map((s) => s.node), ['node1']);
  t.deepEqual(one.events, ['stage node1', 'reboot node1 after a switchover']);
});

test('geminik8s upgrade: a missing or unsigned bundle and an unknown node are refused before any agent is called', async (t) => {
  const dir = tempDir();
  const missing = await cli('upgrade', '--cluster', CLUSTER_FIXTURE, '--bundle', join(dir, 'nope.tar'));
  t.is(missing.code, 2);
  t.regex(missing.stderr, /--bundle .*nope\.tar: no such file/);
  const unsigned = await bundle(dir, undefined, {}, 'unsigned.upgrade.tar');
  const u = await cli('upgrade', '--cluster', CLUSTER_FIXTURE, '--bundle', unsigned);
  t.is(u.code, 5);
  t.regex(u.stderr, /unsigned; nodes refuse it/);
  const { file } = await nodeWithBundle();
  const unknown = await cli('upgrade', '--cluster', CLUSTER_FIXTURE, '--bundle', file, '--node', 'node9');
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /--node: "node9" is not a node of/);
  writeFileSync(join(dir, 'junk.tar'), 'not a tar');
  t.is((await cli('upgrade', '--cluster', CLUSTER_FIXTURE, '--bundle', join(dir, 'junk.tar'))).code, 2);
  t.false(existsSync(join(dir, 'incoming.upgrade.tar')));
});

test('httpStream uploads a body of many chunks to a slow reader without piling up listeners (a 318 MB bundle warned of a leak after 11 waits for drain)', async (t) => {
  const { createServer } = await import('node:http');
  let received = 0;
  const srv = createServer((req, res) => {
    // Read slowly, so that the client waits for drain again and again.
    req.on('data', (c: Buffer) => {
      received += c.length;
      req.pause();
      setTimeout(() => req.resume(), 2);
    });
    req.on('end', () => res.end(JSON.stringify({ ok: true, reason: `${received} bytes` })));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    srv.close();
    srv.closeAllConnections();
  });
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(w.message);
  process.on('warning', onWarning);
  t.teardown(() => process.off('warning', onWarning));
  const chunk = Buffer.alloc(256 * 1024, 7);
  const a = await httpStream(`http://127.0.0.1:${(srv.address() as AddressInfo).port}/`, {
    method: 'POST', headers: {}, body: (async function* () { for (let i = 0; i < 40; i++) yield chunk; })(), connectTimeoutMs: 30_000, idleTimeoutMs: 30_000,
  });
  for await (const _ of a.body) { /* drain the answer */ }
  t.is(received, 40 * chunk.length);
  // Warnings are emitted on the next tick.
  await new Promise((r) => setImmediate(r));
  t.deepEqual(warnings.filter((w) => /MaxListeners|memory leak/.test(w)), []);
});
