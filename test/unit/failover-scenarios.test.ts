import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HarnessCluster } from '../harness/cluster.ts';
import { runScenario, SCENARIOS, type ScenarioResult } from '../harness/scenarios.ts';

// Two real PostgreSQL nodes with the real agent, in network namespaces: needs root.
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;
if (!canRun) console.warn('failover scenarios skipped: they need root for network namespaces (CI runs as root)');

let cluster: HarnessCluster;
const results: ScenarioResult[] = [];

test.before(async () => {
  if (!canRun) return;
  cluster = new HarnessCluster(mkdtempSync(join(tmpdir(), 'gk-failover-')));
  await cluster.start();
  await cluster.waitFor('leader + synchronous standby after bootstrap', () => cluster.healthyPair(), 120_000);
  cluster.startTraffic(1200);
  await cluster.waitFor('first writes', async () => (cluster.acks.length > 10 ? true : undefined), 30_000);
});

test.after.always(async () => {
  if (!canRun || !cluster) return;
  await cluster.stop();
  for (const r of results) console.log(`${r.name}: leader ${r.leaderBefore} -> ${r.leaderAfter}, outage ${r.outageSeconds.toFixed(1)} s, recovered in ${r.recoverySeconds.toFixed(1)} s, lost ${r.writesLost.length}, dual-primary samples ${r.dualPrimarySamples}`);
  console.log(`harness log: ${cluster.logFile}`);
});

for (const scenario of SCENARIOS) {
  serial(`failover: ${scenario.name}`, async (t) => {
    t.timeout(240_000);
    const r = await runScenario(cluster, scenario);
    results.push(r);
    t.deepEqual(r.writesLost, [], 'every acknowledged write is on the current primary');
    t.is(r.dualPrimarySamples, 0, 'two writable primaries never coexisted');
    if (scenario.name === 'planned switchover') {
      t.log(`switchover took ${cluster.lastSwitchoverMs?.toFixed(0)} ms`);
      t.true((cluster.lastSwitchoverMs ?? Infinity) <= 5000, 'a planned switchover completes within 5 s');
    }
    if (scenario.expectFailover) t.not(r.leaderAfter, r.leaderBefore, 'the follower took over');
    else t.is(r.leaderAfter, r.leaderBefore, 'the leader kept its role');
  });
}
