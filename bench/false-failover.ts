// npm run bench:false-failover -- [--minutes M] [--loss PCT] [--seed S] [--json FILE]
//   [--systems geminik8s,patroni:defaults,patroni:tuned,pg_auto_failover:defaults,pg_auto_failover:tuned]
// The price of speed: each system in turn, at each of its profiles, on the namespace harness
// with no real fault, only a bad network for M minutes (default 10): every member's outgoing
// packets delayed 200 ms ± 100 ms (uniform) and PCT % of them (default 5) lost. Through
// `tc netem` where the kernel has it; where it has not (these machines), through the user-space
// emulator of bench/netem.ts (NFQUEUE), whose own counters go into the JSON. Counts promotions
// (every one is false: nothing failed), write stalls over 1 s, seconds without writes and seconds
// without a synchronous standby (when the pair could not fail over without losing writes); once
// the network is healed and the pair healthy again, every acknowledged write is looked up on the
// leader (lost writes).
// Needs root. Prints figures; asserts nothing.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dualWritable, writerChanges, type PairHarness } from '#test/harness/cluster.ts';
import { secondsWithout, stalls } from './chaos-core.ts';
import { checkSystems, harnessFor, settingsOf } from './failover-figures.ts';
import { impair, netemMissing, type EmulatorCounters, type Impaired, type Impairment } from './netem.ts';
import { arg } from './args.ts';


