import test from 'ava';
import { planFailover, planForceFailover } from '#builder/ops/failover.ts';
import { assess, collectStatus, nodeViewOf, renderStatusTable, type Fetcher, type NodeView, type WitnessView } from '#builder/ops/status.ts';
import { ClusterSchema } from '#common/schema/cluster.ts';
import { FAKE_SECRETS, loadFixtureCluster } from '../helpers/fixtures.ts';

// A /v1/status body as the agent's statusOf writes it (fields the status command reads).
const body = (role: string, pg: Record<string, unknown>, over: Record<string, unknown> = {}) => ({
  role, generation: 4, version: '0.1.0', slot: 'A', degraded: false, vip: { heldHere: role === 'leader' }, lease: { held: role === 'leader', msLeft: 3500 },
  lastTransition: { at: '2026-11-30T10:00:00.000Z', from: 'follower', to: role, reason: 'test' },
  boot: { state: 'steady', booted: 'A', active: 'A' }, postgres: { up: true, timeline: 3, lsn: '0/5000', readOnly: role !== 'leader', ...pg }, ...over,
});
const leaderBody = body('leader', { role: 'primary', standby: { state: 'streaming', syncState: 'sync' }, lagBytes: 0 });
const followerBody = body('follower', { role: 'standby', receiverStreaming: true });
const witnessOk: WitnessView = { kind: 'lease', url: 'http://10.0.0.9:7444', reachable: true, holder: 'node1', generation: 4, promotable: 'node2', timeline: 3 };

test('assess: healthy, degraded for each missing piece, down without (or with two) writable leaders', (t) => {
  const l = nodeViewOf('node1', '10.0.0.1', leaderBody);
  const f = nodeViewOf('node2', '10.0.0.2', followerBody);
  t.deepEqual(assess([l, f], witnessOk), { health: 'healthy', reasons: [], leader: 'node1' });
  const gone: NodeView = { name: 'node2', ip: '10.0.0.2', reachable: false, error: 'connect ECONNREFUSED' };
  t.like(assess([l, gone], { ...witnessOk }), { health: 'degraded', leader: 'node1' });
  t.regex(assess([l, gone], witnessOk).reasons.join('\n'), /node2 does not answer \(connect ECONNREFUSED\)/);
  t.regex(assess([l, f], { kind: 'lease', reachable: false, error: 'timeout' }).reasons.join(), /the witness does not answer/);
  t.regex(assess([l, f], { ...witnessOk, promotable: null }).reasons.join(), /nobody as promotable: no automatic failover/);
  const async = nodeViewOf('node1', '10.0.0.1', body('leader', { role: 'primary', standby: { state: 'streaming', syncState: 'async' } }, { degraded: true }));
  t.is(assess([async, f], witnessOk).health, 'degraded');
  t.deepEqual(assess([l, f], { kind: 'none', reachable: false }).health, 'healthy', 'no witness: manual failover is a configuration, not a fault');
  const readOnly = nodeViewOf('node1', '10.0.0.1', body('leader', { role: 'primary', readOnly: true }));
  t.like(assess([readOnly, f], witnessOk), { health: 'down', leader: null });
  const fenced = nodeViewOf('node1', '10.0.0.1', body('fenced', { up: false, role: 'down' }));
  t.like(assess([fenced, f], witnessOk), { health: 'down' });
  const second = nodeViewOf('node2', '10.0.0.2', leaderBody);
  t.regex(assess([l, second], witnessOk).reasons[0]!, /node1 and node2 both report a writable primary/);
  t.is(assess([gone, { ...gone, name: 'node1' }], witnessOk).health, 'down');
});

