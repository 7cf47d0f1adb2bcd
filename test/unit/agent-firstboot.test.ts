import test from 'ava';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { firstboot, firstbootAtStart } from '#agent/firstboot.ts';
import { renderSeedFiles } from '#builder/render/index.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import { FAKE_SECRETS, fakeTls, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

const config = (kubernetes: boolean) =>
  AgentConfigSchema.parse({ postgresql: { binDir: '/usr/lib/postgresql/17/bin', dataDir: '/var/lib/postgresql/17/main' }, kubernetes: { enabled: kubernetes } });

async function seedInto(root: string, mutate: (text: string) => string = (t) => t): Promise<void> {
  const cluster = await loadFixtureCluster();
  const seed = renderSeedFiles(cluster, 'node1', FAKE_SECRETS, fakeTls('node1')).find((f) => f.path === 'geminik8s/seed.yaml')!;
  const dir = join(root, 'run/geminik8s/config/geminik8s');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'seed.yaml'), mutate(seed.content));
}

test('first boot with a good seed keeps a 0600 copy and writes the node files (Kubernetes layer on)', async (t) => {
  const root = tempDir();
  await seedInto(root);
  const lines: string[] = [];
  const r = await firstboot(config(true), root, (l) => lines.push(l));
  t.is(r.state, 'configured');
  t.is(statSync(join(root, 'var/lib/geminik8s/seed.yaml')).mode & 0o777, 0o600);
  t.regex(readFileSync(join(root, 'etc/rancher/k3s/config.yaml'), 'utf8'), /token-file: \/var\/lib\/geminik8s\/secrets\/k3s-token/);
  t.is(statSync(join(root, 'var/lib/geminik8s/secrets/k3s-token')).mode & 0o777, 0o600);
  t.is(readFileSync(join(root, 'var/lib/geminik8s/secrets/k3s-token'), 'utf8').trim(), FAKE_SECRETS.k3sToken);
  t.regex(lines.join('\n'), /node node1 of cluster site-a configured/);
  t.false(lines.join('\n').includes(FAKE_SECRETS.k3sToken));
  t.like(JSON.parse(readFileSync(join(root, 'var/lib/geminik8s/status.json'), 'utf8')), { state: 'configured', node: 'node1' });
  // Idempotent: a second run (e.g. after a reboot mid-way) gives the same files.
  const again = await firstboot(config(true), root, () => undefined);
  t.deepEqual(again.written, r.written);
});

test('first boot with the Kubernetes layer off writes no K3s or Kine files', async (t) => {
  const root = tempDir();
  await seedInto(root);
  const r = await firstboot(config(false), root, () => undefined);
  t.is(r.state, 'configured');
  t.false(existsSync(join(root, 'etc/rancher/k3s/config.yaml')));
  t.deepEqual(r.written, ['/var/lib/geminik8s/seed.yaml']);
});

test('a bad seed leaves the node unconfigured, says why on the console, and changes nothing', async (t) => {
  const root = tempDir();
  await seedInto(root, (text) => text.replace('vip: 192.168.10.50', 'vip: 192.168.10.11'));
  const lines: string[] = [];
  const r = await firstboot(config(true), root, (l) => lines.push(l));
  t.is(r.state, 'unconfigured');
  t.regex(lines.join('\n'), /UNCONFIGURED/);
  t.regex(lines.join('\n'), /seed\.yaml:\d+:\d+: cluster\.network\.vip: the VIP must differ from both node IPs/);
  t.false(existsSync(join(root, 'var/lib/geminik8s/seed.yaml')));
  t.false(existsSync(join(root, 'etc/rancher')));
  t.like(JSON.parse(readFileSync(join(root, 'var/lib/geminik8s/status.json'), 'utf8')), { state: 'unconfigured' });
});

test('no seed at all: unconfigured with a message that says how to provide one', async (t) => {
  const root = tempDir();
  const lines: string[] = [];
  const r = await firstboot(config(false), root, (l) => lines.push(l));
  t.is(r.state, 'unconfigured');
  t.regex(lines.join('\n'), /no geminik8s seed found: write one with `geminik8s seed`/);
});

// firstboot-needed.sh (run by the agent's start and the initramfs) reads the record first boot writes: run for real.
const ROOT_DIR = new URL('../../', import.meta.url).pathname;
const NEEDED = join(ROOT_DIR, 'overlays/usr/lib/geminik8s/firstboot-needed.sh');
const needed = async (stamp: string): Promise<{ code: number; out: string }> => {
  const { runPlan } = await import('#common/exec.ts');
  const r = await runPlan({ cmd: 'sh', args: [NEEDED, stamp] }, { allowFailure: true });
  return { code: r.exitCode, out: r.stdout.trim() };
};

