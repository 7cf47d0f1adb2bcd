import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NODE_PATHS } from '#common/render/paths.ts';
import type { NetworkInterfaceInfo } from 'node:os';
import { arpIgnoresForeign, dropVip, IpRunner, takeVip, vipAddPlan, vipDelPlan, vipHeldIn, vipRefusePlan, vipReleaseText, WaitingPlan, type VipSpec } from '#agent/vip.ts';
import { createVipPort } from '#agent/adapters/vip.ts';
import type { NodeContext } from '#agent/context.ts';
import { preparePlan } from '#common/exec.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

/**
 * The agent unit's ExecStopPost (overlays/usr/lib/geminik8s/release-vip.sh) against a real
 * interface: a veth link in a network namespace this test makes. Needs root (CI runs as root).
 */
const SCRIPT = join(ROOT, 'overlays', NODE_PATHS.releaseVipScript);
const runnable = process.getuid?.() === 0;
const maybe = runnable ? test.serial : test.skip;

async function withNs<T>(fn: (ns: string) => Promise<T>): Promise<T> {
  const ns = `gk-vip-${randomBytes(3).toString('hex')}`;
  await execa('ip', ['netns', 'add', ns]);
  try {
    // A veth pair: this kernel may lack the dummy driver; the harness uses veth too.
    await execa('ip', ['-n', ns, 'link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lan1']);
    await execa('ip', ['-n', ns, 'link', 'set', 'lan0', 'up']);
    await execa('ip', ['-n', ns, 'addr', 'add', '10.77.9.11/24', 'dev', 'lan0']);
    return await fn(ns);
  } finally {
    await execa('ip', ['netns', 'del', ns]);
  }
}

const addrs = async (ns: string): Promise<string> => (await execa('ip', ['-n', ns, '-o', '-4', 'addr', 'show', 'dev', 'lan0'])).stdout;
const release = (ns: string, file: string, bundle = '/nonexistent/agent.mjs'): Promise<{ exitCode?: number; stdout: string; stderr: string }> =>
  execa('ip', ['netns', 'exec', ns, '/bin/sh', SCRIPT, file, bundle, '/etc/geminik8s/agent.yaml'], { reject: false });

maybe('release-vip.sh drops the VIP the agent wrote down, leaves the node address, and is a no-op when the VIP is not there', async (t) => {
  const dir = tempDir('gk-release-vip-');
  const file = join(dir, 'vip');
  writeFileSync(file, vipReleaseText({ address: '10.77.9.50', prefix: 24, device: 'lan0' }));
  await withNs(async (ns) => {
    await execa('ip', ['-n', ns, 'addr', 'add', '10.77.9.50/24', 'dev', 'lan0']);
    t.regex(await addrs(ns), / inet 10\.77\.9\.50\/24 /);
    const r = await release(ns, file);
    t.is(r.exitCode, 0, r.stderr);
    t.notRegex(await addrs(ns), /10\.77\.9\.50/);
    t.regex(await addrs(ns), / inet 10\.77\.9\.11\/24 /, 'the node address stays');
    // Again: nothing to drop, nothing fails (the agent may have dropped it at its own shutdown).
    t.is((await release(ns, file)).exitCode, 0);
    // A prefix of the VIP's digits is another address: 10.77.9.5 is not 10.77.9.50.
    await execa('ip', ['-n', ns, 'addr', 'add', '10.77.9.5/24', 'dev', 'lan0']);
    t.is((await release(ns, file)).exitCode, 0);
    t.regex(await addrs(ns), / inet 10\.77\.9\.5\/24 /);
  });
});

maybe('release-vip.sh: an empty file (no VIP managed) does nothing; a damaged one is refused by name; without the file the agent itself is run', async (t) => {
  const dir = tempDir('gk-release-vip-');
  chmodSync(dir, 0o755);
  await withNs(async (ns) => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, vipReleaseText(undefined));
    t.is((await release(ns, empty)).exitCode, 0);
    const bad = join(dir, 'bad');
    writeFileSync(bad, '10.77.9.50;reboot 24 lan0\n');
    const r = await release(ns, bad);
    t.is(r.exitCode, 1);
    t.regex(r.stderr, new RegExp(`release-vip: ${bad}: expected ADDRESS PREFIX DEVICE`));
    // No file: it execs node with the bundle, which says what it could not load.
    const missing = await release(ns, join(dir, 'absent'), join(dir, 'agent.mjs'));
    t.not(missing.exitCode, 0);
    t.regex(missing.stderr, /agent\.mjs/);
  });
});

test('the release file names the VIP as ADDRESS PREFIX DEVICE, and nothing when the node manages none', (t) => {
  t.is(vipReleaseText({ address: '192.168.78.50', prefix: 24, device: 'eth0' }), '192.168.78.50 24 eth0\n');
  t.is(vipReleaseText(undefined), '');
});

