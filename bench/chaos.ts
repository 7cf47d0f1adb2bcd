// npm run bench:chaos -- --minutes M --seed S [--json FILE] [--chart FILE] [--sabotage]
// A randomized fault campaign on the namespace harness: real PostgreSQL, the real agent bundle
// and witness, the configuration `geminik8s init` writes. Faults are drawn from the seed
// (bench/chaos-core.ts); each heals, and the pair recovers, before the next is drawn. An
// independent checker records acknowledged writes, which nodes accept writes (every 200 ms),
// who answers ARP for the VIP (from the client namespace) and every promotion. Needs root.
// Prints figures; asserts nothing. Exit 1 when a write was lost, two nodes were writable or two
// hosts answered for the VIP, so that a campaign can gate a change. --sabotage makes the first
// draw break the promise on purpose (a second VIP holder, a deleted acknowledged row): the
// report must count both, or the checker is blind.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '#agent/sim/world.ts';
import { runPlan } from '#common/exec.ts';
import { arpReplies } from '#builder/ops/preflight.ts';
import { dualWritable, HarnessCluster } from '#test/harness/cluster.ts';
import { cutOneWay, flushRules, inNs, linkDown, linkUp, NET, nsOf } from '#lab/netns.ts';
import { impair, netemMissing, nicOf, packetLoss, type Impaired } from './netem.ts';
import { drawFaults, drawType, failsLeader, faultLabel, renderTimeline, secondsWithout, SINGLE_KINDS, summarize, summaryTable, type DrawRecord, type Fault, type FaultKind, type Member } from './chaos-core.ts';
import { arg } from './args.ts';


const minutes = Number(arg('--minutes', '10'));
const seed = Number(arg('--seed', '1'));
const jsonFile = arg('--json', '');
const chartFile = arg('--chart', '');
const sabotageFirst = process.argv.includes('--sabotage');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

if (process.getuid?.() !== 0) {
  console.error('bench:chaos needs root (network namespaces, iptables, tmpfs)');
  process.exit(2);
}
if (!Number.isFinite(minutes) || minutes <= 0 || !Number.isInteger(seed)) {
  console.error('usage: npm run bench:chaos -- --minutes M --seed S [--json FILE] [--chart FILE] [--sabotage]');
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'gk-chaos-'));
const c = new HarnessCluster(dir);
// Each node's files on a 1 GiB tmpfs of its own: the disk-full fault fills the standby's.
const mounts: string[] = [];
for (const n of NET.nodes) {
  const d = c.nodeDir(n.name);
  mkdirSync(d, { recursive: true });
  await runPlan({ cmd: 'mount', args: ['-t', 'tmpfs', '-o', 'size=1g,mode=0755', 'tmpfs', d] });
  mounts.push(d);
}

// Without sch_netem the delay draws go through the user-space emulator (bench/netem.ts).
const netem = await netemMissing();
const impaired: Impaired[] = [];
const kinds: FaultKind[] = SINGLE_KINDS;

// The checker's ARP view of the VIP from the client namespace: every reply within 2 s, so that
// a second holder answering the same request is seen.
interface ArpProbe { t: number; end: number; macs: string[] }
const arp: ArpProbe[] = [];
let stopping = false;
async function watchArp(): Promise<void> {
  while (!stopping) {
    const t = Date.now();
    const r = await runPlan(inNs(c.topology.clientNs, 'arping', ['-c', '10', '-w', '2', '-I', 'eth0', NET.vip]), { allowFailure: true, timeoutMs: 10_000 }).catch(() => undefined);
    if (r) arp.push({ t, end: Date.now(), macs: [...new Set(arpReplies(r.stdout))] });
    await sleep(200);
  }
}

const stopped = new Set<number>();
const name = (m: Member, leader: string): string => (m === 'leader' ? leader : m === 'follower' ? c.other(leader) : m);