const minutes = Number(arg('--minutes', '10'));
const loss = Number(arg('--loss', '5'));
const seed = Number(arg('--seed', '1'));
const jsonFile = arg('--json', '');
const systems = arg('--systems', 'geminik8s,patroni:defaults,patroni:tuned,pg_auto_failover:defaults,pg_auto_failover:tuned').split(',');
checkSystems('--systems', systems);
if (process.getuid?.() !== 0) {
  console.error('bench:false-failover needs root (network namespaces, iptables)');
  process.exit(2);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const MEMBERS = ['node1', 'node2', 'witness', 'client'];
// The issue's profile: 200 ms ± 100 ms and the loss on every link.
const impairment: Impairment = { delayMs: 200, jitterMs: 100, lossPercent: loss };
const netem = await netemMissing();
const via = netem ? 'user-space emulator (bench/netem-nfqueue.py through an iptables NFQUEUE rule on each member\'s egress)' : 'tc netem on each member\'s NIC';

interface Figures {
  system: string;
  minutes: number;
  lossPercent: number;
  promotions: number;
  leaderChanges: string[];
  dualWritableSamples: number;
  stallsOver1s: number;
  longestStallSeconds: number;
  secondsWithoutWrites: number;
  /**
   * Seconds in which no node was a primary with a streaming synchronous standby, as each node's
   * own server says over its loopback: the pair could not have failed over without losing writes.
   */
  secondsWithoutSyncStandby: number;
  acknowledged: number;
  /** Acknowledged writes missing from the leader once the pair was healthy again after the run; null when it never was within 5 minutes. */
  writesLost: number | null;
  /** That leader. */
  leaderAfter: string | null;
  /** When there was none: the leader the harness sees, and each node's recovery state and walsenders. */
  notHealthy?: Record<string, string | null>;
  settings: unknown;
  /** What the emulator did to each member's packets (absent under tc netem). */
  emulator?: Record<string, EmulatorCounters & { lostPercent: number; meanDelayMs: number }>;
}

/**
 * Whether some node is a primary with a streaming synchronous standby, by its own server (every
 * system names its standbys its own way; pg_auto_failover's `ANY 1 (…)` shows as `quorum`).
 */
async function syncStandbyAnywhere(c: PairHarness): Promise<boolean> {
  const q = "SELECT NOT pg_is_in_recovery() AND coalesce((SELECT bool_or(state = 'streaming' AND sync_state IN ('sync', 'quorum')) FROM pg_stat_replication), false)";
  for (const n of ['node1', 'node2']) if ((await c.sql(n, q, 'postgres')) === 't') return true;
  return false;
}

async function measure(system: string): Promise<Figures> {
  const dir = mkdtempSync(join(tmpdir(), `gk-ff-${system.replace(':', '-')}-`));
  const c = harnessFor(system, dir, 'gkf');
  const impaired: Impaired[] = [];
  try {
    await c.start();
    const leader = await c.waitFor(`${system}: leader + synchronous standby`, () => c.healthyPair(), 180_000);
    // The writer's own timeouts at 1 s and 2 s would never let it reconnect over 400 ms round trips.
    c.startTraffic(minutes * 60 + 600, { connectMs: 15_000, queryMs: 15_000 });
    await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
    for (const [i, m] of MEMBERS.entries()) impaired.push(await impair(c.topology, m, impairment, netem, 20 + i, seed * 10 + i));
    const t0 = Date.now();
    // Who accepts writes, as each node's sampler sees it over its own loopback: asking the
    // system (its API, its monitor) would cross the impaired network and miss changes.
    let seen = 0;
    let withoutSync = 0;
    let sampledAt = t0;
    while (Date.now() - t0 < minutes * 60_000) {
      await sleep(1000);
      const synchronous = await syncStandbyAnywhere(c);
      const now = Date.now();
      if (!synchronous) withoutSync += now - sampledAt;
      sampledAt = now;
      const changes = writerChanges(c.samples, t0, leader);
      for (const ch of changes.slice(seen)) console.log(`${system}: writes accepted by ${ch.to} instead of ${ch.from} at +${Math.round((ch.at - t0) / 1000)} s`);
      seen = changes.length;
    }
    const t1 = Date.now();
    const changes = writerChanges(c.samples, t0, leader).filter((ch) => ch.at <= t1).map((ch) => `+${Math.round((ch.at - t0) / 1000)}s ${ch.from} -> ${ch.to}`);
    const counted: NonNullable<Figures['emulator']> = {};
    for (const e of impaired.splice(0)) {
      const k = await e.stop();
      if (k) counted[e.member] = { ...k, lostPercent: k.packets ? Math.round((1000 * k.dropped) / k.packets) / 10 : 0, meanDelayMs: k.delayed ? Math.round(k.delaySumMs / k.delayed) : 0 };
    }
    const acks = c.acks.map((a) => a.t).filter((t) => t >= t0 && t <= t1);
    // The network healed: every write acknowledged so far must be on the leader of a healthy pair.
    const ackedSoFar = c.acks.length;
    const leaderAfter = await c.waitFor(`${system}: leader + synchronous standby after the network healed`, () => c.healthyPair(), 300_000).catch(() => undefined);
    const lost = leaderAfter ? await c.missingAcks(leaderAfter, ackedSoFar) : undefined;
    // Never healthy: what each node's server says, for the next look (the harness's own test of health may be what fails).
    const notHealthy: Record<string, string | null> | undefined = leaderAfter ? undefined : { leader: (await c.leader().catch(() => undefined)) ?? null };
    if (notHealthy) {
      for (const n of ['node1', 'node2']) notHealthy[n] = (await c.sql(n, "SELECT pg_is_in_recovery() || ' ' || coalesce((SELECT string_agg(application_name || ':' || state || ':' || sync_state, ',') FROM pg_stat_replication), 'no walsender')", 'postgres')) ?? null;
      console.log(`${system}: not healthy 5 minutes after the network healed: ${JSON.stringify(notHealthy)}`);
    }
    if (lost?.length) console.log(`${system}: ${lost.length} acknowledged writes missing on ${leaderAfter}: ${lost.slice(0, 20).join(', ')}${lost.length > 20 ? ', ...' : ''}`);
    const s = stalls([t0, ...acks, t1]);
    return {
      system, minutes, lossPercent: loss, promotions: changes.length, leaderChanges: changes, dualWritableSamples: dualWritable(c.samples, t0).samples,
      stallsOver1s: s.length, longestStallSeconds: Math.max(0, ...s) / 1000, secondsWithoutWrites: secondsWithout(acks, t0, t1),
      secondsWithoutSyncStandby: Math.round(withoutSync / 1000), acknowledged: acks.length,
      writesLost: lost ? lost.length : null, leaderAfter: leaderAfter ?? null, ...(notHealthy ? { notHealthy } : {}),
      settings: settingsOf(system, c),
      ...(netem ? { emulator: counted } : {}),
    };
  } finally {
    for (const e of impaired) await e.stop().catch(() => undefined);
    await c.stop();
    console.log(`${system}: log in ${c.logFile}`);
  }
}

const results: Figures[] = [];
for (const s of systems) results.push(await measure(s));
const head = ['SYSTEM', 'MINUTES', 'LOSS', 'PROMOTIONS (ALL FALSE)', 'DUAL-WRITABLE', 'STALLS > 1 S', 'LONGEST STALL', 'S WITHOUT WRITES', 'S WITHOUT SYNC STANDBY', 'ACKED', 'LOST'];
const rows = results.map((r) => [r.system, String(r.minutes), `${r.lossPercent}%`, String(r.promotions), String(r.dualWritableSamples), String(r.stallsOver1s), `${r.longestStallSeconds.toFixed(1)} s`, String(r.secondsWithoutWrites), String(r.secondsWithoutSyncStandby), String(r.acknowledged), r.writesLost === null ? 'unknown (never healthy again)' : String(r.writesLost)]);
const w = head.map((_, i) => Math.max(...[head, ...rows].map((r) => r[i]!.length)));
console.log([head, ...rows].map((r) => r.map((x, i) => x.padEnd(w[i]!)).join('  ')).join('\n'));
console.log(`every member's outgoing packets: ${impairment.delayMs} ms ± ${impairment.jitterMs} ms, ${loss}% lost, through the ${via}${netem ? ` (${netem})` : ''}`);
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ minutes, seed, lossPercent: loss, delay: `${impairment.delayMs}ms ± ${impairment.jitterMs}ms uniform`, via, netemMissing: netem ?? null, results }, null, 2)}\n`);