test('status shows what each slot holds and the last upgrade with its reason', (t) => {
  const l = nodeViewOf('node1', '10.0.0.1', { ...leaderBody, boot: { state: 'fell-back', booted: 'A', active: 'A', slots: { A: '0.1.0', B: '0.2.0' }, upgrade: { version: '0.2.0', slot: 'B', state: 'fell-back', at: '2026-11-30T10:00:00.000Z', reason: 'the health gate did not pass: replication is not synchronous' } } });
  const f = nodeViewOf('node2', '10.0.0.2', followerBody);
  t.deepEqual(l.slots, { A: '0.1.0', B: '0.2.0' });
  const table = renderStatusTable({ cluster: 'c', at: 'now', ...assess([l, f], witnessOk), nodes: [l, f], witness: witnessOk });
  t.regex(table, /^node1: slots A 0\.1\.0, B 0\.2\.0; last upgrade 0\.2\.0 on slot B: fell-back 2026-11-30T10:00:00\.000Z \(the health gate did not pass: replication is not synchronous\)$/m);
  t.notRegex(table, /^node2:/m, 'a node that reports nothing about slots gets no line');
});

test('collectStatus: read-token for the agents, witness-token for the witness; a table per state', async (t) => {
  const cluster = ClusterSchema.parse({ ...(await loadFixtureCluster()), witness: { type: 'lease', url: 'https://192.168.10.9:7444' } });
  const asked: { url: string; auth: string }[] = [];
  const answers: Record<string, () => { status: number; body: unknown }> = {
    'https://192.168.10.11:7443/v1/status': () => ({ status: 200, body: leaderBody }),
    'https://192.168.10.12:7443/v1/status': () => ({ status: 200, body: followerBody }),
    [`https://192.168.10.9:7444/v1/clusters/${cluster.name}`]: () => ({ status: 200, body: { cluster: cluster.name, holder: 'node1', generation: 4, promotable: 'node2', ttlMs: 6000, timeline: 3 } }),
  };
  const fetcher: Fetcher = async (url, init) => {
    asked.push({ url, auth: init.headers.authorization ?? '' });
    const a = answers[url];
    if (!a) throw new Error(`connect ECONNREFUSED ${url}`);
    return a();
  };
  const now = new Date('2026-11-30T12:00:00Z');
  const healthy = await collectStatus(cluster, FAKE_SECRETS, fetcher, now);
  t.like(healthy, { health: 'healthy', leader: 'node1' });
  t.true(asked.filter((a) => a.url.endsWith('/v1/status')).every((a) => a.auth === `Bearer ${FAKE_SECRETS.readToken}`));
  t.is(asked.find((a) => a.url.includes('/v1/clusters/'))?.auth, `Bearer ${FAKE_SECRETS.witnessToken}`);
  t.snapshot(renderStatusTable(healthy), 'healthy');
  delete answers['https://192.168.10.12:7443/v1/status'];
  const degraded = await collectStatus(cluster, FAKE_SECRETS, fetcher, now);
  t.is(degraded.health, 'degraded');
  t.snapshot(renderStatusTable(degraded), 'node2 unreachable');
  answers['https://192.168.10.11:7443/v1/status'] = () => ({ status: 503, body: { error: 'starting: the node state is not read yet' } });
  const down = await collectStatus(cluster, FAKE_SECRETS, fetcher, now);
  t.is(down.health, 'down');
  t.regex(renderStatusTable(down), /node1\s+unreachable.*HTTP 503: starting/);
});

test('planFailover: a switchover only to the synchronous, promotable standby of a writing leader; otherwise the rule that refuses it', (t) => {
  const l = nodeViewOf('node1', '10.0.0.1', leaderBody);
  const f = nodeViewOf('node2', '10.0.0.2', followerBody);
  const status = (nodes: NodeView[], witness = witnessOk) => ({ cluster: 'site-a', at: '', nodes, witness, ...assess(nodes, witness) });
  const ok = planFailover(status([l, f]), 'node2');
  t.like(ok, { ok: true, from: 'node1', to: 'node2' });
  t.is(ok.steps.length, 4);
  t.regex(ok.rule, /synchronous standby .* promotable holds every acknowledged write/);
  t.regex(planFailover(status([l, f]), 'node1').rule, /already the leader/);
  t.regex(planFailover(status([l, f]), 'node3').rule, /not a node of cluster site-a/);
  t.regex(planFailover(status([l, f], { ...witnessOk, promotable: null }), 'node2').rule, /witness records nobody as promotable, not node2: .* run this again once `geminik8s status` says HEALTHY/);
  const async = nodeViewOf('node1', '10.0.0.1', body('leader', { role: 'primary', standby: { state: 'streaming', syncState: 'async' } }));
  t.regex(planFailover(status([async, f]), 'node2').rule, /standby is async: only a synchronous standby/);
  const down = nodeViewOf('node1', '10.0.0.1', body('fenced', { up: false, role: 'down' }));
  t.regex(planFailover(status([down, f]), 'node2').rule, /no node is a leader with a writable primary/);
  t.regex(planFailover(status([l, { name: 'node2', ip: '10.0.0.2', reachable: false, error: 'timeout' }]), 'node2').rule, /node2 does not answer/);
  for (const p of [planFailover(status([l, f]), 'node1'), planFailover(status([async, f]), 'node2')]) t.false(p.ok);
});

