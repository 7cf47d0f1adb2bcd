import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyPeerOverride, type PeerOverride } from '#agent/context.ts';
import { clusterTextWithAddress, planReplaceNode } from '#builder/ops/replace.ts';
import { assess, nodeViewOf, type ClusterStatus, type NodeView, type WitnessView } from '#builder/ops/status.ts';
import { withNodeAddress } from '#common/membership.ts';
import type { NodeSeed } from '#common/schema/seed.ts';
import { cli } from '#lab/cli.ts';
import { CLUSTER_FIXTURE, FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

test('withNodeAddress: a free address in the subnet moves the node; every rule it would break is named with its path', async (t) => {
  const cluster = await loadFixtureCluster();
  const ok = withNodeAddress(cluster, 'node1', '192.168.10.21', '52:54:00:0A:00:21');
  t.deepEqual(ok.problems, []);
  t.like(ok.spec!.nodes[0], { name: 'node1', ip: '192.168.10.21', mac: '52:54:00:0a:00:21' });
  t.is(ok.spec!.nodes[1], cluster.nodes[1], 'the other node is untouched');
  t.is(cluster.nodes[0]!.ip, '192.168.10.11', 'the input spec is not changed');
  const problems = (ip: string, mac?: string) => withNodeAddress(cluster, 'node1', ip, mac).problems.join('\n');
  t.regex(problems('10.9.9.9'), /nodes\.1\.ip: both nodes must be in one \/24 subnet/);
  t.regex(problems('192.168.10.50'), /network\.vip: the VIP must differ from both node IPs/);
  t.regex(problems('192.168.10.12'), /nodes\.1\.ip: node IPs must differ/);
  t.regex(problems('192.168.10.1'), /network\.gateway: the gateway must differ/);
  t.regex(problems('192.168.10.255'), /network or broadcast address/);
  t.regex(problems('192.168.10.300'), /nodes\.0\.ip: must be an IPv4 address .*found "192\.168\.10\.300"/);
  t.regex(problems('192.168.10.21', '52:54:00:0a:00:12'), /nodes\.1\.mac: node MAC addresses must differ/);
  t.regex(problems('192.168.10.21', 'zz'), /nodes\.0\.mac: must be a MAC address/);
  t.regex(withNodeAddress(cluster, 'node9', '192.168.10.21').problems.join(), /no node named node9 \(the nodes are node1, node2\)/);
});

test('applyPeerOverride: the recorded address replaces the seed\'s for the peer only; one for another cluster, for this node, or against the rules is not applied and says why', async (t) => {
  const cluster = await loadFixtureCluster();
  const seed = { node: 'node2', cluster, secrets: FAKE_SECRETS } as unknown as NodeSeed;
  const o: PeerOverride = { cluster: cluster.name, name: 'node1', ip: '192.168.10.21', previousIp: '192.168.10.11', at: '2026-12-02T00:00:00.000Z' };
  const applied = applyPeerOverride(seed, o);
  t.is(applied.ignored, undefined);
  t.is(applied.seed.cluster.nodes.find((n) => n.name === 'node1')!.ip, '192.168.10.21');
  t.is(applied.seed.cluster.nodes.find((n) => n.name === 'node2')!.ip, '192.168.10.12');
  t.is(applyPeerOverride(seed, undefined).seed, seed);
  t.regex(applyPeerOverride(seed, { ...o, cluster: 'other' }).ignored!, /for cluster other/);
  t.regex(applyPeerOverride(seed, { ...o, name: 'node2' }).ignored!, /names node2, but the peer is node1/);
  t.regex(applyPeerOverride(seed, { ...o, ip: '192.168.10.50' }).ignored!, /VIP must differ/);
  for (const bad of [{ ...o, cluster: 'other' }, { ...o, ip: '192.168.10.50' }]) t.is(applyPeerOverride(seed, bad).seed, seed, 'nothing applied');
});

const leader = (name: string, ip: string): NodeView => nodeViewOf(name, ip, {
  role: 'leader', generation: 6, version: '0.1.0', degraded: true, vip: { heldHere: true }, lease: { held: true, msLeft: 4000 },
  postgres: { up: true, role: 'primary', timeline: 4, lsn: '0/9000', readOnly: false },
});
const witness: WitnessView = { kind: 'lease', url: 'https://192.168.10.5:7444', reachable: true, holder: 'node2', generation: 6, promotable: null, timeline: 4 };
function status(nodes: NodeView[]): ClusterStatus {
  return { cluster: 'site-a', at: '2026-12-02T00:00:00.000Z', ...assess(nodes, witness), nodes, witness };
}

test('planReplaceNode: only while the survivor leads and nothing answers as the old node; the steps say what changes where', (t) => {
  const gone: NodeView = { name: 'node1', ip: '192.168.10.11', reachable: false, error: 'connect EHOSTUNREACH' };
  const plan = planReplaceNode(status([gone, leader('node2', '192.168.10.12')]), 'node1', '192.168.10.21', '/site/seed-node1', '/site/cluster.yaml.bak-x');
  t.true(plan.ok);
  t.is(plan.survivor, 'node2');
  t.regex(plan.steps.join('\n'), /node2: .*reload PostgreSQL \(no restart\), drop node1's old replication slot/);
  t.regex(plan.steps.join('\n'), /nodes\.node1\.ip 192\.168\.10\.11 -> 192\.168\.10\.21 \(the old file kept as \/site\/cluster\.yaml\.bak-x\)/);

  const alive = leader('node1', '192.168.10.11');
  const stillThere = planReplaceNode(status([{ ...alive, role: 'fenced' }, leader('node2', '192.168.10.12')]), 'node1', '192.168.10.21', 's', 'b');
  t.false(stillThere.ok);
  t.regex(stillThere.rule, /node1's agent answers at 192\.168\.10\.11 \(role fenced\): replace-node is for a box that is gone/);

  const follower = nodeViewOf('node2', '192.168.10.12', { role: 'follower', generation: 6, postgres: { up: true, role: 'standby', readOnly: true } });
  const noLeader = planReplaceNode(status([gone, follower]), 'node1', '192.168.10.21', 's', 'b');
  t.false(noLeader.ok);
  t.regex(noLeader.rule, /node2 must lead a writable primary .* geminik8s failover --to node2 --force/);
  t.regex(planReplaceNode(status([gone, follower]), 'node7', '192.168.10.21', 's', 'b').rule, /node7 is not a node of cluster site-a/);
});

test('clusterTextWithAddress: an edit of the document (comments and layout kept), validated as cluster.yaml; a refused address is located by line', (t) => {
  const text = readFileSync(CLUSTER_FIXTURE, 'utf8').replace('  - name: node1\n', '  # the box in rack 3\n  - name: node1\n');
  const r = clusterTextWithAddress('site/cluster.yaml', text, 'node1', '192.168.10.21', '52:54:00:0a:00:21');
  t.deepEqual(r.issues, []);
  t.is(r.cluster!.nodes[0]!.ip, '192.168.10.21');
  const changed = r.text!.split('\n').filter((l, i) => l !== text.split('\n')[i]);
  t.deepEqual(changed, ['    ip: 192.168.10.21', '    mac: "52:54:00:0a:00:21"'], 'only the two lines change');
  t.true(r.text!.includes('# the box in rack 3'));
  const noMac = clusterTextWithAddress('site/cluster.yaml', text.replace('    mac: "52:54:00:0a:00:11"\n', ''), 'node1', '192.168.10.21', '52:54:00:0a:00:21');
  t.like(noMac.cluster!.nodes[0], { ip: '192.168.10.21', mac: '52:54:00:0a:00:21' }, 'a MAC the file lacks is added');
  t.true(noMac.text!.includes('# the box in rack 3'));
  const bad = clusterTextWithAddress('site/cluster.yaml', text, 'node1', '192.168.10.50');
  t.is(bad.text, undefined);
  const vip = bad.issues.find((i) => i.path === 'network.vip');
  t.truthy(vip, JSON.stringify(bad.issues));
  t.is(vip!.line, text.split('\n').findIndex((l) => l.includes('vip:')) + 1);
});

test('geminik8s replace-node: a refused address exits 2 naming the rule; with nothing answering it refuses (exit 5) and changes nothing', async (t) => {
  const site = tempDir('gk-replace-');
  t.is((await cli('init', '--name', 'shop', '--node1-ip', '10.1.0.11', '--node2-ip', '10.1.0.12', '--vip', '10.1.0.50', '--config-dir', site)).code, 0);
  const file = join(site, 'cluster.yaml');
  const before = readFileSync(file, 'utf8');
  const bad = await cli('replace-node', '--cluster', file, '--old', 'node1', '--new-ip', '10.1.0.50');
  t.is(bad.code, 2, bad.stderr);
  t.regex(bad.stderr, /network\.vip: the VIP must differ from both node IPs/);
  // Nothing answers at 10.1.0.x here: the survivor is not a leader, so nothing may change.
  const refused = await cli('replace-node', '--cluster', file, '--old', 'node1', '--new-ip', '10.1.0.21');
  t.is(refused.code, 5, refused.stderr);
  t.regex(refused.stderr, /refusing to replace node1: node2 must lead a writable primary/);
  t.is(readFileSync(file, 'utf8'), before, 'cluster.yaml unchanged');
  t.deepEqual(readdirSync(site).filter((f) => f.startsWith('cluster.yaml.bak') || f.startsWith('seed-')), [], 'no backup, no seed');
  t.false(existsSync(join(site, 'seed-node1')));
});
