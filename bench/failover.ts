// npm run bench:failover -- [--runs N] [--json FILE] [--chart FILE] [--systems geminik8s,patroni] [--patroni-profile defaults|tuned]
// Leader power loss, N times per system, on the same namespace harness, writer and fault.
// Prints figures; asserts nothing (these machines are noisy).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HarnessCluster, type PairHarness } from '../test/harness/cluster.ts';
import { PatroniCluster, PATRONI_PROFILES } from '../test/harness/patroni.ts';
import { renderAvailabilityChart, type Series } from './chart.ts';

interface RunFigures {
  failoverSeconds: number;
  rejoinSeconds: number;
  writesLost: number;
  dualPrimarySamples: number;
}

export interface SystemFigures {
  failover: { p50: number; p95: number; max: number };
  writesLost: number;
  dualPrimarySamples: number;
  rejoin: { p50: number };
  runs: RunFigures[];
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

/** Nearest-rank percentile. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Fault → first acknowledged write after the outage it caused. */
function failoverAfter(acks: { t: number }[], tFault: number): number {
  const after = acks.filter((a) => a.t > tFault);
  let previous = tFault;
  let longestEnd = after[0]?.t ?? NaN;
  let longest = -1;
  for (const a of after) {
    if (a.t - previous > longest) {
      longest = a.t - previous;
      longestEnd = a.t;
    }
    previous = a.t;
  }
  return (longestEnd - tFault) / 1000;
}

async function measure(c: PairHarness, runs: number): Promise<SystemFigures> {
  const figures: RunFigures[] = [];
  await c.start();
  await c.waitFor(`${c.system}: leader + synchronous standby`, () => c.healthyPair(), 180_000);
  c.startTraffic(runs * 300 + 120);
  await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
  for (let i = 0; i < runs; i++) {
    const leader = await c.waitFor('leader + synchronous standby', () => c.healthyPair(), 180_000);
    await new Promise((r) => setTimeout(r, 3000));
    const tFault = Date.now();
    c.log(`=== ${c.system} run ${i + 1}: power loss of ${leader}`);
    await c.powerOff(leader);
    await c.waitFor('a new leader', async () => {
      const l = await c.leader();
      return l && l !== leader ? l : undefined;
    }, 240_000);
    const ackedBefore = c.acks.length;
    await c.waitFor('writes on the new leader', async () => (c.acks.length > ackedBefore + 10 ? true : undefined), 120_000);
    const failoverSeconds = failoverAfter(c.acks, tFault);
    const tOn = Date.now();
    await c.powerOn(leader);
    const newLeader = await c.waitFor('old leader back as synchronous standby', () => c.healthyPair(), 300_000);
    const rejoinSeconds = (Date.now() - tOn) / 1000;
    const lost = await c.missingAcks(newLeader);
    const run = { failoverSeconds, rejoinSeconds, writesLost: lost.length, dualPrimarySamples: c.dualPrimarySamples(tFault - 1000) };
    figures.push(run);
    console.log(`${c.system} run ${i + 1}/${runs}: failover ${failoverSeconds.toFixed(2)} s, rejoin ${rejoinSeconds.toFixed(1)} s, lost ${run.writesLost}, dual-primary samples ${run.dualPrimarySamples}`);
  }
  const failovers = figures.map((f) => f.failoverSeconds);
  return {
    failover: { p50: percentile(failovers, 50), p95: percentile(failovers, 95), max: Math.max(...failovers) },
    writesLost: figures.reduce((s, f) => s + f.writesLost, 0),
    dualPrimarySamples: c.dualPrimarySamples(0),
    rejoin: { p50: percentile(figures.map((f) => f.rejoinSeconds), 50) },
    runs: figures,
  };
}

const runs = Number(arg('--runs', '5'));
const jsonFile = arg('--json', 'failover-bench.json');
const chartFile = arg('--chart', jsonFile.replace(/\.json$/, '') + '.svg');
const systems = arg('--systems', 'geminik8s,patroni').split(',');
const profile = arg('--patroni-profile', 'defaults') as keyof typeof PATRONI_PROFILES;
if (process.getuid?.() !== 0) {
  console.error('bench:failover needs root (network namespaces)');
  process.exit(2);
}

const result: Record<string, SystemFigures> = {};
const series: Series[] = [];
for (const system of systems) {
  const dir = mkdtempSync(join(tmpdir(), `gk-bench-${system}-`));
  const c: PairHarness = system === 'patroni' ? new PatroniCluster(dir, profile, 'gkbp') : new HarnessCluster(dir, 'gkbg');
  const started = Date.now();
  try {
    result[system] = await measure(c, runs);
    series.push({ name: system === 'patroni' ? `Patroni (${profile})` : 'geminik8s', acks: c.acks.map((a) => a.t - started) });
  } finally {
    await c.stop();
  }
  console.log(`${system}: log in ${c.logFile}`);
}
const out = Object.fromEntries(Object.entries(result).map(([k, v]) => [k, { failover: v.failover, writesLost: v.writesLost, dualPrimarySamples: v.dualPrimarySamples, rejoin: v.rejoin, runs: v.runs }]));
writeFileSync(jsonFile, `${JSON.stringify(out, null, 2)}\n`);
writeFileSync(chartFile, renderAvailabilityChart(series));
for (const [k, v] of Object.entries(result)) {
  console.log(`${k}: failover p50 ${v.failover.p50.toFixed(2)} s, p95 ${v.failover.p95.toFixed(2)} s, max ${v.failover.max.toFixed(2)} s; writes lost ${v.writesLost}; dual-primary samples ${v.dualPrimarySamples}; rejoin p50 ${v.rejoin.p50.toFixed(1)} s`);
}
console.log(`wrote ${jsonFile} and ${chartFile}`);