/** Inject one fault; returns its heal. */
async function inject(f: Fault, leader: string): Promise<() => Promise<void>> {
  switch (f.kind) {
    case 'power-loss': {
      const node = name(f.node, leader);
      await c.powerOff(node);
      return () => c.powerOn(node);
    }
    case 'agent-freeze': {
      const pid = c.agents.get(name(f.node, leader))?.pid;
      if (!pid) return async () => undefined;
      process.kill(pid, 'SIGSTOP');
      stopped.add(pid);
      return async () => {
        try {
          process.kill(pid, 'SIGCONT');
        } catch {
          // gone
        }
        stopped.delete(pid);
      };
    }
    case 'postgres-crash': {
      const pid = c.postmasterPid(name(f.node, leader));
      if (pid) process.kill(pid, 'SIGKILL');
      return async () => undefined;
    }
    case 'one-way-cut': {
      const [from, to] = [name(f.from, leader), name(f.to, leader)];
      await cutOneWay(c.topology, from, to, true);
      return () => cutOneWay(c.topology, from, to, false);
    }
    case 'two-way-cut': {
      const [a, b] = [name(f.a, leader), name(f.b, leader)];
      await cutOneWay(c.topology, a, b, true);
      await cutOneWay(c.topology, b, a, true);
      return async () => {
        await cutOneWay(c.topology, a, b, false);
        await cutOneWay(c.topology, b, a, false);
      };
    }
    case 'witness-restart': {
      await c.killWitness();
      return async () => {
        if (!c.witnessRunning()) c.startWitness();
      };
    }
    case 'link-flap': {
      const m = name(f.member, leader);
      // The witness is the bridge's own host: its "cable" is every packet it receives.
      const down = (): Promise<unknown> => (m === 'witness' ? runPlan(inNs(c.topology.witnessNs, 'iptables', ['-I', 'INPUT', '-j', 'DROP'])) : linkDown(c.topology, m));
      const up = (): Promise<unknown> => (m === 'witness' ? runPlan(inNs(c.topology.witnessNs, 'iptables', ['-D', 'INPUT', '-j', 'DROP']), { allowFailure: true }) : linkUp(c.topology, m));
      for (let i = 0; i < f.flaps; i++) {
        await down();
        await sleep(f.periodMs / 2);
        await up();
        await sleep(f.periodMs / 2);
      }
      return async () => undefined;
    }
    case 'packet-loss': {
      const m = name(f.member, leader);
      await packetLoss(c.topology, m, f.percent, true);
      return () => packetLoss(c.topology, m, f.percent, false);
    }
    case 'delay': {
      const e = await impair(c.topology, name(f.member, leader), { delayMs: f.delayMs, jitterMs: f.jitterMs, lossPercent: f.lossPercent }, netem, 30 + impaired.length, seed * 1000 + impaired.length);
      impaired.push(e);
      return async () => {
        impaired.splice(impaired.indexOf(e), 1);
        await e.stop();
      };
    }
    case 'standby-disk-full': {
      const fill = join(c.nodeDir(c.other(leader)), 'chaos-fill');
      await runPlan({ cmd: 'dd', args: ['if=/dev/zero', `of=${fill}`, 'bs=1M'] }, { allowFailure: true, timeoutMs: 60_000 });
      return async () => rmSync(fill, { force: true });
    }
  }
}

/**
 * The checker's own test: the VIP answered by the follower too, and one acknowledged write
 * deleted on the leader. A campaign with --sabotage must report both.
 */
async function sabotageOnce(leader: string): Promise<() => Promise<void>> {
  const follower = c.other(leader);
  await runPlan(inNs(c.topology.nodeNs[follower]!, 'ip', ['addr', 'add', `${NET.vip}/${NET.prefix}`, 'dev', 'eth0']));
  const id = c.acks[c.acks.length - 10]!.id;
  await c.sql(leader, `DELETE FROM harness_writes WHERE id = ${id}`);
  return async () => {
    await runPlan(inNs(c.topology.nodeNs[follower]!, 'ip', ['addr', 'del', `${NET.vip}/${NET.prefix}`, 'dev', 'eth0']), { allowFailure: true });
  };
}

