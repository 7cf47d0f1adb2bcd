import test from 'ava';
import { deployChanges, deployDone, deploySteps } from '#builder/ops/deploy.ts';
import type { NodeCheck } from '#builder/ops/check.ts';
import type { ClusterStatus, NodeView, WitnessView } from '#builder/ops/status.ts';
import { loadFixtureCluster } from '../helpers/fixtures.ts';

const pg = (role: string, over: Partial<NonNullable<NodeView['pg']>> = {}): NodeView['pg'] => ({ up: true, role, lsn: '0/3000000', timeline: 1, readOnly: role !== 'primary', syncState: role === 'primary' ? 'sync' : null, lagBytes: 0, receiverStreaming: role === 'standby', ...over });
const status = (nodes: NodeView[], witness: WitnessView): ClusterStatus => ({ cluster: 'site-a', at: '', health: 'healthy', reasons: [], leader: null, nodes, witness });
const checks = (k3s?: boolean[]): NodeCheck[] => ['node1', 'node2'].map((name, i) => ({ name, ip: '', reachable: true, ok: true, checks: k3s ? [{ name: 'k3s', ok: k3s[i]!, detail: k3s[i] ? 'K3s is ready (/readyz)' : 'K3s is not ready: 503' }] : [] }));

test('deploy steps: nothing answers, then a pair coming up step by step, then up; K3s skipped without the layer, awaited with it', async (t) => {
  const cluster = await loadFixtureCluster();
  const [a, b] = cluster.nodes.map((n) => n);
  const lease: WitnessView = { kind: 'lease', url: 'https://w:7444', reachable: true, holder: null, promotable: null };
  const down = (n: { name: string; ip: string }): NodeView => ({ name: n.name, ip: n.ip, reachable: false, error: 'ECONNREFUSED' });
  const none = deploySteps(cluster, status([down(a!), down(b!)], { ...lease, reachable: false, error: 'ECONNREFUSED' }), checks().map((c) => ({ ...c, reachable: false })));
  t.deepEqual(none.map((s) => [s.id, s.state]), [[`${a!.name}-up`, 'waiting'], [`${b!.name}-up`, 'waiting'], ['primary', 'waiting'], ['standby', 'waiting'], ['sync', 'waiting'], ['vip', 'waiting'], ['witness', 'waiting'], ['k3s', 'waiting']]);
  t.regex(none.find((s) => s.id === 'primary')!.detail, new RegExp(`waiting for ${cluster.bootstrapLeader ?? a!.name} \\(the bootstrap leader\\)`));
  t.false(deployDone(none));

  const leader: NodeView = { name: a!.name, ip: a!.ip, reachable: true, role: 'leader', pg: pg('primary', { syncState: null }), degraded: true, vipHere: true };
  const cloning: NodeView = { name: b!.name, ip: b!.ip, reachable: true, role: 'follower', pg: pg('standby', { up: false }) };
  const mid = deploySteps(cluster, status([leader, cloning], { ...lease, holder: a!.name }), checks());
  t.deepEqual(mid.filter((s) => s.state === 'done').map((s) => s.id), [`${a!.name}-up`, `${b!.name}-up`, 'primary', 'vip']);
  t.regex(mid.find((s) => s.id === 'standby')!.detail, /follower, PostgreSQL not running/);
  t.regex(mid.find((s) => s.id === 'sync')!.detail, /switched off \(degraded\)/);
  t.is(mid.find((s) => s.id === 'k3s')!.state, 'skipped');

  const up = deploySteps(cluster, status([{ ...leader, pg: pg('primary'), degraded: false }, { ...cloning, pg: pg('standby') }], { ...lease, holder: a!.name, promotable: b!.name }), checks());
  t.true(deployDone(up));
  t.deepEqual(deployChanges(mid, up).map((s) => s.id), ['standby', 'sync', 'witness']);
  t.deepEqual(deployChanges(up, up), []);

  // Both nodes on the VIP is not done; with the Kubernetes layer, K3s Ready is awaited on both nodes.
  const twoVips = deploySteps(cluster, status([{ ...leader, pg: pg('primary'), degraded: false }, { ...cloning, pg: pg('standby'), vipHere: true }], { ...lease, holder: a!.name, promotable: b!.name }), checks([true, false]));
  t.is(twoVips.find((s) => s.id === 'vip')!.state, 'waiting');
  t.regex(twoVips.find((s) => s.id === 'vip')!.detail, new RegExp(`held by ${a!.name} and ${b!.name}`));
  t.is(twoVips.find((s) => s.id === 'k3s')!.state, 'waiting');
  t.regex(twoVips.find((s) => s.id === 'k3s')!.detail, /K3s is not ready: 503/);
  t.is(deploySteps(cluster, status([{ ...leader, pg: pg('primary'), degraded: false }, { ...cloning, pg: pg('standby') }], { kind: 'none', reachable: false }), checks([true, true])).find((s) => s.id === 'witness')!.state, 'skipped');
});