maybe('the agent takes and drops the VIP through an ip -batch started ahead (IpRunner), on a real interface', async (t) => {
  await withNs(async (ns) => {
    const spec = { address: '10.77.9.60', prefix: 24, device: 'lan0' };
    // The waiting ip runs in the namespace; a command that found none ready would run as a
    // program of its own in this test's namespace, where lan0 does not exist, and fail.
    const ip = new IpRunner({ cmd: 'ip', args: ['-n', ns, '-batch', '-'] }, { spareAfterMs: 0 });
    t.teardown(() => ip.close());
    ip.prepare();
    await takeVip(spec, ip);
    t.regex(await addrs(ns), /10\.77\.9\.60\/24 .*lan0:gk/);
    await takeVip(spec, ip); // replace: taking it again is fine
    t.regex(await addrs(ns), /10\.77\.9\.60\/24 .*lan0:gk/);
    await dropVip(spec, ip);
    t.notRegex(await addrs(ns), /10\.77\.9\.60/);
    t.regex(await addrs(ns), /10\.77\.9\.11\/24/, 'the node address stays');
    await dropVip(spec, ip); // not there: allowed to fail
    t.deepEqual(ip.runs, { warm: 4, cold: 0 });
    // The next ip starts spareAfterMs after a use (here 0: a timer's turn of the event loop),
    // not before the command's caller gets its answer.
    await new Promise((r) => setTimeout(r, 20));
    // The command's own failure is the answer, named with what ip was told.
    await t.throwsAsync(takeVip({ ...spec, device: 'nosuch0' }, ip), { message: /exited with code 1: ip -n gk-vip-\w+ -batch - '<<< addr replace 10\.77\.9\.60\/24 dev nosuch0/ });
    t.deepEqual(ip.runs, { warm: 5, cold: 0 });
  });
});

test('WaitingPlan: a start on a waiting shell runs the plan; the next shell waits from spareAfterMs after it, a start before then runs as a program of its own, as does the second of two in a row; a shell whose stdin closes runs nothing', async (t) => {
  const out = join(tempDir(), 'ran');
  const plan = { cmd: 'sh', args: ['-c', 'echo "ran $$" >> "$1"', 'sh', out] };
  const w = new WaitingPlan(plan, { spareAfterMs: 300 });
  t.teardown(() => w.close());
  w.prepare();
  const r = await w.start({ timeoutMs: 10_000 });
  t.is(r.exitCode, 0);
  t.is(readFileSync(out, 'utf8').trim().split('\n').length, 1);
  t.deepEqual(w.runs, { warm: 1, cold: 0 });
  // Not on the event loop's next turn (the start would fork this process inside a switchover's pause).
  await new Promise((r) => setImmediate(r));
  await w.start({ timeoutMs: 10_000 });
  t.deepEqual(w.runs, { warm: 1, cold: 1 });
  // spareAfterMs after the last start, a shell waits again.
  await new Promise((r) => setTimeout(r, 400));
  await Promise.all([w.start({ timeoutMs: 10_000 }), w.start({ timeoutMs: 10_000 })]);
  t.deepEqual(w.runs, { warm: 2, cold: 2 });
  t.is(readFileSync(out, 'utf8').trim().split('\n').length, 4);
  // The agent exits: the waiting shell's stdin closes before any line, and the plan never runs.
  const other = join(tempDir(), 'never');
  const shell = preparePlan(WaitingPlan.shellPlan({ cmd: 'sh', args: ['-c', 'echo ran > "$1"', 'sh', other] }));
  t.is((await shell.run('', { timeoutMs: 10_000 })).exitCode, 0);
  t.false(existsSync(other));
});

maybe('vipHeldIn reads the VIP from what getifaddrs lists in the namespace: under its label, gone after the drop, and no answer for a link that is down', async (t) => {
  await withNs(async (ns) => {
    const spec = { address: '10.77.9.61', prefix: 24, device: 'lan0' };
    // The list as Node sees it inside the namespace, where the agent would run.
    const listed = async (): Promise<NodeJS.Dict<NetworkInterfaceInfo[]>> =>
      JSON.parse((await execa('ip', ['netns', 'exec', ns, process.execPath, '-e', 'console.log(JSON.stringify(require("os").networkInterfaces()))'])).stdout) as NodeJS.Dict<NetworkInterfaceInfo[]>;
    // Without a carrier (its veth peer down) the link is not running, and not listed at all.
    t.is(vipHeldIn(await listed(), spec), undefined);
    await execa('ip', ['-n', ns, 'link', 'set', 'lan1', 'up']);
    t.false(vipHeldIn(await listed(), spec));
    await execa('ip', ['-n', ns, ...vipAddPlan(spec).args]);
    const now = await listed();
    t.truthy(now['lan0:gk'], 'the secondary address is listed under its label');
    t.true(vipHeldIn(now, spec));
    t.false(vipHeldIn(now, { ...spec, address: '10.77.9.6' }), 'not an address it is a prefix of');
    t.true(vipHeldIn(now, { ...spec, address: '10.77.9.11' }), 'the node address, on the device itself');
    await execa('ip', ['-n', ns, ...vipDelPlan(spec).args]);
    t.false(vipHeldIn(await listed(), spec));
    // A link that is down is left out of the list: ip must answer then.
    await execa('ip', ['-n', ns, ...vipAddPlan(spec).args]);
    await execa('ip', ['-n', ns, 'link', 'set', 'lan0', 'down']);
    t.is(vipHeldIn(await listed(), spec), undefined);
  });
});

test('arpIgnoresForeign: the larger of all and the device\'s arp_ignore must be 1 or more; unreadable is no', (t) => {
  const reader = (values: Record<string, string>) => (path: string): string => {
    const name = /conf\/([^/]+)\/arp_ignore$/.exec(path)?.[1] ?? '';
    if (!(name in values)) throw new Error(`ENOENT: ${path}`);
    return `${values[name]}\n`;
  };
  t.false(arpIgnoresForeign('eth0', reader({ all: '0', eth0: '0' })));
  t.true(arpIgnoresForeign('eth0', reader({ all: '1', eth0: '0' })));
  t.true(arpIgnoresForeign('eth0', reader({ all: '0', eth0: '2' })));
  t.false(arpIgnoresForeign('eth0', reader({ all: '1' })), 'no such device');
  t.false(arpIgnoresForeign('eth0', reader({ all: 'x', eth0: 'y' })));
});

/**
 * Two namespaces on one veth link: the node (lan0, 10.77.9.11) and a client (lan1, 10.77.9.20).
 * `connect` runs Node's net.connect in the client namespace: 'refused', 'timeout' (none within
 * `ms`) or 'connected'.
 */
async function withNodeAndClient<T>(fn: (node: string, client: string) => Promise<T>): Promise<T> {
  return withNs(async (node) => {
    const client = `${node}-c`;
    await execa('ip', ['netns', 'add', client]);
    try {
      await execa('ip', ['-n', node, 'link', 'set', 'lan1', 'netns', client]);
      await execa('ip', ['-n', client, 'addr', 'add', '10.77.9.20/24', 'dev', 'lan1']);
      await execa('ip', ['-n', client, 'link', 'set', 'lan1', 'up']);
      return await fn(node, client);
    } finally {
      await execa('ip', ['netns', 'del', client]);
    }
  });
}
const connect = async (ns: string, address: string, ms: number): Promise<string> =>
  (
    await execa('ip', ['netns', 'exec', ns, process.execPath, '-e', `const s = require('net').connect(5432, ${JSON.stringify(address)}); const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, ${ms}); s.on('connect', () => { console.log('connected'); process.exit(0); }); s.on('error', (e) => { console.log(e.code === 'ECONNREFUSED' ? 'refused' : e.code); process.exit(0); });`])
  ).stdout.trim();
/** MAC addresses that answer ARP for `address` on the client's link. */
const arpAnswers = async (ns: string, address: string): Promise<string[]> => {
  const r = await execa('ip', ['netns', 'exec', ns, 'arping', '-c', '2', '-w', '2', '-I', 'lan1', address], { reject: false });
  return [...new Set([...r.stdout.matchAll(/\[([0-9a-f:]{17})\]/gi)].map((m) => m[1]!.toLowerCase()))];
};
const staticLocalRoutes = async (ns: string): Promise<string> => (await execa('ip', ['-n', ns, 'route', 'show', 'table', 'local', 'proto', 'static'])).stdout;

/**
 * The agent's VIP port for `spec` in namespace `node` (arp_ignore set there as the image sets
 * it), its `ip` and arping waiting in that namespace: a command that found none waiting would run
 * in this test's namespace instead, so each step prepares one first, as the control loop's looks do.
 */
async function nodePort(t: ExecutionContext, node: string, spec: VipSpec, refuseMs: number) {
  await execa('ip', ['netns', 'exec', node, 'sysctl', '-q', '-w', 'net.ipv4.conf.all.arp_ignore=1']);
  const ctx = { config: { vip: { enabled: true } }, spec: { network: { vip: spec.address, prefix: spec.prefix, interface: spec.device } } } as unknown as NodeContext;
  // Spares at once after each use (not SPARE_AFTER_MS later): these steps follow each other
  // within the agent's 3 s, and here a cold command would run in the wrong namespace.
  const ip = new IpRunner({ cmd: 'ip', args: ['-n', node, '-batch', '-'] }, { spareAfterMs: 0 });
  const garp = new WaitingPlan({ cmd: 'ip', args: ['netns', 'exec', node, 'arping', '-U', '-c', '1', '-I', spec.device, spec.address] }, { spareAfterMs: 0 });
  t.teardown(() => {
    ip.close();
    garp.close();
  });
  ip.prepare();
  return { ctx, ip, garp, port: createVipPort(ctx, { ip, garp, refuse: true, refuseMs }) };
}

maybe('after the agent drops the VIP, a client that still sends to this node is refused at once instead of waiting out its SYN, and nobody answers ARP for the address; the take removes the route, and without arp_ignore the drop is a plain delete', async (t) => {
  await withNodeAndClient(async (node, client) => {
    const spec = { address: '10.77.9.50', prefix: 24, device: 'lan0' };
    const { ctx, ip, garp, port } = await nodePort(t, node, spec, 60_000);
    t.true(port.refusesAfterDrop, 'the controller may drop the address while the server stops');
    await port.take();
    const nodeMac = (await execa('ip', ['-n', node, '-o', 'link', 'show', 'lan0'])).stdout.match(/link\/ether ([0-9a-f:]{17})/)![1]!;
    t.deepEqual(await arpAnswers(client, spec.address), [nodeMac], 'the holder answers ARP');
    t.is(await connect(client, spec.address, 3000), 'refused', 'held, nothing listening: refused');

    await port.drop();
    t.notRegex(await addrs(node), /10\.77\.9\.50/, 'the address is gone');
    t.regex(await staticLocalRoutes(node), /^local 10\.77\.9\.50 dev lan0 /m);
    // The client's neighbour entry still names the node, as a LAN client's would until the
    // new holder's gratuitous ARP.
    t.is(await connect(client, spec.address, 3000), 'refused', 'dropped, refusing: refused at once');
    t.deepEqual(await arpAnswers(client, spec.address), [], 'nobody answers ARP for the VIP');

    await port.take();
    t.is(await staticLocalRoutes(node), '', 'the take removed the refusing route');
    t.regex(await addrs(node), /10\.77\.9\.50\/24/);

    // Without the refusing route (arp_ignore 0 on a node): the packet is dropped and the
    // client's connect waits; this is what the route saves a client from.
    const plain = createVipPort(ctx, { ip, garp, refuse: false });
    t.false(plain.refusesAfterDrop, 'without the route, the controller drops the address only after the server stopped');
    await plain.drop();
    t.is(await staticLocalRoutes(node), '');
    await execa('ip', ['-n', client, 'neigh', 'replace', spec.address, 'lladdr', nodeMac, 'dev', 'lan1']);
    t.is(await connect(client, spec.address, 1500), 'timeout', 'dropped without the route: the SYN is lost');

    // A drop of an address this node does not carry adds no route, and the next take needs none gone.
    ip.prepare();
    await port.drop();
    t.is(await staticLocalRoutes(node), '');
    ip.prepare();
    await port.take();
    t.regex(await addrs(node), /10\.77\.9\.50\/24/);
  });
});

maybe('the refusing route ends by itself after its time, and release-vip.sh removes one an agent left behind', async (t) => {
  await withNodeAndClient(async (node) => {
    const spec = { address: '10.77.9.51', prefix: 24, device: 'lan0' };
    const { ip, port } = await nodePort(t, node, spec, 300);
    await port.take();
    ip.prepare();
    await port.drop();
    t.regex(await staticLocalRoutes(node), /10\.77\.9\.51/);
    const until = Date.now() + 20_000;
    while ((await staticLocalRoutes(node)) !== '' && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    t.is(await staticLocalRoutes(node), '', 'gone after refuseMs');

    // A second drop within refuseMs (the address already gone) keeps the first one's timer.
    ip.prepare();
    await port.take();
    ip.prepare();
    await port.drop();
    ip.prepare();
    await port.drop();
    const again = Date.now() + 20_000;
    while ((await staticLocalRoutes(node)) !== '' && Date.now() < again) await new Promise((r) => setTimeout(r, 100));
    t.is(await staticLocalRoutes(node), '', 'gone after refuseMs, a second drop notwithstanding');

    // An agent that ended within the moment: the unit's ExecStopPost removes the route.
    await execa('ip', ['-n', node, ...vipRefusePlan(spec).args]);
    const file = join(tempDir('gk-release-vip-'), 'vip');
    writeFileSync(file, vipReleaseText(spec));
    const r = await release(node, file);
    t.is(r.exitCode, 0, r.stderr);
    t.is(await staticLocalRoutes(node), '');
    t.regex((await execa('ip', ['-n', node, 'route', 'show', 'table', 'local'])).stdout, /local 10\.77\.9\.11 dev lan0 proto kernel/, 'the kernel\'s own routes stay');
  });
});