/** Put the harness back whatever a draw left: cuts, loss rules, qdiscs, frozen or dead processes, fill files. */
async function cleanup(): Promise<void> {
  for (const e of impaired.splice(0)) await e.stop().catch(() => undefined);
  for (const pid of [...stopped]) {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // gone
    }
    stopped.delete(pid);
  }
  for (const m of [...NET.nodes.map((n) => n.name), 'witness', 'client']) {
    await flushRules(c.topology, m);
    await runPlan(inNs(nsOf(c.topology, m), 'tc', ['qdisc', 'del', 'dev', nicOf(m), 'root']), { allowFailure: true });
  }
  for (const n of NET.nodes) {
    rmSync(join(c.nodeDir(n.name), 'chaos-fill'), { force: true });
    await linkUp(c.topology, n.name);
    if (!c.agents.has(n.name)) c.startAgent(n.name);
  }
  await linkUp(c.topology, 'client');
  if (!c.witnessRunning()) c.startWitness();
}

const records: DrawRecord[] = [];
let aborted: string | undefined;
const lostSoFar = new Set<number>();
let t0 = 0;

try {
  console.log(`bench:chaos: seed ${seed}, ${minutes} min, harness in ${dir}; fault kinds: ${kinds.join(', ')}${netem ? `; delay through the user-space emulator (${netem})` : ''}`);
  await c.start();
  await c.waitFor('leader + synchronous standby', () => c.healthyPair(), 180_000);
  c.startTraffic(minutes * 60 + 1200);
  await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
  t0 = Date.now();
  const arpLoop = watchArp();
  const rng = new Rng(seed);
  const deadline = t0 + minutes * 60_000;
  while (Date.now() < deadline) {
    const leaderBefore = await c.waitFor('a healthy pair before the draw', () => c.healthyPair(), 240_000).catch(() => undefined);
    if (!leaderBefore) {
      aborted = 'the pair was not healthy before a draw';
      break;
    }
    const draw = drawFaults(rng, kinds);
    // --sabotage: the first draw breaks the promise on purpose, to show the checker sees it.
    const sabotage = sabotageFirst && records.length === 0;
    const labels = sabotage ? ['SABOTAGE: the VIP also on the follower, one acknowledged row deleted'] : draw.faults.map(faultLabel);
    const tStart = Date.now();
    c.log(`=== chaos draw ${records.length + 1}: ${labels.join(' + ')} (leader ${leaderBefore})`);
    const heals: (() => Promise<void>)[] = [];
    try {
      if (sabotage) heals.push(await sabotageOnce(leaderBefore));
      else for (const f of draw.faults) heals.push(await inject(f, leaderBefore));
      await sleep(sabotage ? 5000 : Math.max(...draw.faults.map((f) => f.holdMs)));
    } catch (err) {
      c.log(`[chaos] injecting failed: ${(err as Error).message}`);
    }
    for (const h of heals.reverse()) await h().catch((err: Error) => c.log(`[chaos] heal failed: ${err.message}`));
    const tHealed = Date.now();
    let leaderAfter = await c.waitFor('recovery: leader + synchronous standby', () => c.healthyPair(), 180_000).catch(() => undefined);
    let recovered = leaderAfter !== undefined;
    if (!leaderAfter) {
      c.log('[chaos] no recovery within 180 s: cleaning up the harness');
      await cleanup();
      leaderAfter = await c.waitFor('recovery after cleanup', () => c.healthyPair(), 240_000).catch(() => undefined);
    }
    const target = c.acks.length + 5;
    await c.waitFor('writes after recovery', async () => (c.acks.length >= target ? true : undefined), 30_000).catch(() => {
      recovered = false;
    });
    const tEnd = Date.now();
    const missing = leaderAfter ? await c.missingAcks(leaderAfter).catch(() => [] as number[]) : [];
    const lost = missing.filter((id) => !lostSoFar.has(id));
    for (const id of lost) lostSoFar.add(id);
    const promotions = NET.nodes.flatMap((n) => c.eventsOf(n.name, tStart, (e) => e.event === 'promoted')).filter((e) => e.at <= tEnd).length;
    const leaderFault = !sabotage && draw.faults.some(failsLeader);
    const rec: DrawRecord = {
      type: sabotage ? 'sabotage' : drawType(draw), labels, leaderFault, start: tStart - t0, healed: tHealed - t0, end: tEnd - t0,
      leaderBefore, leaderAfter: leaderAfter ?? 'none', recovered,
      acknowledged: c.acks.filter((a) => a.t >= tStart && a.t <= tEnd).length,
      lost,
      dualWritableSamples: dualWritable(c.samples.filter((s) => s.t <= tEnd), tStart - 1000).samples,
      dualVipSamples: arp.filter((p) => p.t >= tStart && p.t <= tEnd && p.macs.length > 1).length,
      secondsWithoutWrites: secondsWithout(c.acks.map((a) => a.t), tStart, tEnd),
      promotions,
      falseFailover: promotions > 0 && !leaderFault,
    };
    records.push(rec);
    console.log(`${String(records.length).padStart(3)} +${Math.round(rec.start / 1000)}s ${labels.join(' + ')}: leader ${rec.leaderBefore} -> ${rec.leaderAfter}, acked ${rec.acknowledged}, lost ${rec.lost.length}, dual-writable ${rec.dualWritableSamples}, dual-VIP ${rec.dualVipSamples}, ${rec.secondsWithoutWrites} s without writes, promotions ${rec.promotions}${rec.falseFailover ? ' FALSE FAILOVER' : ''}${recovered ? '' : ' NOT RECOVERED'}`);
    if (!leaderAfter) {
      aborted = `no recovery after ${labels.join(' + ')}, even after cleaning up`;
      break;
    }
  }
  stopping = true;
  await arpLoop;
} finally {
  stopping = true;
  await c.stop().catch(() => undefined);
  for (const m of mounts) await runPlan({ cmd: 'umount', args: ['-l', m] }, { allowFailure: true });
}

