// npm run bench:switchover -- [--runs N] [--json FILE]
// Planned switchovers back and forth on the namespace pair (`geminik8s init` defaults, the agent
// as it runs, native PostgreSQL), with the writer going through the VIP. For each one: the
// writer's longest pause from the request on, the agent's answer time, and where the time went
// on both sides (the `switchover` and `switchover-promoted` steps the agents log). Prints
// figures and asserts nothing; under TCG the same steps are in the cluster suite's log.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HarnessCluster } from '#test/harness/cluster.ts';
import { outageAfter } from '#test/harness/scenarios.ts';
import { arg } from './args.ts';
import { percentile } from './failover-figures.ts';

interface Run {
  from: string;
  to: string;
  /** Longest gap between acknowledged writes from the request until 3 s after the answer. */
  pauseSeconds: number;
  answerMs: number;
  oldLeaderSteps?: Record<string, number>;
  newLeaderSteps?: Record<string, number>;
}

const runs = Number(arg('--runs', '10'));
const jsonFile = arg('--json', 'switchover-bench.json');
if (!Number.isInteger(runs) || runs < 1) {
  console.error(`--runs: expected a whole number of at least 1, found ${JSON.stringify(arg('--runs', ''))}`);
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error('bench:switchover needs root (network namespaces)');
  process.exit(2);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const dir = mkdtempSync(join(tmpdir(), 'gk-bench-switchover-'));
const c = new HarnessCluster(dir, 'gkbs');
const results: Run[] = [];
try {
  await c.start();
  await c.waitFor('leader + synchronous standby', () => c.healthyPair(), 180_000);
  c.startTraffic(runs * 120 + 120);
  await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
  for (let i = 0; i < runs; i++) {
    const from = await c.waitFor('leader + synchronous standby', () => c.healthyPair(), 180_000);
    // Let the pair settle (the new standby streaming sync, the writer steady) before the next one.
    await sleep(3000);
    const t0 = Date.now();
    const answer = await c.switchover(from);
    if (!answer?.ok) throw new Error(`switchover ${i + 1} from ${from} failed: ${JSON.stringify(answer)}`);
    const answered = Date.now();
    await c.waitFor('writes after the switchover', async () => (c.acks.some((a) => a.t > answered + 3000) ? true : undefined), 60_000);
    const pauseSeconds = outageAfter(c.acks.filter((a) => a.t <= answered + 3000), t0);
    const to = c.config.nodes.map((n) => n.name).find((n) => n !== from)!;
    const old = c.eventsOf(from, t0, (e) => e.event === 'switchover' && e.ok === true)[0];
    const took = c.eventsOf(to, t0, (e) => e.event === 'switchover-promoted')[0];
    const run: Run = { from, to, pauseSeconds, answerMs: answered - t0, oldLeaderSteps: old?.e.steps, newLeaderSteps: took?.e.steps };
    results.push(run);
    console.log(`switchover ${i + 1}/${runs} ${from} -> ${to}: writes paused ${run.pauseSeconds.toFixed(2)} s, answered in ${run.answerMs} ms`);
    console.log(`  ${from}: ${JSON.stringify(run.oldLeaderSteps)}`);
    console.log(`  ${to}: ${JSON.stringify(run.newLeaderSteps)}`);
  }
  const lost = (await c.missingAcks(await c.waitFor('leader', () => c.healthyPair(), 180_000))).length;
  const pauses = results.map((r) => r.pauseSeconds);
  const summary = { runs, pause: { p50: percentile(pauses, 50), max: Math.max(...pauses) }, writesAcknowledged: c.acks.length, writesLost: lost, syncPolicy: c.config.postgresql.syncPolicy, source: 'geminik8s init defaults, namespace pair' };
  writeFileSync(jsonFile, `${JSON.stringify({ ...summary, results }, null, 2)}\n`);
  console.log(`writes paused p50 ${summary.pause.p50.toFixed(2)} s, max ${summary.pause.max.toFixed(2)} s over ${runs} switchovers; ${c.acks.length} writes acknowledged, ${lost} lost; wrote ${jsonFile}`);
} finally {
  await c.stop();
  console.log(`log in ${c.logFile}`);
}
