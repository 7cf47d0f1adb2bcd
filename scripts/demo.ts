// `npm run demo [-- --image RAW | --artifacts DIR] [--json FILE] [--keep]`: the whole system on one
// machine. Two QEMU guests (TCG) and a witness on a private bridge; `geminik8s status`; a writer
// through the VIP; the leader powered off; the failover and the old leader's rejoin with their
// times; the count of acknowledged and lost writes. The image: the full edge image when its
// upstream release files are given (--artifacts) or reachable, else the test image (no
// Kubernetes layer); built into ~/.cache/geminik8s/e2e, or a built .raw given with --image.
// Everything it observes comes through what an operator has: `geminik8s status`, the writer's
// own connection through the VIP, ARP on the LAN. Everything it made is removed at the end
// unless --keep. Needs root (network namespaces, tap devices), as the README's set-up.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { buildAgent } from '../agent/build.ts';
import type { ClusterStatus, NodeView } from '#builder/ops/status.ts';
import { loadImage } from '#common/config.ts';
import { runPlan, type RunningProcess } from '#common/exec.ts';
import { bootVm, READY_MARKER, type Vm } from '#qemu/index.ts';
import { cli } from '#lab/cli.ts';
import { chooseDemoImage, probeUpstream } from '#lab/demo-image.ts';
import { initGuestCluster, until } from '#lab/guest-cluster.ts';
import { arpOwners, createGuestLan, destroyGuestLan, outageEnd, startLanWitness, startVipWriter, type GuestLan } from '#lab/guest-lan.ts';
import { inNs } from '#lab/netns.ts';
import { bundleProbe } from '#lab/probes/bundle.ts';
import { testImage } from '#lab/test-image.ts';

const NET = { node1: '192.168.78.11', node2: '192.168.78.12', vip: '192.168.78.50', host: '192.168.78.1', prefix: 24 };
const MAC = { node1: '52:54:00:78:01:11', node2: '52:54:00:78:01:12' };
const WITNESS = `${NET.host}:7444`;
const LAN_NS = 'gk-demo-lan';
const BOOT_TIMEOUT = 15 * 60_000;
const ROOT = new URL('../', import.meta.url).pathname;

/** What the demo measured; `--json FILE` writes it. */
export interface DemoReport {
  image: string;
  /** Why this image: given, built from --artifacts, upstream reachable, or the test image. */
  imageWhy: string;
  pairReadyS: number;
  /**
   * promotedS: from the power-off (host clock) to the promotion as node2's agent recorded it (its
   * last transition; the guest's clock, set from the host's at boot). writesResumedS: to the
   * acknowledged write that ends the writer's longest gap after the power-off (the outage).
   */
  failover: { promotedS: number; writesResumedS: number; newLeader: string; vipOwners: string[] };
  /** From node1's power-on: to a synchronous standby of node2 (syncWallS), and to the pair HEALTHY again (healthyWallS). */
  rejoin: { method: string; syncWallS: number; healthyWallS: number };
  /** lost: acknowledged ids the writer could not find through the VIP once everything had moved. */
  writes: { acknowledged: number; lost: number; errorsWhileMoving: number };
  status: string[];
  wallS: number;
}

