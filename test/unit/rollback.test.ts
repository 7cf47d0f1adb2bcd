import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { bless } from '#agent/bootslot.ts';
import { sucJobStep } from '#agent/sucjob.ts';
import { noteTrialFailure, stageRollback, stageUpgrade, upgradeStatus } from '#agent/upgrade.ts';
import { requestRollback, waitForRollback } from '#builder/ops/rollback.ts';
import type { Fetcher } from '#builder/ops/status.ts';
import { cli } from '#lab/cli.ts';
import { CLUSTER_FIXTURE, FAKE_SECRETS, loadFixtureCluster } from '../helpers/fixtures.ts';
import { fakeNode, grubenv, nodeWithBundle } from '../helpers/upgrade-node.ts';

type Node = ReturnType<typeof fakeNode>;

/** GRUB boots `slot` (a new boot id); the slot's image manifest says `version`. */
async function bootInto(node: Node, slot: 'A' | 'B', version: string, ...env: string[]): Promise<void> {
  writeFileSync(join(node.dir, 'cmdline'), `BOOT_IMAGE=/slot-${slot.toLowerCase()}/vmlinuz geminik8s.slot=${slot}\n`);
  writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
  const manifest = JSON.parse(readFileSync(join(node.dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(node.dir, 'manifest.json'), JSON.stringify({ ...manifest, version }));
  if (env.length) await grubenv(node, ...env);
}

/** A node that ran 1.0.0 on A, then upgraded to 1.1.0 on B and blessed it. */
async function upgradedNode(): Promise<{ node: Node; file: string }> {
  const { node, file } = await nodeWithBundle();
  await stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot });
  await bootInto(node, 'B', '1.1.0', 'try_count=2');
  await bless(node.boot);
  return { node, file };
}

test('rollback: arms the old slot, puts the version left on the failed list, and the try is blessed like an upgrade', async (t) => {
  const { node, file } = await upgradedNode();
  t.like((await upgradeStatus(node.upgrade, node.boot)).slots, { A: '1.0.0', B: '1.1.0' });

  const r = await stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'the app misbehaves on 1.1.0' });
  t.like(r, { slot: 'A', from: 'B', version: '1.0.0', leaving: '1.1.0' });
  const armed = await upgradeStatus(node.upgrade, node.boot);
  t.is(armed.boot.trySlot, 'A');
  t.like(armed.record.current, { kind: 'rollback', state: 'armed', slot: 'A', version: '1.0.0', fromVersion: '1.1.0' });
  t.like(armed.record.failed[0], { version: '1.1.0', reason: 'rolled back by the operator: the app misbehaves on 1.1.0' });
  t.like(armed.slots, { A: '1.0.0', B: '1.1.0' });
  await t.throwsAsync(stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'twice' }), { message: /a try of slot A is armed/ });

  await bootInto(node, 'A', '1.0.0', 'try_count=2');
  await t.throwsAsync(stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'x' }), { message: /this boot is an unblessed try of slot A/ });
  await bless(node.boot);
  const after = await upgradeStatus(node.upgrade, node.boot);
  t.like(after.record.current, { kind: 'rollback', state: 'blessed', slot: 'A', version: '1.0.0' });
  t.is(after.boot.state, 'steady');
  t.like(after.slots, { A: '1.0.0', B: '1.1.0' });

  // The version left is not staged again by itself: the SUC job fails rather than loop.
  const manifestSha256 = after.record.failed[0]!.manifestSha256;
  t.is(sucJobStep({ target: { version: '1.1.0', manifestSha256 }, running: '1.0.0', boot: after.boot, record: after.record }).action, 'fail');
  await t.throwsAsync(stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot }), { message: /failed on this node .*rolled back by the operator/ });
  // A rollback of the rollback: the record says B holds 1.1.0, which this node ran before.
  t.like(await stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'fixed elsewhere' }), { slot: 'B', version: '1.1.0' });
});

test('rollback refusals: nothing upgraded here, the other slot cannot boot; a rollback that falls back fails no bundle', async (t) => {
  const fresh = fakeNode();
  await grubenv(fresh, 'active_slot=A', 'try_slot=', 'try_count=0');
  await t.throwsAsync(stageRollback({ upgrade: fresh.upgrade, boot: fresh.boot, reason: 'x' }), { message: /rollback refused: slot B holds no version this node ran before the current one \(the last upgrade here: none\)/ });

  const { node } = await upgradedNode();
  rmSync(join(node.esp, 'slot-a/vmlinuz'));
  await t.throwsAsync(stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'x' }), { message: /slot-a\/vmlinuz is missing: slot A cannot boot/ });
  writeFileSync(join(node.esp, 'slot-a/vmlinuz'), 'kernel A');
  t.is((await upgradeStatus(node.upgrade, node.boot)).boot.trySlot, undefined, 'a refusal armed nothing');

  await stageRollback({ upgrade: node.upgrade, boot: node.boot, reason: 'try it' });
  await bootInto(node, 'A', '1.0.0', 'try_count=2');
  await noteTrialFailure(node.upgrade.recordFile, 'A', 'the health gate did not pass within 15 min: PostgreSQL is not the expected standby');
  await bootInto(node, 'B', '1.1.0', 'try_slot=', 'try_count=0');
  const s = await upgradeStatus(node.upgrade, node.boot);
  t.like(s.record.current, { kind: 'rollback', state: 'fell-back', reason: 'the health gate did not pass within 15 min: PostgreSQL is not the expected standby' });
  t.deepEqual(s.record.failed.map((f) => f.version), ['1.1.0'], 'only the version the operator left');
});

