import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runPlan, spawnPlan, type RunningProcess } from '#common/exec.ts';
import { loadCluster, loadClusterTls, loadSecrets, SECRET_FILES } from '#common/config.ts';
import { buildAgent } from '../../agent/build.ts';
import { SEED_FILE_IN_PARTITION } from '#builder/render/cloud-init.ts';
import { renderSeedFiles } from '#builder/render/index.ts';
import { harnessInitFlags, PG_BIN } from '../harness/cluster.ts';
import { createTopology, destroyNamespaces, inNs, linkDown, linkUp, NET, type Topology } from '#lab/netns.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

// Namespaces need root (CI runs as root). Nothing runs the pair here: preflight is for before install.
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;

const prefix = `gk${process.pid}-pf`;
const dir = tempDir('gk-preflight-');
const clusterFile = join(dir, 'site', 'cluster.yaml');
let topo: Topology;
let witness: RunningProcess | undefined;

const preflight = (...args: string[]) => runPlan(inNs(topo.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'preflight', '--cluster', clusterFile, ...args]), { allowFailure: true, timeoutMs: 120_000 });

test.before(async () => {
  if (!canRun) return;
  // The cluster exactly as `geminik8s init` writes it for the harness's network.
  const { flags } = harnessInitFlags();
  const r = await cli('init', '--name', flags.name!, '--node1-ip', flags.node1Ip!, '--node2-ip', flags.node2Ip!, '--vip', flags.vip!, '--prefix', flags.prefix!, '--gateway', flags.gateway!, '--witness', flags.witness!, '--config-dir', join(dir, 'site'));
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  const w = await cli('witness', 'credentials', '--cluster', clusterFile, '--out', join(dir, 'witness'));
  if (w.code !== 0) throw new Error(`witness credentials failed: ${w.stderr}`);
  topo = await createTopology(prefix);
});

test.after.always(async () => {
  if (!canRun) return;
  witness?.kill('SIGKILL');
  await destroyNamespaces(prefix);
});

serial('preflight before install: nodes only pingable (warn), no witness yet (fail, exit 10), then the witness up and the VIP free (exit 0)', async (t) => {
  t.timeout(300_000);
  const none = await preflight();
  t.is(none.exitCode, 10, none.stdout + none.stderr);
  t.regex(none.stdout, /^\[WARN\] node1 reachable: 10\.77\.0\.11 answers ping, but no agent answers on port \d+/m);
  t.regex(none.stdout, /^\[FAIL\] witness: https:\/\/10\.77\.0\.1:7444 does not answer/m);
  t.regex(none.stdout, /^\[PASS\] vip: 10\.77\.0\.50 is free: no ARP reply on eth0$/m);
  t.regex(none.stderr, /preflight of harness failed: witness:/);

  const secrets = join(dir, 'site', 'secrets');
  witness = spawnPlan(inNs(topo.witnessNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'witness', 'serve', '--listen', `${NET.gateway}:${NET.witnessPort}`, '--token-file', join(secrets, SECRET_FILES.witnessToken), '--tls-dir', join(dir, 'witness'), '--state-dir', join(dir, 'witness-state')]));
  let ok = await preflight('--json');
  for (let i = 0; i < 60 && ok.exitCode !== 0; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    ok = await preflight('--json');
  }
  t.is(ok.exitCode, 0, ok.stdout + ok.stderr);
  const report = JSON.parse(ok.stdout) as { status: string; items: { name: string; status: string; detail: string }[]; clocks: { who: string }[] };
  t.is(report.status, 'warn');
  t.regex(report.items.find((i) => i.name === 'witness')!.detail, /no record of harness yet/);
  t.is(report.items.find((i) => i.name === 'witness clock')?.status, 'pass');
  t.deepEqual(report.clocks.map((c) => c.who), ['witness']);
});

serial('preflight refuses a VIP that another host on the link answers for, naming its MAC (exit 10)', async (t) => {
  t.timeout(300_000);
  // node1's box, not running geminik8s (no agent to say it is a node), takes the VIP.
  const ns = topo.nodeNs.node1!;
  await runPlan({ cmd: 'ip', args: ['-n', ns, 'addr', 'add', `${NET.vip}/${NET.prefix}`, 'dev', 'eth0'] });
  try {
    const mac = (await runPlan(inNs(ns, 'cat', ['/sys/class/net/eth0/address']))).stdout.trim();
    const r = await preflight();
    t.is(r.exitCode, 10, r.stdout + r.stderr);
    t.true(r.stdout.includes(`[FAIL] vip: ${NET.vip} is answered by ${mac}, which is no node of this cluster`), r.stdout);
    t.regex(r.stderr, /preflight of harness failed: vip:/);
  } finally {
    await runPlan({ cmd: 'ip', args: ['-n', ns, 'addr', 'del', `${NET.vip}/${NET.prefix}`, 'dev', 'eth0'] }, { allowFailure: true });
  }
  t.is((await preflight()).exitCode, 0, 'free again');
});

serial('the agent\'s own preflight on a node (the shipped bundle, the seed init renders): memory, disk, link and address; a dead link fails it', async (t) => {
  t.timeout(300_000);
  const cluster = await loadCluster(clusterFile);
  const secrets = await loadSecrets(join(dir, 'site', cluster.secretsDir));
  const nodeDir = join(dir, 'node2');
  mkdirSync(nodeDir, { recursive: true });
  const seed = renderSeedFiles(cluster, 'node2', secrets, await loadClusterTls(clusterFile, cluster, 'node2')).find((f) => f.path === SEED_FILE_IN_PARTITION)!;
  writeFileSync(join(nodeDir, 'seed.yaml'), seed.content, { mode: 0o600 });
  writeFileSync(join(nodeDir, 'agent.yaml'), stringify({ seedFile: join(nodeDir, 'seed.yaml'), stateDir: join(nodeDir, 'state'), postgresql: { binDir: PG_BIN, dataDir: join(nodeDir, 'pgdata') } }));
  const bundle = await buildAgent(join(dir, 'agent.mjs'));
  const run = () => runPlan(inNs(topo.nodeNs.node2!, 'node', [bundle, 'preflight', '--config', join(nodeDir, 'agent.yaml'), '--json']), { allowFailure: true, timeoutMs: 60_000 });
  const up = await run();
  t.is(up.exitCode, 0, up.stdout + up.stderr);
  const report = JSON.parse(up.stdout) as { node: string; mac: string; checks: { name: string; status: string; detail: string }[] };
  t.is(report.node, 'node2');
  t.is(report.mac, (await runPlan(inNs(topo.nodeNs.node2!, 'cat', ['/sys/class/net/eth0/address']))).stdout.trim());
  const item = (r: typeof report, name: string) => r.checks.find((c) => c.name === name)!;
  t.is(item(report, 'link').status, 'pass');
  t.regex(item(report, 'link').detail, /^eth0: operstate up, carrier on/);
  t.is(item(report, 'address').status, 'pass');
  t.not(item(report, 'memory').status, 'fail');
  t.not(item(report, 'disk').status, 'fail');
  // Pull the cable: the switch port (the bridge side of the veth) goes down.
  await linkDown(topo, 'node2');
  try {
    const down = await run();
    t.is(down.exitCode, 1, down.stdout + down.stderr);
    const d = JSON.parse(down.stdout) as typeof report;
    t.is(item(d, 'link').status, 'fail');
    t.regex(item(d, 'link').detail, /carrier off.*no link/);
  } finally {
    await linkUp(topo, 'node2');
  }
});
