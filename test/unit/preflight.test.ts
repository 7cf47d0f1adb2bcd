import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assessHost, HOST_LIMITS, type HostFacts } from '#common/preflight.ts';
import { memTotalOf, readHostFacts } from '#agent/preflight.ts';
import { arpReplies, clockItem, parseRoute, renderPreflight, runPreflight, vipItem, type PreflightPorts, type VipProbe } from '#builder/ops/preflight.ts';
import { FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

const GIB = 1024 ** 3;
const facts = (over: Partial<HostFacts> = {}): HostFacts => ({
  memTotalBytes: 8 * GIB,
  disk: { path: '/var/lib/postgresql', freeBytes: 50 * GIB, totalBytes: 100 * GIB },
  link: { device: 'eth0', exists: true, operstate: 'up', carrier: true, speedMbps: 1000, mac: '52:54:00:12:34:56' },
  addressPresent: true,
  ...over,
});
const status = (items: { name: string; status: string }[], name: string) => items.find((i) => i.name === name)?.status;

test('host checks: memory, disk, link and address each pass, warn or fail at their limits', (t) => {
  const want = { address: '10.0.0.11', kubernetes: true };
  const ok = assessHost(facts(), want);
  t.deepEqual(ok.map((i) => i.status), ['pass', 'pass', 'pass', 'pass']);
  t.regex(ok.find((i) => i.name === 'link')!.detail, /eth0: operstate up, carrier on, 1000 Mb\/s/);
  t.is(status(assessHost(facts({ memTotalBytes: HOST_LIMITS.memoryFailBytes - 1 }), want), 'memory'), 'fail');
  t.is(status(assessHost(facts({ memTotalBytes: 1.5 * GIB }), want), 'memory'), 'warn');
  // Without K3s, 1.5 GiB is enough for PostgreSQL and the agent.
  t.is(status(assessHost(facts({ memTotalBytes: 1.5 * GIB }), { ...want, kubernetes: false }), 'memory'), 'pass');
  t.is(status(assessHost(facts({ memTotalBytes: null }), want), 'memory'), 'warn');
  t.is(status(assessHost(facts({ disk: { path: '/x', freeBytes: 0.5 * GIB, totalBytes: 8 * GIB } }), want), 'disk'), 'fail');
  t.is(status(assessHost(facts({ disk: { path: '/x', freeBytes: 3 * GIB, totalBytes: 8 * GIB } }), want), 'disk'), 'warn');
  t.is(status(assessHost(facts({ disk: null }), want), 'disk'), 'fail');
  const down = assessHost(facts({ link: { ...facts().link, operstate: 'down', carrier: false } }), want);
  t.is(status(down, 'link'), 'fail');
  t.regex(down.find((i) => i.name === 'link')!.detail, /no link/);
  // operstate "unknown" with a carrier is a working link (some drivers never report "up").
  t.is(status(assessHost(facts({ link: { ...facts().link, operstate: 'unknown' } }), want), 'link'), 'pass');
  t.is(status(assessHost(facts({ link: { ...facts().link, exists: false } }), want), 'link'), 'fail');
  t.is(status(assessHost(facts({ addressPresent: false }), want), 'address'), 'fail');
});

test('host facts are read from /proc and /sys (here: directories the test makes)', async (t) => {
  const dir = tempDir();
  mkdirSync(join(dir, 'proc'));
  writeFileSync(join(dir, 'proc', 'meminfo'), 'MemTotal:        2031616 kB\nMemFree:          100000 kB\n');
  const nic = join(dir, 'sys', 'class', 'net', 'eth0');
  mkdirSync(nic, { recursive: true });
  for (const [f, v] of Object.entries({ operstate: 'up\n', carrier: '1\n', speed: '10000\n', address: 'AA:BB:CC:00:11:22\n' })) writeFileSync(join(nic, f), v);
  const f = await readHostFacts({ dataDir: join(dir, 'not', 'made', 'yet'), device: 'eth0', address: '10.0.0.11' }, { proc: join(dir, 'proc'), sys: join(dir, 'sys') }, async () => true);
  t.is(f.memTotalBytes, 2031616 * 1024);
  t.is(f.disk?.path, dir, 'the nearest existing directory above the data directory');
  t.true((f.disk?.totalBytes ?? 0) > 0);
  t.deepEqual(f.link, { device: 'eth0', exists: true, operstate: 'up', carrier: true, speedMbps: 10000, mac: 'aa:bb:cc:00:11:22' });
  // A missing carrier file (reading it fails while the interface is down) is no carrier.
  writeFileSync(join(nic, 'operstate'), 'down\n');
  writeFileSync(join(nic, 'carrier'), '0\n');
  const down = await readHostFacts({ dataDir: dir, device: 'eth0', address: '10.0.0.11' }, { proc: join(dir, 'proc'), sys: join(dir, 'sys') }, async () => false);
  t.false(down.link.carrier);
  t.false(down.addressPresent);
  const none = await readHostFacts({ dataDir: dir, device: 'eth9', address: '10.0.0.11' }, { proc: join(dir, 'nope'), sys: join(dir, 'sys') }, async () => false);
  t.is(none.memTotalBytes, null);
  t.false(none.link.exists);
  t.is(memTotalOf('MemFree: 1 kB\n'), null);
});

test('clock: pass inside the bound even at the worst reading, fail outside it at the best, warn when the reading cannot tell', (t) => {
  t.is(clockItem('c', 100, 50, 2000).status, 'pass');
  t.is(clockItem('c', -1990, 50, 2000).status, 'warn');
  t.is(clockItem('c', 2040, 50, 2000).status, 'warn');
  t.is(clockItem('c', -2100, 50, 2000).status, 'fail');
  t.regex(clockItem('c', 5000, 10, 2000).detail, /^\+5000 ms \(±10 ms\), more than 2000 ms off/);
});

test('vip: free, held by a node of this cluster, held by another host, two MACs, off-link and not checked', (t) => {
  const macs = new Map([['node1', '52:54:00:00:00:01'], ['node2', '52:54:00:00:00:02']]);
  const v = (p: VipProbe) => vipItem('10.0.0.50', p, macs);
  t.is(v({ method: 'arp', device: 'eth0', macs: [] }).status, 'pass');
  const held = v({ method: 'arp', device: 'eth0', macs: ['52:54:00:00:00:02', '52:54:00:00:00:02'] });
  t.is(held.status, 'pass');
  t.regex(held.detail, /held by node2 .*already runs/);
  const foreign = v({ method: 'arp', device: 'eth0', macs: ['de:ad:be:ef:00:01'] });
  t.is(foreign.status, 'fail');
  t.regex(foreign.detail, /de:ad:be:ef:00:01, which is no node of this cluster/);
  const both = v({ method: 'arp', device: 'eth0', macs: ['52:54:00:00:00:01', 'DE:AD:BE:EF:00:01'] });
  t.is(both.status, 'fail');
  t.regex(both.detail, /2 MACs \(52:54:00:00:00:01 = node1, de:ad:be:ef:00:01\)/);
  t.is(v({ method: 'ping', via: '10.9.0.1', answered: true }).status, 'fail');
  t.is(v({ method: 'ping', via: '10.9.0.1', answered: false }).status, 'warn');
  t.is(v({ method: 'none', reason: 'arping is missing' }).status, 'warn');
  t.is(v({ method: 'local', device: 'eth0' }).status, 'fail');
});

test('arping and ip route output is parsed as iputils and iproute2 print it', (t) => {
  const out = 'ARPING 10.77.0.50 from 10.77.0.100 eth0\nUnicast reply from 10.77.0.50 [7A:1C:4F:00:9B:03]  0.612ms\nUnicast reply from 10.77.0.50 [7A:1C:4F:00:9B:03]  0.101ms\nSent 3 probes (1 broadcast(s))\nReceived 2 response(s)\n';
  t.deepEqual(arpReplies(out), ['7a:1c:4f:00:9b:03', '7a:1c:4f:00:9b:03']);
  t.deepEqual(arpReplies('ARPING 10.77.0.50 from 10.77.0.100 eth0\nSent 3 probes (3 broadcast(s))\nReceived 0 response(s)\n'), []);
  t.deepEqual(parseRoute('10.77.0.50 dev eth0 src 10.77.0.100 uid 0 \\    cache \n'), { device: 'eth0', via: null, local: false });
  t.deepEqual(parseRoute('10.9.0.50 via 10.77.0.1 dev eth0 src 10.77.0.100 uid 0 \\    cache \n'), { device: 'eth0', via: '10.77.0.1', local: false });
  t.deepEqual(parseRoute('local 10.77.0.50 dev lo src 10.77.0.50 uid 0 \\    cache <local> \n'), { device: 'lo', via: null, local: true });
  t.is(parseRoute('RTNETLINK answers: Network is unreachable'), null);
});

/** Ports that answer as a test says: per URL an answer or a thrown error; a clock that advances 20 ms per reading. */
function fakePorts(answers: Record<string, { status: number; body: unknown; date?: string } | Error>, opts: { pings?: string[]; vip?: VipProbe } = {}): PreflightPorts & { calls: string[] } {
  let clock = Date.parse('2026-12-01T12:00:00.000Z');
  const calls: string[] = [];
  return {
    calls,
    fetch: async (url) => {
      calls.push(url);
      const a = Object.entries(answers).find(([k]) => url.includes(k))?.[1];
      if (!a) throw new Error(`connect ECONNREFUSED ${url}`);
      if (a instanceof Error) throw a;
      return a;
    },
    ping: async (ip) => (opts.pings ?? []).includes(ip),
    vip: async () => opts.vip ?? { method: 'arp', device: 'eth0', macs: [] },
    now: () => (clock += 20),
  };
}

test('runPreflight: agents\' host checks, a node without an agent, the witness, the VIP and clocks, all in one report', async (t) => {
  const cluster = await loadFixtureCluster();
  const [n1, n2] = cluster.nodes;
  const base = Date.parse('2026-12-01T12:00:00.000Z');
  const host = (node: string, now: number, mac: string) => ({ status: 200, body: { node, now, mac, checks: assessHost(facts(), { address: '10.0.0.1', kubernetes: true }) } });
  // node1 answers with its clock 5 s ahead; node2 is only pingable; the witness has no record yet.
  const ports = fakePorts({ [`${n1!.ip}:`]: host(n1!.name, base + 5030, '52:54:00:00:00:01'), '/v1/clusters/': { status: 404, body: { error: 'no record' }, date: new Date(base).toUTCString() } }, { pings: [n2!.ip], vip: { method: 'arp', device: 'eth0', macs: ['52:54:00:00:00:01'] } });
  const r = await runPreflight(cluster, FAKE_SECRETS, ports, { maxClockOffsetMs: 2000 });
  const by = (name: string) => r.items.find((i) => i.name === name);
  t.is(by(`${n1!.name} agent`)?.status, 'pass');
  t.is(by(`${n1!.name} memory`)?.status, 'pass');
  t.is(by(`${n2!.name} reachable`)?.status, 'warn');
  t.regex(by(`${n2!.name} reachable`)!.detail, /answers ping, but no agent answers/);
  t.is(by('witness')?.status, 'pass');
  t.regex(by('witness')!.detail, /no record of/);
  t.regex(by('vip')!.detail, new RegExp(`held by ${n1!.name}`), 'the MAC the agent reported identifies the holder');
  t.is(by(`${n1!.name} clock`)?.status, 'fail');
  t.regex(by(`${n1!.name} clock`)!.detail, /^\+4990 ms \(±20 ms\)/, 'offset against the middle of the round trip, half of it as uncertainty');
  t.is(by('witness clock')?.status, 'pass');
  t.is(r.status, 'fail');
  t.regex(renderPreflight(r), /^preflight .*: FAIL \(\d+ passed, 1 warnings, 1 failed\)$/m);
  t.true(ports.calls.every((u) => u.startsWith('https://')), 'TLS by default');
});

test('runPreflight: an agent that refuses the read-token runs another cluster\'s seed; a node and a witness that answer nothing fail', async (t) => {
  const cluster = await loadFixtureCluster();
  const [n1, n2] = cluster.nodes;
  const r = await runPreflight(cluster, FAKE_SECRETS, fakePorts({ [`${n1!.ip}:`]: { status: 401, body: { error: 'bad token' } } }), { maxClockOffsetMs: 2000 });
  const by = (name: string) => r.items.find((i) => i.name === name);
  t.is(by(`${n1!.name} agent`)?.status, 'fail');
  t.regex(by(`${n1!.name} agent`)!.detail, /another cluster's seed/);
  t.is(by(`${n2!.name} reachable`)?.status, 'fail');
  t.is(by('witness')?.status, 'fail');
  t.is(r.clocks.length, 0);
  // The seeds swapped between the boxes.
  const swapped = await runPreflight(cluster, FAKE_SECRETS, fakePorts({ [`${n1!.ip}:`]: { status: 200, body: { node: n2!.name, now: Date.parse('2026-12-01T12:00:00.030Z'), mac: null, checks: [] } } }), { maxClockOffsetMs: 2000 });
  t.regex(swapped.items.find((i) => i.name === `${n1!.name} agent`)!.detail, /seeds are swapped/);
});