const { values: args } = parseArgs({ options: { image: { type: 'string' }, artifacts: { type: 'string' }, json: { type: 'string' }, keep: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
if (args.help) {
  process.stdout.write('usage: npm run demo [-- --image RAW | --artifacts DIR] [--json FILE] [--keep]\n  builds (or reuses) the image, boots a pair and a witness in QEMU, powers off the leader, shows the failover and the rejoin\n  --artifacts DIR: the K3s, Kine and kube-vip release files (as `geminik8s build --artifacts` takes them): the full edge image\n');
  process.exit(0);
}
if (args.image && args.artifacts) {
  process.stderr.write('demo: give --image or --artifacts, not both\n');
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  process.stderr.write('demo: needs root (network namespaces and tap devices for the guests\' LAN); run it as the README\'s set-up does\n');
  process.exit(2);
}

const started = Date.now();
const say = (msg: string): void => void process.stdout.write(`[demo +${((Date.now() - started) / 1000).toFixed(0)}s] ${msg}\n`);
const work = mkdtempSync(join(tmpdir(), 'gk-demo-'));
const vms: Vm[] = [];
const procs: RunningProcess[] = [];
let lan: GuestLan | undefined;

async function cleanup(): Promise<void> {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const vm of vms.splice(0)) await vm.stop();
  if (lan) await destroyGuestLan(lan);
  if (!args.keep) rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    say(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** `geminik8s status` from the host side of the LAN, as an operator runs it: both agents and the witness. */
async function statusOf(clusterDir: string, json = false): Promise<{ text: string; code: number }> {
  const r = await runPlan(inNs(LAN_NS, process.execPath, [join(ROOT, 'bin/geminik8s.js'), 'status', '--cluster', join(clusterDir, 'cluster.yaml'), ...(json ? ['--output', 'json'] : [])]), { allowFailure: true, timeoutMs: 120_000 });
  return { text: json ? r.stdout : `${r.stdout}${r.stderr}`.trimEnd(), code: r.exitCode };
}

/** The same, parsed (`--output json`); undefined when it printed none. */
async function statusJson(clusterDir: string): Promise<ClusterStatus | undefined> {
  try {
    return JSON.parse((await statusOf(clusterDir, true)).text) as ClusterStatus;
  } catch {
    return undefined;
  }
}

const node = (s: ClusterStatus | undefined, name: string): NodeView | undefined => s?.nodes.find((n) => n.name === name);

function show(s: { text: string; code: number }): string {
  process.stdout.write(`${s.text}\n(geminik8s status exit ${s.code})\n`);
  return s.text;
}

/**
 * Until `geminik8s status` says HEALTHY (exit 0): streaming `sync` is not yet that, the leader
 * records its standby as promotable at the witness after two synchronous rounds, and only then
 * would a second failure fail over by itself.
 */
async function untilHealthy(clusterDir: string): Promise<string> {
  const s = await until('geminik8s status to say HEALTHY', 5 * 60_000, async () => {
    const r = await statusOf(clusterDir);
    return r.code === 0 ? r : undefined;
  });
  return show(s);
}

async function boot(name: 'node1' | 'node2', disk: string, memoryMiB: number): Promise<Vm> {
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk, format: 'raw', write: true, name: `demo-${name}`, memoryMiB, serialLog: join(work, `${name}-${vms.length}.log`), netns: LAN_NS, networks: [{ kind: 'tap', ifname: lan!.taps[name]!, mac: MAC[name] }] });
  vms.push(vm);
  await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  return vm;
}

async function demo(): Promise<DemoReport> {
  const upstream = args.image || args.artifacts ? undefined : await probeUpstream(await loadImage(join(ROOT, 'images/edge-amd64.yaml')));
  const choice = chooseDemoImage({ image: args.image, artifacts: args.artifacts ? resolve(args.artifacts) : undefined, upstream });
  say(`image: ${choice.why}`);
  const raw = choice.kind === 'given' ? resolve(choice.raw) : (await testImage(choice.file, say, { artifactsDir: choice.artifactsDir })).raw;
  // K3s with its API server and Kine beside PostgreSQL needs more than the test image's 2 GiB.
  const memoryMiB = choice.kind === 'build' && choice.file === 'edge-amd64.yaml' ? 4096 : 2048;
  say(`a cluster from geminik8s init with a lease witness at ${WITNESS}, and each node's seed on its own copy of the disk`);
  const clusterDir = await initGuestCluster('demo', NET, MAC, WITNESS, join(work, 'site'));
  const disks: Record<'node1' | 'node2', string> = { node1: join(work, 'node1.raw'), node2: join(work, 'node2.raw') };
  for (const n of ['node1', 'node2'] as const) {
    const r = await cli('seed', '--cluster', join(clusterDir, 'cluster.yaml'), '--node', n, '--into', raw, '--out', disks[n]);
    if (r.code !== 0) throw new Error(`seed --into for ${n} failed: ${r.stderr}`);
  }
  say(`a private bridge in network namespace ${LAN_NS}; the witness on its host side`);
  lan = await createGuestLan(LAN_NS, { ip: NET.host, prefix: NET.prefix }, ['node1', 'node2']);
  const witness = await startLanWitness(lan, clusterDir, WITNESS, join(work, 'witness-state'), await buildAgent(join(work, 'agent.mjs')));
  procs.push(witness.proc);
  await bundleProbe('writer', join(work, 'writer.mjs'));

  say('booting node1 and node2 (TCG: several minutes)');
  const pairAt = Date.now();
  const [n1] = await Promise.all([boot('node1', disks.node1, memoryMiB), boot('node2', disks.node2, memoryMiB)]);
  const statuses = [await untilHealthy(clusterDir)];
  const pairReadyS = (Date.now() - pairAt) / 1000;
  say(`pair healthy in ${pairReadyS.toFixed(0)} s: node1 leads, node2 is its synchronous standby, and the witness records node2 as the one it may promote`);

  say(`a writer through the VIP ${NET.vip}, as Kine writes`);
  const writer = await startVipWriter(lan, clusterDir, NET.vip, join(work, 'writer.mjs'), { verify: true });
  procs.push(writer.proc);
  await until('20 acknowledged writes', 5 * 60_000, async () => (writer.acks.length >= 20 ? true : undefined));

  const cutAt = Date.now();
  say(`powering off node1 (QMP quit) after ${writer.acks.length} acknowledged writes`);
  await n1!.qmp('quit').catch(() => undefined);
  await n1!.stop();
  // node2's own account: leader, a writable primary, and when its agent made the transition.
  const promoted = await until('node2 to promote (geminik8s status)', 10 * 60_000, async () => {
    const v = node(await statusJson(clusterDir), 'node2');
    return v?.role === 'leader' && v.pg?.role === 'primary' && v.pg.readOnly === false && v.lastTransition?.to === 'leader' ? v.lastTransition : undefined;
  }, 1000);
  await until('the writer to resume', 5 * 60_000, async () => (writer.acks.some((a) => a.t > cutAt) ? true : undefined), 500);
  const resumed = outageEnd(writer.acks, cutAt)!;
  const vipOwners = await arpOwners(lan, NET.vip);
  const failover = { promotedS: (Date.parse(promoted.at) - cutAt) / 1000, writesResumedS: (resumed.t - cutAt) / 1000, newLeader: 'node2', vipOwners };
  say(`node2 promoted ${failover.promotedS.toFixed(1)} s after the power-off (${promoted.reason}); writes resumed after ${failover.writesResumedS.toFixed(1)} s; the VIP answers with ${vipOwners.join(', ') || 'nobody'}`);
  // Each agent reports what its last round saw: wait for the view to settle rather than trust
  // one look taken while the VIP and the peer's state are still moving.
  const settleAt = Date.now();
  const settled = await until('geminik8s status to show node2 leading alone (DEGRADED)', 3 * 60_000, async () => {
    const r = await statusOf(clusterDir);
    if (/cluster demo: DEGRADED \(leader node2\)/.test(r.text)) return r;
    say(`geminik8s status (exit ${r.code}) says ${r.text.split('\n').filter((l) => /^cluster demo:|^\s+- /.test(l)).join(' ').replace(/\s+/g, ' ')}`);
    return undefined;
  });
  statuses.push(show(settled));
  say(`geminik8s status shows node2 leading alone ${((Date.now() - settleAt) / 1000).toFixed(0)} s after the writes resumed`);

  say('booting node1 again from its own disk');
  const rejoinAt = Date.now();
  await boot('node1', disks.node1, memoryMiB);
  const back = await until('node1 to be node2\'s synchronous standby (geminik8s status)', 10 * 60_000, async () => {
    const s = await statusJson(clusterDir);
    const v1 = node(s, 'node1');
    return node(s, 'node2')?.pg?.syncState === 'sync' && v1?.role === 'follower' ? v1 : undefined;
  }, 1000);
  const method = /rejoined through ([a-z_]+)/.exec(back.lastTransition?.reason ?? '')?.[1] ?? 'unknown';
  const rejoin = { method, syncWallS: (Date.now() - rejoinAt) / 1000, healthyWallS: 0 };
  say(`node1 rejoined through ${method} and is node2's synchronous standby ${rejoin.syncWallS.toFixed(0)} s after its power-on`);
  statuses.push(await untilHealthy(clusterDir));
  rejoin.healthyWallS = (Date.now() - rejoinAt) / 1000;
  say(`the pair is healthy again ${rejoin.healthyWallS.toFixed(0)} s after node1's power-on: node2 leads, and the witness records node1 as the one it may promote`);

  const { last, kept } = await writer.stopAndVerify();
  const writes = { acknowledged: last, lost: last - kept, errorsWhileMoving: writer.errors.length };
  say(`writes: ${writes.acknowledged} acknowledged, ${writes.lost} lost (counted through the VIP)`);
  return { image: raw, imageWhy: choice.why, pairReadyS, failover, rejoin, writes, status: statuses, wallS: (Date.now() - started) / 1000 };
}

let code = 0;
try {
  const report = await demo();
  report.wallS = (Date.now() - started) / 1000;
  say(`done in ${report.wallS.toFixed(0)} s`);
  if (args.json) writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
  if (report.writes.lost > 0) code = 1;
} catch (err) {
  process.stderr.write(`demo failed: ${(err as Error).message}\n${args.keep ? `serial logs kept in ${work}\n` : ''}`);
  code = 1;
} finally {
  say(args.keep ? `cleaning up (files kept in ${work})` : 'cleaning up');
  await cleanup();
}
process.exit(code);
