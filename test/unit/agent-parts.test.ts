import test from 'ava';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { Agent } from '../../agent/src/agent.ts';
import { metricsOf, startApi, statusOf } from '../../agent/src/api.ts';
import { nodeContext } from '../../agent/src/context.ts';
import { readHostMeta, writeHostMeta } from '../../agent/src/hostmeta.ts';
import { basebackupPlan, initdbPlan, rewindPlan } from '../../agent/src/postgres.ts';
import { sdNotify, watchdogIntervalMs } from '../../agent/src/sdnotify.ts';
import { garpPlan, vipAddPlan, vipDelPlan } from '../../agent/src/vip.ts';
import { runPlan, spawnPlan } from '../../common/exec.ts';
import { AgentConfigSchema } from '../../common/schema/agent.ts';
import type { HostMeta } from '../../common/schema/hostmeta.ts';
import { API_VERSION } from '../../common/schema/image.ts';
import { NodeSeedSchema } from '../../common/schema/seed.ts';
import { FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

async function context(stateDir = tempDir()) {
  const cluster = await loadFixtureCluster();
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = cluster;
  const seed = NodeSeedSchema.parse({ apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1', cluster: { ...spec, witness: { type: 'lease', url: 'http://127.0.0.1:1' } }, secrets: FAKE_SECRETS });
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
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const health = await fetch(`${base}/healthz`);
    t.is(health.status, 200);
    t.like(await health.json(), { ok: true, role: 'leader' });
    for (const path of ['/v1/status', '/metrics']) {
      t.is((await fetch(`${base}${path}`)).status, 401, path);
      t.is((await fetch(`${base}${path}`, { headers: { authorization: 'Bearer nope' } })).status, 401, path);
    }
    t.is((await fetch(`${base}/v1/switchover`, { method: 'POST' })).status, 401);
    const auth = { authorization: `Bearer ${FAKE_SECRETS.agentToken}` };
    const status = (await (await fetch(`${base}/v1/status`, { headers: auth })).json()) as Record<string, any>;
    t.like(status, { role: 'leader', generation: 3, standbySyncState: 'sync', node: 'node1' });
    t.like(status.postgres, { role: 'primary', lsn: '0/5000', timeline: 2, lagBytes: 0x100 });
    t.like(status.vip, { address: '192.168.10.50', heldHere: true });
    t.like(status.witness, { kind: 'lease' });
    t.like(status.lease, { arbiter: true, held: false });
    t.false(status.degraded);
    t.false(JSON.stringify(status).includes(FAKE_SECRETS.agentToken));
    const metrics = await (await fetch(`${base}/metrics`, { headers: auth })).text();
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
  } finally {
    server.close();
  }
});

test('command plans: VIP, gratuitous ARP, initdb, clone and rewind carry no secret', async (t) => {
  const ctx = await context('/var/lib/geminik8s');
  const vip = { address: '192.168.10.50', prefix: 24, device: 'eth0' };
  t.deepEqual(vipAddPlan(vip), { cmd: 'ip', args: ['addr', 'add', '192.168.10.50/24', 'dev', 'eth0', 'label', 'eth0:gk'] });
  t.deepEqual(vipDelPlan(vip), { cmd: 'ip', args: ['addr', 'del', '192.168.10.50/24', 'dev', 'eth0'] });
  t.deepEqual(garpPlan(vip), { cmd: 'arping', args: ['-U', '-c', '3', '-w', '2', '-I', 'eth0', '192.168.10.50'] });
  const plans = [initdbPlan(ctx, '/var/lib/geminik8s/initdb-pw'), basebackupPlan(ctx), rewindPlan(ctx)];
  t.snapshot(plans);
  const text = JSON.stringify(plans);
  for (const s of Object.values(FAKE_SECRETS)) t.false(text.includes(s));
  t.true(plans.every((p) => p.cmd === 'runuser' && p.args.slice(0, 3).join(' ') === '-u postgres --'));
  t.true(initdbPlan(ctx, 'x').args.includes('--data-checksums'));
});

test('sd_notify reaches the socket systemd gives us, with READY=1 and our PID', async (t) => {
  const dir = tempDir();
  const sock = join(dir, 'notify.sock');
  const out = join(dir, 'got.txt');
  // A tiny stand-in for systemd's notification socket: one datagram, written to a file.
  const py = `import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nopen(sys.argv[2],'wb').write(s.recv(4096))\n`;
  const listener = spawnPlan({ cmd: 'python3', args: ['-c', py, sock, out] });
  // Python's start-up alone can take seconds while the rest of the fast tier loads the machine.
  for (let i = 0; i < 400 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(existsSync(sock), 'the stand-in notification socket is bound');
  process.env.NOTIFY_SOCKET = sock;
  try {
    t.true(await sdNotify('READY=1\nSTATUS=role leader'));
  } finally {
    delete process.env.NOTIFY_SOCKET;
  }
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