const summary = summarize(records);
console.log(`\n${summaryTable(summary)}`);
const total = summary[summary.length - 1]!;
console.log(`\n${records.length} draws in ${minutes} min (seed ${seed}); ${total.acknowledged} writes acknowledged during faults, ${total.lost} lost, ${total.dualWritableSamples} dual-writable samples, ${total.dualVipSamples} dual-VIP probes, ${total.falseFailovers} false failovers${aborted ? `; ABORTED: ${aborted}` : ''}; harness log: ${c.logFile}`);
// The checker's own health: an instrument that saw nothing would report no fault either.
const checker = {
  arpProbes: arp.length,
  arpOneHolder: arp.filter((p) => p.macs.length === 1).length,
  arpNoHolder: arp.filter((p) => p.macs.length === 0).length,
  writableSamples: c.samples.filter((x) => x.t >= t0).length,
  acknowledged: c.acks.filter((a) => a.t >= t0).length,
};
console.log(`checker: ${checker.acknowledged} writes acknowledged in all; ${checker.writableSamples} writable-or-not samples; ${checker.arpProbes} ARP probes for the VIP (${checker.arpOneHolder} with one holder, ${checker.arpNoHolder} with none)`);
const settings = { syncPolicy: c.config?.postgresql.syncPolicy, failover: c.config?.failover };
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ seed, minutes, kinds, delayVia: netem ? 'user-space emulator' : 'tc netem', settings, checker, aborted: aborted ?? null, summary, draws: records }, null, 2)}\n`);
if (chartFile) writeFileSync(chartFile, renderTimeline(c.acks.map((a) => a.t - t0).filter((t) => t >= 0), records, `bench:chaos seed ${seed}: acknowledged writes per second through the VIP, ${records.length} fault draws`));
process.exitCode = total.lost > 0 || total.dualWritableSamples > 0 || total.dualVipSamples > 0 || aborted ? 1 : 0;