/** A root with a good seed on its medium, and the two other inputs first boot records (a bundle and an agent config). */
async function seededRoot(): Promise<{ root: string; bundle: string; agentYaml: string }> {
  const root = tempDir();
  await seedInto(root);
  const bundle = join(root, 'agent.mjs');
  const agentYaml = join(root, 'agent.yaml');
  writeFileSync(bundle, '// agent v1\n');
  writeFileSync(agentYaml, 'kubernetes: {enabled: false}\n');
  return { root, bundle, agentYaml };
}

test('a configured node skips its next first boot until the seed, the agent or its config changes', async (t) => {
  const { root, bundle, agentYaml } = await seededRoot();
  const stamp = join(root, 'var/lib/geminik8s/firstboot.sha256');
  t.is((await needed(stamp)).code, 0, 'never configured: first boot runs');

  await firstboot(config(false), root, () => undefined, [bundle, agentYaml]);
  t.is(statSync(stamp).mode & 0o777, 0o600);
  const skip = await needed(stamp);
  t.is(skip.code, 1, 'nothing changed: skipped');
  t.regex(skip.out, /first boot skipped/);

  for (const [file, change] of [
    [join(root, 'run/geminik8s/config/geminik8s/seed.yaml'), (s: string) => s.replace('192.168.10.50', '192.168.10.51')],
    [bundle, (s: string) => `${s}// agent v2\n`],
    [agentYaml, (s: string) => s.replace('false', 'true')],
  ] as const) {
    const before = readFileSync(file, 'utf8');
    writeFileSync(file, change(before));
    t.is((await needed(stamp)).code, 0, `${file} changed: first boot runs`);
    writeFileSync(file, before);
    t.is((await needed(stamp)).code, 1);
  }

  // A re-seed that is invalid leaves the node unconfigured and drops the record.
  await seedInto(root, (text) => text.replace('vip: 192.168.10.50', 'vip: 192.168.10.11'));
  t.is((await firstboot(config(false), root, () => undefined, [bundle, agentYaml])).state, 'unconfigured');
  t.false(existsSync(stamp));
  t.is((await needed(stamp)).code, 0);
});

// The initramfs runs the same check before the switch to the root (GEMINIK8S_ROOT): the record's
// paths are the booted system's, read under the new root, except the seed medium's (under /run,
// kept as is). A wrong decision there would skip a first boot that a new seed needs.
test('firstboot-needed.sh under GEMINIK8S_ROOT reads the recorded paths under that root, except the kept prefix', async (t) => {
  const { runPlan } = await import('#common/exec.ts');
  const root = tempDir();
  const media = tempDir();
  for (const [file, text] of [
    [join(root, 'usr/lib/geminik8s/agent.mjs'), '// agent v1\n'],
    [join(root, 'etc/geminik8s/agent.yaml'), 'kubernetes: {enabled: false}\n'],
    [join(media, 'geminik8s/seed.yaml'), 'seed v1\n'],
  ] as const) {
    mkdirSync(join(file, '..'), { recursive: true });
    writeFileSync(file, text);
  }
  const { createHash } = await import('node:crypto');
  const sum = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
  // As the node records it: absolute paths of the booted system.
  const stamp = join(root, 'var/lib/geminik8s/firstboot.sha256');
  mkdirSync(join(stamp, '..'), { recursive: true });
  writeFileSync(
    stamp,
    [`${sum(join(media, 'geminik8s/seed.yaml'))}  ${media}/geminik8s/seed.yaml`, `${sum(join(root, 'usr/lib/geminik8s/agent.mjs'))}  /usr/lib/geminik8s/agent.mjs`, `${sum(join(root, 'etc/geminik8s/agent.yaml'))}  /etc/geminik8s/agent.yaml`, ''].join('\n'),
  );
  const check = async (env: Record<string, string>) => (await runPlan({ cmd: 'sh', args: [NEEDED, stamp], env }, { allowFailure: true })).exitCode;
  const env = { GEMINIK8S_ROOT: root, GEMINIK8S_ROOT_KEEP: `${media}/` };
  t.is(await check(env), 1, 'unchanged under the root: skipped');
  t.is(await check({}), 0, 'without the root the paths do not exist: first boot runs');
  t.is(await check({ GEMINIK8S_ROOT: root }), 0, 'the seed prefixed with the root does not exist: first boot runs');
  writeFileSync(join(media, 'geminik8s/seed.yaml'), 'seed v2\n');
  t.is(await check(env), 0, 'a new seed on the medium: first boot runs');
  writeFileSync(join(media, 'geminik8s/seed.yaml'), 'seed v1\n');
  writeFileSync(join(root, 'usr/lib/geminik8s/agent.mjs'), '// agent v2\n');
  t.is(await check(env), 0, 'a new agent in the root: first boot runs');
});

// First boot runs inside the agent's start (`run --firstboot`): one Node.js start per boot.
const START_PATHS = { firstbootUnchanged: '/run/geminik8s/firstboot-unchanged', firstbootNeededScript: '/usr/lib/geminik8s/firstboot-needed.sh', seedMount: '/run/geminik8s/config' };

