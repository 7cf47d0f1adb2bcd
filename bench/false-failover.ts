// npm run bench:false-failover -- [--minutes M] [--loss PCT] [--json FILE]
//                                   [--systems geminik8s,patroni:defaults,patroni:tuned]
// The price of speed: each system in turn, at each of its profiles, on the namespace harness
// with no real fault, only a bad network: PCT % packet loss (default 5) on every link, both
// ways, for M minutes (default 10). Delay and jitter need tc netem; where the kernel lacks it
// (these machines), the run is loss only and says so. Counts promotions (every one is false:
// nothing failed), write stalls over 1 s and seconds without writes. Needs root. Prints
// figures; asserts nothing.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { HarnessCluster, type PairHarness } from '#test/harness/cluster.ts';
import { flushRules, inNs, nsOf } from '#test/harness/netns.ts';
import { PatroniCluster, PATRONI_PROFILES } from '#test/harness/patroni.ts';
import { secondsWithout, stalls } from './chaos-core.ts';
import { netemMissing, nicOf, packetLoss } from './netem.ts';
import { arg } from './args.ts';


const minutes = Number(arg('--minutes', '10'));
const loss = Number(arg('--loss', '5'));
const jsonFile = arg('--json', '');
const systems = arg('--systems', 'geminik8s,patroni:defaults,patroni:tuned').split(',');
if (process.getuid?.() !== 0) {
  console.error('bench:false-failover needs root (network namespaces, iptables)');
  process.exit(2);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const MEMBERS = ['node1', 'node2', 'witness', 'client'];
// The profile is 200 ms ± 100 ms and the loss on every link; without netem, loss alone.
const netem = await netemMissing();

interface Figures {
  system: string;
  minutes: number;
  lossPercent: number;
  promotions: number;
  leaderChanges: string[];
  stallsOver1s: number;
  longestStallSeconds: number;
  secondsWithoutWrites: number;
  acknowledged: number;
  settings: unknown;
}

async function measure(system: string): Promise<Figures> {
  const [name, profile] = system.split(':') as ['geminik8s' | 'patroni', keyof typeof PATRONI_PROFILES | undefined];
  const dir = mkdtempSync(join(tmpdir(), `gk-ff-${system.replace(':', '-')}-`));
  const c: PairHarness = name === 'patroni' ? new PatroniCluster(dir, profile ?? 'defaults', 'gkfp') : new HarnessCluster(dir, 'gkfg');
  try {
    await c.start();
    let leader = await c.waitFor(`${system}: leader + synchronous standby`, () => c.healthyPair(), 180_000);
    c.startTraffic(minutes * 60 + 600);
    await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
    for (const m of MEMBERS) {
      if (!netem) await runPlan(inNs(nsOf(c.topology, m), 'tc', ['qdisc', 'add', 'dev', nicOf(m), 'root', 'netem', 'delay', '200ms', '100ms', 'loss', `${loss}%`]));
      else await packetLoss(c.topology, m, loss, true);
    }
    const t0 = Date.now();
    const changes: string[] = [];
    while (Date.now() - t0 < minutes * 60_000) {
      await sleep(1000);
      const now = await c.leader().catch(() => undefined);
      if (now && now !== leader) {
        changes.push(`+${Math.round((Date.now() - t0) / 1000)}s ${leader} -> ${now}`);
        console.log(`${system}: leader ${leader} -> ${now} at +${Math.round((Date.now() - t0) / 1000)} s`);
        leader = now;
      }
    }
    const t1 = Date.now();
    for (const m of MEMBERS) {
      await flushRules(c.topology, m);
      await runPlan(inNs(nsOf(c.topology, m), 'tc', ['qdisc', 'del', 'dev', nicOf(m), 'root']), { allowFailure: true });
    }
    const acks = c.acks.map((a) => a.t).filter((t) => t >= t0 && t <= t1);
    const s = stalls([t0, ...acks, t1]);
    return {
      system, minutes, lossPercent: loss, promotions: changes.length, leaderChanges: changes,
      stallsOver1s: s.length, longestStallSeconds: Math.max(0, ...s) / 1000, secondsWithoutWrites: secondsWithout(acks, t0, t1), acknowledged: acks.length,
      settings: c instanceof HarnessCluster ? { failover: c.config.failover, source: 'geminik8s init defaults' } : { ...PATRONI_PROFILES[profile ?? 'defaults'], profile: profile ?? 'defaults' },
    };
  } finally {
    await c.stop();
    console.log(`${system}: log in ${c.logFile}`);
  }
}

const results: Figures[] = [];
for (const s of systems) results.push(await measure(s));
const head = ['SYSTEM', 'MINUTES', 'LOSS', 'PROMOTIONS (ALL FALSE)', 'STALLS > 1 S', 'LONGEST STALL', 'S WITHOUT WRITES', 'ACKED'];
const rows = results.map((r) => [r.system, String(r.minutes), `${r.lossPercent}%`, String(r.promotions), String(r.stallsOver1s), `${r.longestStallSeconds.toFixed(1)} s`, String(r.secondsWithoutWrites), String(r.acknowledged)]);
const w = head.map((_, i) => Math.max(...[head, ...rows].map((r) => r[i]!.length)));
console.log([head, ...rows].map((r) => r.map((x, i) => x.padEnd(w[i]!)).join('  ')).join('\n'));
console.log(netem ? `loss only, ${loss}% on every link both ways: delay and jitter were not applied, ${netem}` : `netem on every member's NIC: 200 ms ± 100 ms delay and ${loss}% loss`);
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ minutes, lossPercent: loss, delay: netem ? null : '200ms ± 100ms', netemMissing: netem ?? null, results }, null, 2)}\n`);
