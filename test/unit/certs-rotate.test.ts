import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyTlsOverride, nodeCertProblem, readPeerOverride, readTlsOverride, TLS_OVERRIDE_FILE, writePeerOverride, writeTlsOverride } from '#agent/context.ts';
import { k3sCertRotatePlans } from '#agent/tlsrotate.ts';
import { planCertRotation } from '#builder/ops/certs.ts';
import { nodeSubject } from '#builder/init/tls.ts';
import { assess, nodeViewOf, type ClusterStatus, type NodeView, type WitnessView } from '#builder/ops/status.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import type { NodeSeed } from '#common/schema/seed.ts';
import { certFingerprint, issueCa, issueLeaf } from '#common/tls.ts';
import { cli } from '#lab/cli.ts';
import { fakeCa, fakeTls, FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

test('nodeCertProblem and applyTlsOverride: a rotated certificate is used only when it is this node\'s, from the seed\'s CA, covers its address, loopback and the VIP, matches its key, and is newer than the seed\'s', async (t) => {
  const cluster = await loadFixtureCluster();
  const self = cluster.nodes[0]!;
  const seed = { node: 'node1', cluster, secrets: FAKE_SECRETS, tls: fakeTls('node1') } as unknown as NodeSeed;
  const now = new Date();
  // Issued now, so newer than the committed fixture certificate.
  const fresh = await issueLeaf(fakeCa(), nodeSubject(cluster, 'node1'));
  t.is(nodeCertProblem(cluster, self, seed.tls!.ca, fresh.cert, fresh.key, now), undefined);
  const applied = applyTlsOverride(seed, { ...fresh, at: now.toISOString() }, now);
  t.is(applied.ignored, undefined);
  t.like(applied.seed.tls, { cert: fresh.cert, key: fresh.key, ca: seed.tls!.ca });
  t.is(applyTlsOverride(seed, undefined, now).seed, seed);

  const other = await issueLeaf(fakeCa(), nodeSubject(cluster, 'node2'));
  t.regex(applyTlsOverride(seed, { ...other, at: '' }, now).ignored!, /names node2 of cluster site-a, not node1/);
  const noVip = await issueLeaf(fakeCa(), { ...nodeSubject(cluster, 'node1'), hosts: [self.ip, '127.0.0.1'] });
  t.regex(nodeCertProblem(cluster, self, seed.tls!.ca, noVip.cert, noVip.key, now)!, /does not cover 192\.168\.10\.50/);
  const stranger = await issueLeaf(await issueCa('site-a'), nodeSubject(cluster, 'node1'));
  t.regex(applyTlsOverride(seed, { ...stranger, at: '' }, now).ignored!, /not signed by the cluster CA/);
  t.regex(applyTlsOverride(seed, { cert: fresh.cert, key: other.key, at: '' }, now).ignored!, /key does not belong/);
  // A seed written after the rotation carries a newer certificate than the recorded one.
  const newerSeed = { ...seed, tls: { ...seed.tls!, ...(await issueLeaf(fakeCa(), nodeSubject(cluster, 'node1'))) } } as NodeSeed;
  const older = { ...fakeTls('node1'), at: '' };
  t.regex(applyTlsOverride(newerSeed, older, now).ignored!, /the seed's certificate is newer/);
  t.is(certFingerprint(fresh.cert).length, 64);
});

test('k3sCertRotatePlans: K3s\'s documented stop, rotate, start under systemd with Kubernetes; nothing otherwise', (t) => {
  const k8s = AgentConfigSchema.parse({ seedFile: '/s', postgresql: { binDir: '/b', dataDir: '/d' }, kubernetes: { enabled: true } });
  t.snapshot(k3sCertRotatePlans({ config: k8s }));
  t.deepEqual(k3sCertRotatePlans({ config: AgentConfigSchema.parse({ seedFile: '/s', postgresql: { binDir: '/b', dataDir: '/d' } }) }), []);
  t.deepEqual(k3sCertRotatePlans({ config: { ...k8s, serviceManager: 'direct' } }), []);
});

const witness: WitnessView = { kind: 'lease', url: 'https://192.168.10.5:7444', reachable: true, holder: 'node2', generation: 6, promotable: 'node1', timeline: 4 };
const view = (name: string, role: string): NodeView => nodeViewOf(name, name === 'node1' ? '192.168.10.11' : '192.168.10.12', {
  role, generation: 6, postgres: { up: true, role: role === 'leader' ? 'primary' : 'standby', readOnly: role !== 'leader', standby: role === 'leader' ? { state: 'streaming', syncState: 'sync' } : undefined },
});
const status = (nodes: NodeView[]): ClusterStatus => ({ cluster: 'site-a', at: '', ...assess(nodes, witness), nodes, witness });

test('planCertRotation: the follower first, the leader last; a node that does not answer stops it (or is left to its seed with --node)', (t) => {
  const both = planCertRotation(status([view('node1', 'follower'), view('node2', 'leader')]), undefined, true);
  t.true(both.ok);
  t.deepEqual(both.order, ['node1', 'node2']);
  t.regex(both.steps.join('\n'), /k3s certificate rotate/);
  t.notRegex(planCertRotation(status([view('node1', 'follower'), view('node2', 'leader')]), undefined, false).steps.join('\n'), /k3s/);
  t.deepEqual(planCertRotation(status([view('node1', 'leader'), view('node2', 'follower')]), undefined, true).order, ['node2', 'node1']);
  const down: NodeView = { name: 'node1', ip: '192.168.10.11', reachable: false, error: 'connect EHOSTUNREACH' };
  const refused = planCertRotation(status([down, view('node2', 'leader')]), undefined, true);
  t.false(refused.ok);
  t.regex(refused.rule, /node1 does not answer \(connect EHOSTUNREACH\).* Rotate --node node2 now/);
  t.deepEqual(planCertRotation(status([down, view('node2', 'leader')]), 'node2', true).order, ['node2']);
  t.regex(planCertRotation(status([down, view('node2', 'leader')]), 'node9', true).rule, /node9 is not a node/);
});

test('geminik8s certs rotate with nothing answering: exit 5, no certificate reissued', async (t) => {
  const site = tempDir('gk-certs-');
  t.is((await cli('init', '--name', 'shop', '--node1-ip', '10.1.0.11', '--node2-ip', '10.1.0.12', '--vip', '10.1.0.50', '--config-dir', site)).code, 0);
  const crt = (n: string) => readFileSync(join(site, 'secrets', 'tls', `${n}.crt`), 'utf8');
  const before = [crt('node1'), crt('node2')];
  const r = await cli('certs', 'rotate', '--cluster', join(site, 'cluster.yaml'));
  t.is(r.code, 5, r.stderr);
  t.regex(r.stderr, /refusing to rotate: node1 does not answer .*node2 does not answer/);
  t.deepEqual([crt('node1'), crt('node2')], before);
});

test('the state records: none is undefined, a written one reads back, a broken one is an error naming the file and never quoting a key', async (t) => {
  const dir = tempDir('gk-state-');
  t.is(await readTlsOverride(dir), undefined);
  t.is(await readPeerOverride(dir), undefined);
  const material = { ...fakeTls('node1'), at: '2026-12-02T00:00:00.000Z' };
  await writeTlsOverride(dir, { cert: material.cert, key: material.key, at: material.at });
  t.deepEqual(await readTlsOverride(dir), { cert: material.cert, key: material.key, at: material.at });
  const peer = { cluster: 'site-a', name: 'node1', ip: '192.168.10.21', previousIp: '192.168.10.11', at: material.at };
  await writePeerOverride(dir, peer);
  t.deepEqual(await readPeerOverride(dir), peer);
  // The key's material written bare: JSON.parse's own message would quote it.
  const keyBody = material.key.split('\n')[1]!;
  writeFileSync(join(dir, TLS_OVERRIDE_FILE), `{"cert": "x", "key": ${keyBody}}`);
  const notJson = await t.throwsAsync(readTlsOverride(dir));
  t.regex(notJson!.message, /tls\.json: not JSON; expected the record geminik8s certs rotate writes/);
  t.false(notJson!.message.includes(keyBody.slice(0, 8)), 'no part of the key in the error');
  writeFileSync(join(dir, 'peer.json'), JSON.stringify({ ...peer, ip: 7 }));
  await t.throwsAsync(readPeerOverride(dir), { message: /peer\.json: ip: .*expected the record geminik8s replace-node writes/ });
});
