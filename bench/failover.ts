// npm run bench:failover -- [--runs N] [--seed S] [--json FILE] [--chart FILE]
//                             [--systems geminik8s,patroni:defaults,patroni:tuned,pg_auto_failover:defaults,pg_auto_failover:tuned]
// Leader power loss, N times per system (and per Patroni and pg_auto_failover profile), on the same namespace
// harness, writer and fault. The fault lands at a random phase of each system's loop: a delay
// drawn from the seed, uniform over [0, 10 s), after the pair is healthy. Prints figures and
// each system's settings; asserts nothing (these machines are noisy).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type PairHarness } from '#test/harness/cluster.ts';
import { PATRONI_PROFILES } from '#test/harness/patroni.ts';
import { PGAF_PROFILES } from '#test/harness/pgaf.ts';
import { Rng } from '#agent/sim/world.ts';
import { renderAvailabilityChart, type Series } from './chart.ts';
import { arg } from './args.ts';
import { checkSystems, harnessFor, leaderPowerLoss, percentile, settingsOf } from './failover-figures.ts';

interface RunFigures {
  /** The random delay between a healthy pair and the fault. */
  phaseMs: number;
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


async function measure(c: PairHarness, runs: number, rng: Rng): Promise<SystemFigures> {
  const figures: RunFigures[] = [];
  await c.start();
  await c.waitFor(`${c.system}: leader + synchronous standby`, () => c.healthyPair(), 180_000);
  c.startTraffic(runs * 300 + 120);
  await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
  for (let i = 0; i < runs; i++) {
    const leader = await c.waitFor('leader + synchronous standby', () => c.healthyPair(), 180_000);
    const phaseMs = Math.round(rng.between(0, 10_000));
    await new Promise((r) => setTimeout(r, phaseMs));
    const p = await leaderPowerLoss(c, leader, `${c.system} run ${i + 1}`);
    const run = { phaseMs, failoverSeconds: p.failoverSeconds, rejoinSeconds: p.rejoinSeconds, writesLost: p.writesLost, dualPrimarySamples: p.dualPrimarySamples };
    figures.push(run);
    console.log(`${c.system} run ${i + 1}/${runs} (fault ${phaseMs} ms into the healthy pair): failover ${run.failoverSeconds.toFixed(2)} s, rejoin ${run.rejoinSeconds.toFixed(1)} s, lost ${run.writesLost}, dual-primary samples ${run.dualPrimarySamples}`);
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

const runs = Number(arg('--runs', '10'));
const seed = Number(arg('--seed', '1'));
const jsonFile = arg('--json', 'failover-bench.json');
const chartFile = arg('--chart', jsonFile.replace(/\.json$/, '') + '.svg');
// `patroni` alone is Patroni at its defaults (the old spelling).
const systems = arg('--systems', 'geminik8s,patroni:defaults,patroni:tuned,pg_auto_failover:defaults,pg_auto_failover:tuned').split(',').map((x) => (x === 'patroni' || x === 'pg_auto_failover' ? `${x}:defaults` : x));
checkSystems('--systems', systems);
if (process.getuid?.() !== 0) {
  console.error('bench:failover needs root (network namespaces)');
  process.exit(2);
}

const result: Record<string, SystemFigures> = {};
const writeResults = (): void => {
  const out = { seed, runs, systemsAsked: systems, settings, systems: Object.fromEntries(Object.entries(result).map(([k, v]) => [k, { failover: v.failover, writesLost: v.writesLost, dualPrimarySamples: v.dualPrimarySamples, rejoin: v.rejoin, runs: v.runs }])) };
  writeFileSync(jsonFile, `${JSON.stringify(out, null, 2)}\n`);
  writeFileSync(chartFile, renderAvailabilityChart(series));
};
const settings: Record<string, unknown> = {};
const series: Series[] = [];
// One generator for the whole run: each system gets its own draws, all from --seed.
const rng = new Rng(seed);
for (const system of systems) {
  const [name, profile] = system.split(':') as ['geminik8s' | 'patroni' | 'pg_auto_failover', (keyof typeof PATRONI_PROFILES & keyof typeof PGAF_PROFILES) | undefined];
  const dir = mkdtempSync(join(tmpdir(), `gk-bench-${system.replace(':', '-')}-`));
  const c = harnessFor(system, dir, 'gkb');
  const started = Date.now();
  try {
    result[system] = await measure(c, runs, rng);
    series.push({ name: name === 'patroni' ? `Patroni (${profile})` : name === 'pg_auto_failover' ? `pg_auto_failover (${profile})` : 'geminik8s', acks: c.acks.map((a) => a.t - started) });
    settings[system] = settingsOf(system, c);
  } finally {
    await c.stop();
  }
  console.log(`${system}: log in ${c.logFile}`);
  // After each system: a long run cut short still leaves the systems it finished.
  writeResults();
}
for (const [k, v] of Object.entries(result)) {
  console.log(`${k}: failover p50 ${v.failover.p50.toFixed(2)} s, p95 ${v.failover.p95.toFixed(2)} s, max ${v.failover.max.toFixed(2)} s; writes lost ${v.writesLost}; dual-primary samples ${v.dualPrimarySamples}; rejoin p50 ${v.rejoin.p50.toFixed(1)} s`);
}
console.log(`wrote ${jsonFile} and ${chartFile}`);
