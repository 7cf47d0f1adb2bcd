import test from 'ava';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NODE_PATHS } from '#common/render/paths.ts';
import type { NetworkInterfaceInfo } from 'node:os';
import { dropVip, IpRunner, takeVip, vipAddPlan, vipDelPlan, vipHeldIn, vipReleaseText, WaitingPlan } from '#agent/vip.ts';
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
    const ip = new IpRunner({ cmd: 'ip', args: ['-n', ns, '-batch', '-'] });
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
    // The next ip starts once the caller has moved on (a turn of the event loop), not before
    // the command's caller gets its answer.
    await new Promise((r) => setImmediate(r));
    // The command's own failure is the answer, named with what ip was told.
    await t.throwsAsync(takeVip({ ...spec, device: 'nosuch0' }, ip), { message: /exited with code 1: ip -n gk-vip-\w+ -batch - '<<< addr replace 10\.77\.9\.60\/24 dev nosuch0/ });
    t.deepEqual(ip.runs, { warm: 5, cold: 0 });
  });
});

test('WaitingPlan: a start on a waiting shell runs the plan; the next shell waits once the caller moves on; two starts in a row run the second as a program of its own; a shell whose stdin closes runs nothing', async (t) => {
  const out = join(tempDir(), 'ran');
  const plan = { cmd: 'sh', args: ['-c', 'echo "ran $$" >> "$1"', 'sh', out] };
  const w = new WaitingPlan(plan);
  t.teardown(() => w.close());
  w.prepare();
  const r = await w.start({ timeoutMs: 10_000 });
  t.is(r.exitCode, 0);
  t.is(readFileSync(out, 'utf8').trim().split('\n').length, 1);
  t.deepEqual(w.runs, { warm: 1, cold: 0 });
  // The next shell starts on the event loop's next turn, after the caller got its answer.
  await new Promise((r) => setImmediate(r));
  await Promise.all([w.start({ timeoutMs: 10_000 }), w.start({ timeoutMs: 10_000 })]);
  t.deepEqual(w.runs, { warm: 2, cold: 1 });
  t.is(readFileSync(out, 'utf8').trim().split('\n').length, 3);
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