test('planForceFailover: only through a reachable witness, only with no writing leader, only onto a running standby; without the synchronous record only with --accept-data-loss, saying what is lost', (t) => {
  const status = (nodes: NodeView[], witness: WitnessView) => ({ cluster: 'site-a', at: '', nodes, witness, ...assess(nodes, witness) });
  const gone: NodeView = { name: 'node1', ip: '10.0.0.1', reachable: false, error: 'connect EHOSTUNREACH' };
  const f = nodeViewOf('node2', '10.0.0.2', followerBody);
  const l = nodeViewOf('node1', '10.0.0.1', leaderBody);
  const degraded: WitnessView = { ...witnessOk, promotable: null };
  // The case it exists for: the leader degraded, then died.
  const refused = planForceFailover(status([gone, f], degraded), 'node2', false);
  t.like(refused, { ok: false, dataLoss: true });
  t.regex(refused.rule, /records nobody as promotable, not node2: .*may be missing from node2\. node2 has WAL up to 0\/5000 on timeline 3\. Give --accept-data-loss/);
  const accepted = planForceFailover(status([gone, f], degraded), 'node2', true);
  t.like(accepted, { ok: true, from: 'node1', to: 'node2', generation: 4, dataLoss: true });
  t.regex(accepted.rule, /revokes the lease of node1 only once it has expired there.*never two writable primaries\. node2 was not recorded as synchronous: acknowledged writes it does not have are lost/);
  t.deepEqual(accepted.steps.map((s) => s.split(':')[0]), ['witness', 'node2', 'node1']);
  t.regex(accepted.steps[0]!, /generation 4 -> 5/);
  t.regex(accepted.steps[1]!, /generation 6/);
  // The standby was synchronous: nothing to accept, nothing revoked.
  const clean = planForceFailover(status([gone, f], witnessOk), 'node2', false);
  t.like(clean, { ok: true, dataLoss: false });
  t.regex(clean.rule, /recorded synchronous standby: it holds every acknowledged write/);
  // Refusals, each with its rule.
  const rule = (nodes: NodeView[], w: WitnessView, to = 'node2') => planForceFailover(status(nodes, w), to, true).rule;
  t.regex(rule([l, f], witnessOk), /node1 leads a writable primary: use a planned switchover/);
  t.regex(rule([gone, f], { kind: 'none', reachable: false }), /no witness: nothing can prove/);
  t.regex(rule([gone, f], { ...witnessOk, reachable: false, error: 'timeout' }), /the witness does not answer \(timeout\)/);
  t.regex(rule([gone, f], { ...witnessOk, holder: 'node2' }), /already records node2 as the lease holder/);
  t.regex(rule([gone, f], witnessOk, 'node3'), /not a node of cluster site-a/);
  t.regex(rule([gone, { name: 'node2', ip: '10.0.0.2', reachable: false, error: 'timeout' }], witnessOk), /node2 does not answer/);
  t.regex(rule([gone, nodeViewOf('node2', '10.0.0.2', body('fenced', { up: false, role: 'down' }))], witnessOk), /only a running standby can take over/);
  const readOnlyLeader = nodeViewOf('node1', '10.0.0.1', body('leader', { role: 'primary', readOnly: true }, { lease: { held: true, msLeft: 2100 } }));
  t.regex(rule([readOnlyLeader, f], witnessOk), /node1 still holds its lease \(2100 ms left\)/);
});

