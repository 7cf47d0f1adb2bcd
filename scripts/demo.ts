// `npm run demo [-- --image RAW] [--json FILE] [--keep]`: the whole system on one machine. Two QEMU guests
// (TCG) from the test image (built into ~/.cache/geminik8s/e2e, or a test image's .raw given
// with --image) and a witness on a private bridge; `geminik8s status`; a writer
// through the VIP; the leader powered off; the failover and the old leader's rejoin with
// their times; the count of acknowledged and lost writes. Everything it made is removed at
// the end unless --keep. Needs root (network namespaces, tap devices), as the README's set-up.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { buildAgent } from '../agent/build.ts';
import { runPlan, type RunningProcess } from '#common/exec.ts';
import { bootVm, GuestShell, READY_MARKER, type Vm } from '#qemu/index.ts';
import { bundleProbe } from '#lab/probes/bundle.ts';
import { inNs } from '#lab/netns.ts';
import { cli } from '#lab/cli.ts';
import { initGuestCluster, until } from '#lab/guest-cluster.ts';
import { agentJournalAt, arpOwners, createGuestLan, destroyGuestLan, guestSql, guestUptime, startLanWitness, startVipWriter, type GuestLan } from '#lab/guest-lan.ts';
import { testImage } from '#lab/test-image.ts';

const NET = { node1: '192.168.78.11', node2: '192.168.78.12', vip: '192.168.78.50', host: '192.168.78.1', prefix: 24 };
const MAC = { node1: '52:54:00:78:01:11', node2: '52:54:00:78:01:12' };
const WITNESS = `${NET.host}:7444`;
const LAN_NS = 'gk-demo-lan';
const BOOT_TIMEOUT = 15 * 60_000;

/** What the demo measured; `--json FILE` writes it. */
export interface DemoReport {
  image: string;
  pairReadyS: number;
  failover: { promotedGuestS: number; writesResumedS: number; newLeader: string; vipOwners: string[] };
  rejoin: { method: string; syncWallS: number; syncGuestUptimeS: number; healthyWallS: number };
  writes: { acknowledged: number; lost: number; errorsWhileMoving: number };
  status: string[];
  wallS: number;
}

