import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import type { DemoReport } from '../../../scripts/demo.ts';

// `npm run demo` as a user runs it (a child process from the repository root), then what it
// reported, and that it cleaned up after itself.
test('npm run demo: a pair and a witness in QEMU, the leader powered off, failover and rejoin measured, no acknowledged write lost, everything removed', async (t) => {
  const json = join(tempDir('gk-e2e-demo-'), 'demo.json');
  // The release server is a closed port on loopback, so the demo takes the test image whatever
  // this machine can reach (the full image's K3s would not fit CI's time), and must say why.
  const r = await runPlan({ cmd: process.execPath, args: ['--import', 'tsx', 'scripts/demo.ts', '--json', json], cwd: ROOT, env: { GEMINIK8S_RELEASE_BASE_URL: 'http://127.0.0.1:47' } }, { allowFailure: true, timeoutMs: 50 * 60_000 });
  t.log(r.stdout.split('\n').filter((l) => l.startsWith('[demo')).join('\n'));
  t.is(r.exitCode, 0, `${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
  t.true(existsSync(json));
  const report = JSON.parse(readFileSync(json, 'utf8')) as DemoReport;
  t.regex(report.imageWhy, /^the test image, Kubernetes layer off: .*HEAD http:\/\/127\.0\.0\.1:47\/k3s-io\/k3s\/releases\/download\/.*ECONNREFUSED.*give --artifacts DIR/);
  t.true(report.writes.acknowledged > 20, 'writes before and after the failover');
  t.is(report.writes.lost, 0);
  t.is(report.failover.newLeader, 'node2');
  t.deepEqual(report.failover.vipOwners, ['52:54:00:78:01:12'], 'only node2 answers for the VIP');
  t.true(report.failover.promotedS > 0 && report.failover.writesResumedS > 0);
  // In place: following the new leader as it is, or pg_rewind when the WAL diverged; a re-clone means the rejoin lost its data directory.
  t.regex(report.rejoin.method, /^(follow|pg_rewind)$/);
  t.is(report.status.length, 3);
  t.regex(report.status[0]!, /node1[\s\S]*node2/, 'status shows both nodes');
  t.regex(report.status[0]!, /cluster demo: HEALTHY \(leader node1\)/, 'the pair is shown healthy before the fault');
  t.regex(report.status[1]!, /cluster demo: DEGRADED \(leader node2\)/, 'node2 leads alone after the failover');
  t.regex(report.status[2]!, /cluster demo: HEALTHY \(leader node2\)/, 'and the pair is healthy again after the rejoin');
  t.log(`demo: pair ready ${report.pairReadyS.toFixed(0)} s, promoted ${report.failover.promotedS.toFixed(1)} s after the power-off, writes again after ${report.failover.writesResumedS.toFixed(1)} s, node1 rejoined through ${report.rejoin.method} in ${report.rejoin.syncWallS.toFixed(0)} s, ${report.writes.acknowledged} acknowledged / ${report.writes.lost} lost, ${report.wallS.toFixed(0)} s in all`);
  for (const s of report.status) t.log(s);
  // Cleaned up: no namespace, no guest left.
  t.false((await runPlan({ cmd: 'ip', args: ['netns', 'list'] })).stdout.includes('gk-demo-lan'));
  t.is((await runPlan({ cmd: 'pgrep', args: ['-f', 'demo-node'] }, { allowFailure: true })).stdout.trim(), '');
});