/** A pair of agents as the CLI sees them over HTTP: node2 rolls back, its reboot waits for the peer at first. */
function fakeAgents(script: { rebootRefusals: number }) {
  const calls: string[] = [];
  let phase: 'armed' | 'rebooting' | 'down' | 'back' = 'armed';
  let statusCalls = 0;
  const status = (name: string, role: string, slot: string, version: string) => ({
    role, generation: 5, version, slot, degraded: false, vip: { heldHere: role === 'leader' }, lease: { held: role === 'leader', msLeft: 3000 },
    boot: { state: 'steady', booted: slot, active: slot, slots: { A: '1.0.0', B: '1.1.0' } },
    postgres: { up: true, timeline: 3, lsn: '0/5000', readOnly: role !== 'leader', ...(role === 'leader' ? { role: 'primary', standby: { state: 'streaming', syncState: 'sync' }, lagBytes: 0 } : { role: 'standby', receiverStreaming: true }) },
  });
  const fetcher: Fetcher = async (url, init) => {
    const path = new URL(url).pathname;
    const node = new URL(url).hostname === '192.168.10.11' ? 'node1' : 'node2';
    if (path.startsWith('/v1/clusters/')) return { status: 200, body: { cluster: 'site-a', generation: 5, holder: 'node1', promotable: 'node2', timeline: 3 } };
    calls.push(`${init.method ?? 'GET'} ${node} ${path}${init.body ? ` ${init.body}` : ''}`);
    if (init.headers.authorization !== `Bearer ${path === '/v1/status' ? FAKE_SECRETS.readToken : FAKE_SECRETS.adminToken}` && path !== '/v1/status') return { status: 403, body: { error: 'wrong credential' } };
    if (path === '/v1/upgrade/rollback') return { status: 200, body: { ok: true, reason: 'slot A (1.0.0) armed; the reboot waits', rollback: { slot: 'A', from: 'B', version: '1.0.0', leaving: '1.1.0' }, reboot: { ok: false, retryable: true, reason: 'the peer is not a leader with a writable primary' } } };
    if (path === '/v1/upgrade/reboot') {
      if (script.rebootRefusals-- > 0) return { status: 409, body: { ok: false, retryable: true, reason: 'the peer does not answer: rebooting now would leave no node up' } };
      phase = 'rebooting';
      return { status: 200, body: { ok: true, reason: 'the peer leads; rebooting into slot A', switchedOver: false } };
    }
    if (node === 'node1') return { status: 200, body: status('node1', 'leader', 'A', '1.0.0') };
    statusCalls++;
    if (phase === 'rebooting') phase = 'down';
    else if (phase === 'down' && statusCalls > 6) phase = 'back';
    if (phase === 'down') throw new Error('connect ECONNREFUSED');
    return { status: 200, body: status('node2', 'follower', phase === 'back' ? 'A' : 'B', phase === 'back' ? '1.0.0' : '1.1.0') };
  };
  return { fetcher, calls };
}

test('geminik8s rollback: a node that is not in the cluster file exits 2 and names both nodes', async (t) => {
  const r = await cli('rollback', '--cluster', CLUSTER_FIXTURE, '--node', 'node3');
  t.is(r.code, 2);
  t.regex(r.stderr, /--node: "node3" is not a node of .*cluster\.yaml \(expected node1 or node2\)/);
  const d = await cli('rollback', '--cluster', CLUSTER_FIXTURE, '--node', 'node1', '--timeout', 'later');
  t.is(d.code, 2);
  t.regex(d.stderr, /--timeout: expected a duration such as 20m, found "later"/);
});

test('geminik8s rollback --wait: asks the agent, asks for the reboot again while refused, waits through the reboot until the old slot runs blessed', async (t) => {
  const cluster = await loadFixtureCluster();
  const { fetcher, calls } = fakeAgents({ rebootRefusals: 2 });
  const r = await requestRollback(cluster, FAKE_SECRETS, 'node2', 'the app misbehaves', fetcher);
  t.like(r, { ok: true, slot: 'A', version: '1.0.0', leaving: '1.1.0', rebooting: false });
  t.is(calls[0], `POST node2 /v1/upgrade/rollback {"reason":"the app misbehaves"}`);
  let clock = 0;
  const lines: string[] = [];
  const w = await waitForRollback(cluster, FAKE_SECRETS, 'node2', 'A', r.rebooting, fetcher, 600_000, async (ms) => void (clock += ms), (l) => lines.push(l), () => clock);
  t.true(w.done, w.reason);
  t.regex(w.reason, /node2 runs 1\.0\.0 on slot A, blessed, and the pair is healthy/);
  t.is(calls.filter((c) => c.endsWith('/v1/upgrade/reboot')).length, 3, 'asked until the agent agreed, then never again');
  t.deepEqual(lines.slice(0, 3), [
    'node2 does not reboot yet: the peer does not answer: rebooting now would leave no node up',
    'node2 reboots: the peer leads; rebooting into slot A',
    'node2 does not answer (rebooting)',
  ]);

  const slow = fakeAgents({ rebootRefusals: 1000 });
  clock = 0;
  const late = await waitForRollback(cluster, FAKE_SECRETS, 'node2', 'A', false, slow.fetcher, 60_000, async (ms) => void (clock += ms), () => undefined, () => clock);
  t.false(late.done);
  t.regex(late.reason, /not done in time: node2 does not reboot yet: the peer does not answer/);
});