test("the agent's start skips first boot on the initramfs's marker without running the check, and on the check's 1", async (t) => {
  const calls: string[] = [];
  const ports = (marker: boolean, code: number) => ({
    exists: (p: string) => marker && p === START_PATHS.firstbootUnchanged,
    neededScript: async (...args: string[]) => {
      calls.push(args.join(' '));
      return code;
    },
    run: async () => {
      calls.push('firstboot');
      return { state: 'configured' as const, issues: [], written: [] };
    },
    print: () => undefined,
  });
  t.deepEqual(await firstbootAtStart(config(false), ports(true, 0), START_PATHS), { ran: false, why: 'initramfs' });
  t.deepEqual(calls, []);
  t.deepEqual(await firstbootAtStart(config(false), ports(false, 1), START_PATHS), { ran: false, why: 'unchanged' });
  t.deepEqual(calls, ['/usr/lib/geminik8s/firstboot-needed.sh /var/lib/geminik8s/firstboot.sha256 /run/geminik8s/config']);
  // Changed (0), or the check could not run (-1, 127): first boot runs, it is idempotent.
  for (const code of [0, -1, 127]) {
    calls.length = 0;
    t.like(await firstbootAtStart(config(false), ports(false, code), START_PATHS), { ran: true, result: { state: 'configured' } });
    t.is(calls.at(-1), 'firstboot', `check exit ${code}`);
  }
});

test("the agent's start with the real check and first boot: configures, then skips, runs again for a new agent, skips on the initramfs's marker, and ends unconfigured on a bad seed", async (t) => {
  const { root, bundle, agentYaml } = await seededRoot();
  const cfg = config(false);
  const marker = join(root, 'run/geminik8s/firstboot-unchanged');
  const lines: string[] = [];
  const start = () =>
    firstbootAtStart(cfg, {
      exists: (p) => existsSync(join(root, p)),
      // The script as the node runs it (the test above pins which one), on this root's record; no seed mount: nothing to mount here.
      neededScript: async (_script, stamp) => (await needed(join(root, stamp))).code,
      run: () => firstboot(cfg, root, (l) => lines.push(l), [bundle, agentYaml]),
      print: (l) => lines.push(l),
    }, START_PATHS);
  t.like(await start(), { ran: true, result: { state: 'configured', node: 'node1' } });
  t.deepEqual(await start(), { ran: false, why: 'unchanged' });
  t.regex(lines.at(-1)!, /first boot skipped/);
  writeFileSync(bundle, '// agent v2\n');
  t.like(await start(), { ran: true, result: { state: 'configured' } }, 'a new agent: first boot again');
  mkdirSync(join(marker, '..'), { recursive: true });
  writeFileSync(marker, '');
  t.deepEqual(await start(), { ran: false, why: 'initramfs' });
  rmSync(marker);
  await seedInto(root, (text) => text.replace('vip: 192.168.10.50', 'vip: 192.168.10.11'));
  t.like(await start(), { ran: true, result: { state: 'unconfigured' } });
  t.regex(lines.join('\n'), /UNCONFIGURED: the node seed is invalid/);
});

test('geminik8s-agent run --firstboot without a seed exits 2 (the unit does not restart it), records "unconfigured", and leaves an empty VIP file for the ExecStopPost', async (t) => {
  const { runPlan } = await import('#common/exec.ts');
  const root = tempDir();
  const configFile = join(root, 'agent.yaml');
  // Everything first boot would write is under this root; no seed at either place.
  const vipFile = join(root, 'run/vip');
  writeFileSync(configFile, `stateDir: ${root}/state\nseedFile: ${root}/state/seed.yaml\nseedSource: ${root}/media/geminik8s/seed.yaml\nvip: {releaseFile: ${vipFile}}\npostgresql: {binDir: /usr/lib/postgresql/17/bin, dataDir: ${root}/pg}\nkubernetes: {enabled: false}\n`);
  const r = await runPlan({ cmd: process.execPath, args: ['--import', 'tsx', join(ROOT_DIR, 'agent/src/main.ts'), 'run', '--firstboot', '--config', configFile], cwd: ROOT_DIR }, { allowFailure: true, timeoutMs: 60_000 });
  t.is(r.exitCode, 2, r.stderr);
  t.regex(r.stdout, /UNCONFIGURED: .*no geminik8s seed found/);
  t.like(JSON.parse(readFileSync(join(root, 'state/status.json'), 'utf8')), { state: 'unconfigured' });
  // No VIP to drop, and the unit's ExecStopPost knows it without a second Node.js start: with
  // no file it would run the bundle given here, which does not exist.
  t.is(readFileSync(vipFile, 'utf8'), '');
  const post = await runPlan({ cmd: 'sh', args: [join(ROOT_DIR, 'overlays/usr/lib/geminik8s/release-vip.sh'), vipFile, join(root, 'no-such-agent.mjs'), configFile] }, { allowFailure: true });
  t.is(post.exitCode, 0, post.stderr);
});