const { values: args } = parseArgs({ options: { image: { type: 'string' }, json: { type: 'string' }, keep: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
if (args.help) {
  process.stdout.write('usage: npm run demo [-- --image RAW] [--json FILE] [--keep]\n  builds (or reuses) the test image, boots a pair and a witness in QEMU, powers off the leader, shows the failover and the rejoin\n');
  process.exit(0);
}
if (process.getuid?.() !== 0) {
  process.stderr.write('demo: needs root (network namespaces and tap devices for the guests\' LAN); run it as the README\'s set-up does\n');
  process.exit(2);
}

const started = Date.now();
const say = (msg: string): void => void process.stdout.write(`[demo +${((Date.now() - started) / 1000).toFixed(0)}s] ${msg}\n`);
const work = mkdtempSync(join(tmpdir(), 'gk-demo-'));
const vms: Vm[] = [];
const shells: GuestShell[] = [];
const procs: RunningProcess[] = [];
let lan: GuestLan | undefined;

async function cleanup(): Promise<void> {
  for (const s of shells.splice(0)) s.close();
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

const sql = guestSql;
const uptime = guestUptime;

/** The operator's view, from the host side of the LAN: both agents and the witness (`geminik8s status`). */
async function statusOf(clusterDir: string): Promise<{ text: string; code: number }> {
  const r = await runPlan(inNs(LAN_NS, process.execPath, [join(process.cwd(), 'bin/geminik8s.js'), 'status', '--cluster', join(clusterDir, 'cluster.yaml')]), { allowFailure: true, timeoutMs: 120_000 });
  return { text: `${r.stdout}${r.stderr}`.trimEnd(), code: r.exitCode };
}

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

async function boot(node: 'node1' | 'node2', disk: string): Promise<{ vm: Vm; shell: GuestShell }> {
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk, format: 'raw', write: true, console: true, name: `demo-${node}`, serialLog: join(work, `${node}-${vms.length}.log`), netns: LAN_NS, networks: [{ kind: 'tap', ifname: lan!.taps[node]!, mac: MAC[node] }] });
  vms.push(vm);
  await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  const shell = await GuestShell.open(vm.consoleSocket!, BOOT_TIMEOUT);
  shells.push(shell);
  return { vm, shell };
}

async function demo(): Promise<DemoReport> {
  say('the test image (Kubernetes layer off: K3s, Kine and kube-vip cannot be downloaded here; docs/components.md)');
  const raw = args.image ? resolve(args.image) : (await testImage('test-amd64.yaml', say)).raw;
  say(`a cluster from geminik8s init with a lease witness at ${WITNESS}, and each node's seed on its own copy of the disk`);
  const clusterDir = await initGuestCluster('demo', NET, MAC, WITNESS, join(work, 'site'));
  const disks: Record<'node1' | 'node2', string> = { node1: join(work, 'node1.raw'), node2: join(work, 'node2.raw') };
  for (const node of ['node1', 'node2'] as const) {
    const r = await cli('seed', '--cluster', join(clusterDir, 'cluster.yaml'), '--node', node, '--into', raw, '--out', disks[node]);
    if (r.code !== 0) throw new Error(`seed --into for ${node} failed: ${r.stderr}`);
  }
  say(`a private bridge in network namespace ${LAN_NS}; the witness on its host side`);
  lan = await createGuestLan(LAN_NS, { ip: NET.host, prefix: NET.prefix }, ['node1', 'node2']);
  const witness = await startLanWitness(lan, clusterDir, WITNESS, join(work, 'witness-state'), await buildAgent(join(work, 'agent.mjs')));
  procs.push(witness.proc);
  await bundleProbe('writer', join(work, 'writer.mjs'));

  say('booting node1 and node2 (TCG: several minutes)');
  const pairAt = Date.now();
  const [n1, n2] = await Promise.all([boot('node1', disks.node1), boot('node2', disks.node2)]);
  await until('node2 to stream synchronously', 10 * 60_000, async () => (/streaming sync/.test(await sql(n1.shell, "select state || ' ' || sync_state from pg_stat_replication")) ? true : undefined));
  const statuses = [await untilHealthy(clusterDir)];
  const pairReadyS = (Date.now() - pairAt) / 1000;
  say(`pair healthy in ${pairReadyS.toFixed(0)} s: node1 leads, node2 is its synchronous standby, and the witness records node2 as the one it may promote`);

  say(`a writer through the VIP ${NET.vip}, as Kine writes`);
  const writer = await startVipWriter(lan, clusterDir, NET.vip, join(work, 'writer.mjs'));
  procs.push(writer.proc);
  await until('20 acknowledged writes', 5 * 60_000, async () => (writer.acks.length >= 20 ? true : undefined));

  const before = await uptime(n2.shell);
  const cutAt = Date.now();
  say(`powering off node1 (QMP quit) after ${writer.acks.length} acknowledged writes`);
  await n1.vm.qmp('quit').catch(() => undefined);
  await n1.vm.stop();
  await until('node2 to promote', 10 * 60_000, async () => ((await sql(n2.shell, 'select pg_is_in_recovery()')) === 'f' ? true : undefined));
  // PostgreSQL leaves recovery a moment before the agent logs the promotion: wait for the line.
  const promotedAt = await until('the agent to log its promotion', 2 * 60_000, () => agentJournalAt(n2.shell, 'promoted: generation'));
  await until('the writer to resume', 5 * 60_000, async () => (writer.acks.some((a) => a.t > cutAt) ? true : undefined));
  const resumed = writer.acks.find((a) => a.t > cutAt)!;
  const vipOwners = await arpOwners(lan, NET.vip);
  const failover = { promotedGuestS: promotedAt - before, writesResumedS: (resumed.t - cutAt) / 1000, newLeader: 'node2', vipOwners };
  say(`node2 promoted ${failover.promotedGuestS.toFixed(1)} s of guest time after the power-off; writes resumed after ${failover.writesResumedS.toFixed(1)} s; the VIP answers with ${vipOwners.join(', ') || 'nobody'}`);
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
  const n1b = await boot('node1', disks.node1);
  await until('node1 to stream synchronously from node2', 10 * 60_000, async () => (/^node1 streaming sync$/m.test(await sql(n2.shell, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication")) ? true : undefined));
  const method = /rejoined through ([a-z_]+)/.exec((await n1b.shell.run("journalctl -b -u geminik8s-agent --no-pager -o cat | grep -m1 'rejoined through'")).output)?.[1] ?? 'unknown';
  const rejoin = { method, syncWallS: (Date.now() - rejoinAt) / 1000, syncGuestUptimeS: await uptime(n1b.shell), healthyWallS: 0 };
  say(`node1 rejoined through ${method} and streams synchronously ${rejoin.syncWallS.toFixed(0)} s after its power-on (guest uptime ${rejoin.syncGuestUptimeS.toFixed(0)} s)`);
  statuses.push(await untilHealthy(clusterDir));
  rejoin.healthyWallS = (Date.now() - rejoinAt) / 1000;
  say(`the pair is healthy again ${rejoin.healthyWallS.toFixed(0)} s after node1's power-on: node2 leads, and the witness records node1 as the one it may promote`);

  writer.proc.kill('SIGTERM');
  await writer.proc.exited;
  const last = writer.acks.at(-1)?.id ?? 0;
  // The writer takes the next id only after an acknowledgement: 1..last were all acknowledged.
  const kept = Number(await sql(n2.shell, `select count(*) from harness_writes where id <= ${last}`, 'kine'));
  const writes = { acknowledged: last, lost: last - kept, errorsWhileMoving: writer.errors.length };
  say(`writes: ${writes.acknowledged} acknowledged, ${writes.lost} lost`);
  return { image: raw, pairReadyS, failover, rejoin, writes, status: statuses, wallS: (Date.now() - started) / 1000 };
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
