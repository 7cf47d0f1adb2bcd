import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import { bless } from '#agent/bootslot.ts';
import { runSucJob, sucJobStep, type SucJobInputs, type SucJobPorts } from '#agent/sucjob.ts';
import { noteTrialFailure, UpgradeRecordSchema } from '#agent/upgrade.ts';
import { upgradeCommand } from '#agent/upgradecli.ts';
import { ExitCode } from '#common/errors.ts';
import { stringify } from 'yaml';
import { cli } from '#lab/cli.ts';
import { tempDir } from '../helpers/fixtures.ts';
import { grubenv, nodeWithBundle } from '../helpers/upgrade-node.ts';

const target = { version: '1.1.0', manifestSha256: 'f'.repeat(64) };
const record = (over: Partial<SucJobInputs['record']> = {}): SucJobInputs['record'] => ({ ...UpgradeRecordSchema.parse({}), ...over });
const steady = { state: 'steady' as const, booted: 'A' as const, trySlot: undefined, detail: '' };
const armed = { image: 'edge', version: '1.1.0', manifestSha256: target.manifestSha256, signer: 'K', slot: 'B' as const, fromVersion: '1.0.0', state: 'armed' as const, at: 't' };

test('suc-job step: stage, reboot once armed, wait for the blessing, done; a bundle that fell back here fails the job', (t) => {
  t.is(sucJobStep({ target, running: '1.0.0', boot: steady, record: record() }).action, 'stage');
  t.is(sucJobStep({ target, running: '1.0.0', boot: { ...steady, trySlot: 'B' }, record: record({ current: armed }) }).action, 'reboot');
  // Armed, but the try was withdrawn (no try slot in grubenv): write it again.
  t.is(sucJobStep({ target, running: '1.0.0', boot: steady, record: record({ current: armed }) }).action, 'stage');
  // Another bundle's record does not count as this one's.
  t.is(sucJobStep({ target, running: '1.0.0', boot: { ...steady, trySlot: 'B' }, record: record({ current: { ...armed, manifestSha256: 'e'.repeat(64) } }) }).action, 'stage');
  t.like(sucJobStep({ target, running: '1.1.0', boot: { ...steady, state: 'trying', booted: 'B' }, record: record() }), { action: 'wait' });
  t.like(sucJobStep({ target, running: '1.1.0', boot: { ...steady, booted: 'B' }, record: record() }), { action: 'done', reason: 'this node runs 1.1.0 on its blessed slot B' });
  const failed = record({ failed: [{ manifestSha256: target.manifestSha256, version: '1.1.0', reason: 'replication is not synchronous', at: '2026-12-01T08:00:00Z' }] });
  t.regex(sucJobStep({ target, running: '1.0.0', boot: { ...steady, state: 'fell-back' }, record: failed }).reason, /1\.1\.0 failed on this node at .* \(replication is not synchronous\); it is not retried automatically/);
  t.is(sucJobStep({ target, running: '1.0.0', boot: { ...steady, state: 'fell-back' }, record: failed }).action, 'fail');
  t.is(sucJobStep({ target, running: '0.9.0', boot: { ...steady, state: 'trying' }, record: record() }).action, 'wait', 'another try is being assessed');
  t.is(sucJobStep({ target, running: null, boot: { ...steady, state: 'unknown', booted: undefined, detail: 'no grubenv' }, record: record() }).action, 'fail');
});

/** Ports on fake time; the test decides what the agent answers to a reboot request. */
function ports(answers: { ok: boolean; reason: string; retryable?: boolean }[], onSleep: () => Promise<void> = async () => undefined) {
  let clock = 0;
  const lines: string[] = [];
  const asked: number[] = [];
  const p: SucJobPorts = {
    requestReboot: async () => {
      asked.push(clock);
      const a = answers.shift();
      if (!a) throw new Error('asked to reboot more often than expected');
      return a;
    },
    sleep: async (ms) => {
      clock += ms;
      await onSleep();
    },
    now: () => clock,
    log: (l) => lines.push(l),
  };
  return { p, lines, asked, clock: () => clock };
}

test('suc-job on a node: stages the bundle, waits while the agent refuses, asks once, and after the reboot waits for the blessing', async (t) => {
  const { node, file } = await nodeWithBundle();
  const opts = { bundle: file, upgrade: node.upgrade, boot: node.boot, pollMs: 10_000, deadlineMs: 600_000 };

  // First run: the peer is upgrading, then the agent agrees (the reboot would end the process).
  const first = ports([
    { ok: false, reason: 'the peer has its own upgrade staged (try of slot B): one node at a time', retryable: true },
    { ok: false, reason: 'the peer has its own upgrade staged (try of slot B): one node at a time', retryable: true },
    { ok: true, reason: 'the peer leads; rebooting into slot B' },
  ]);
  const r1 = await runSucJob({ ...opts, deadlineMs: 60_000 }, first.p);
  t.deepEqual(first.asked, [0, 10_000, 20_000], 'asked again each poll while refused, and not after the agent agreed');
  t.is(r1.exitCode, ExitCode.timeout, 'no reboot came: the job gives up at its deadline rather than hang');
  t.deepEqual(r1.steps.slice(0, 4), ['stage', 'reboot', 'reboot', 'reboot']);
  t.regex(first.lines.join('\n'), /staged 1\.1\.0 on slot B/);
  t.is(first.lines.filter((l) => l.startsWith('not yet:')).length, 1, 'a repeated refusal is logged once');
  t.true(existsSync(join(node.esp, 'slot-b/vmlinuz')));

  // GRUB boots the try of B; the new slot's manifest says 1.1.0. SUC runs the job again.
  writeFileSync(join(node.dir, 'cmdline'), 'BOOT_IMAGE=/slot-b/vmlinuz geminik8s.slot=B\n');
  writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
  writeFileSync(join(node.dir, 'manifest.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(node.dir, 'manifest.json'), 'utf8')), version: '1.1.0' }));
  await grubenv(node, 'try_count=2');
  let sleeps = 0;
  const second = ports([], async () => {
    if (++sleeps === 3) await bless(node.boot); // the agent's health gate passes
  });
  const r2 = await runSucJob(opts, second.p);
  t.is(r2.exitCode, ExitCode.ok, r2.reason);
  t.deepEqual(r2.steps, ['wait', 'wait', 'wait', 'done']);
  t.is(r2.reason, 'this node runs 1.1.0 on its blessed slot B');
});

test('suc-job: a bundle that fell back on this node fails the job and writes nothing; a non-retryable refusal fails too', async (t) => {
  const { node, file } = await nodeWithBundle();
  const p = ports([{ ok: false, reason: 'this boot is itself an unblessed try of slot B', retryable: false }]);
  const r = await runSucJob({ bundle: file, upgrade: node.upgrade, boot: node.boot, pollMs: 1000, deadlineMs: 60_000 }, p.p);
  t.is(r.exitCode, ExitCode.refused);
  t.regex(r.reason, /the agent refused the reboot: this boot is itself an unblessed try/);

  // The try of B fails its gate; GRUB falls back to A.
  writeFileSync(join(node.dir, 'cmdline'), 'BOOT_IMAGE=/slot-b/vmlinuz geminik8s.slot=B\n');
  writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
  await grubenv(node, 'try_count=2');
  await noteTrialFailure(node.upgrade.recordFile, 'B', 'the health gate did not pass within 15 min: the witness does not answer');
  writeFileSync(join(node.dir, 'cmdline'), 'BOOT_IMAGE=/slot-a/vmlinuz geminik8s.slot=A\n');
  writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
  await grubenv(node, 'try_slot=', 'try_count=0');
  const before = createHash('sha256').update(readFileSync(node.slots.B)).digest('hex');
  const again = ports([]);
  const r2 = await runSucJob({ bundle: file, upgrade: node.upgrade, boot: node.boot, pollMs: 1000, deadlineMs: 60_000 }, again.p);
  t.is(r2.exitCode, ExitCode.refused);
  t.regex(r2.reason, /1\.1\.0 failed on this node .*the witness does not answer.*not retried automatically/);
  t.deepEqual(r2.steps, ['fail']);
  t.is(createHash('sha256').update(readFileSync(node.slots.B)).digest('hex'), before, 'slot B untouched');
});

test.serial('suc-job command: asks its own agent over loopback with the admin token from the seed; refuses another node\'s job; bad durations exit 2', async (t) => {
  const { node, file } = await nodeWithBundle();
  const dir = tempDir();
  t.is((await cli('init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1', '--config-dir', dir)).code, 0);
  t.is((await cli('seed', '--cluster', join(dir, 'cluster.yaml'), '--node', 'node1', '--out', join(dir, 'seed'))).code, 0);
  const adminToken = readFileSync(join(dir, 'secrets/admin-token'), 'utf8').trim();
  const calls: { path?: string; auth?: string }[] = [];
  // The node's own agent, serving node1's certificate from init (it covers 127.0.0.1).
  const tls = (name: string): string => readFileSync(join(dir, 'secrets/tls', name), 'utf8');
  const server = createHttpsServer({ cert: tls('node1.crt'), key: tls('node1.key') }, (req, res) => {
    calls.push({ path: req.url, auth: req.headers.authorization });
    req.resume().on('end', () => {
      res.writeHead(409, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: false, reason: 'the peer does not answer: rebooting now would leave no node up', retryable: true, switchedOver: false }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const configFile = join(node.dir, 'agent-seeded.yaml');
  writeFileSync(configFile, stringify({ ...node.config, seedFile: join(dir, 'seed/geminik8s/seed.yaml'), listen: { ...node.config.listen, port } }));

  const out: string[] = [];
  const errors: string[] = [];
  const code = await upgradeCommand(['suc-job', file, '--poll', '200ms', '--deadline', '1s', '--config', configFile], (l) => out.push(l), (l) => errors.push(l));
  t.is(code, ExitCode.timeout, errors.join('\n'));
  t.true(calls.length >= 2, 'asked again while refused');
  t.deepEqual(calls[0], { path: '/v1/upgrade/reboot', auth: `Bearer ${adminToken}` });
  t.regex(errors.join('\n'), /suc-job node1: not yet: the peer does not answer/);
  t.regex(errors.join('\n'), /suc-job node1: failed: gave up after 1 s: the peer does not answer/);
  t.false(errors.join('\n').includes(adminToken), 'the token is never printed');

  process.env.SYSTEM_UPGRADE_NODE_NAME = 'node2';
  try {
    errors.length = 0;
    t.is(await upgradeCommand(['suc-job', file, '--config', configFile], () => undefined, (l) => errors.push(l)), ExitCode.refused);
    t.regex(errors.join('\n'), /SYSTEM_UPGRADE_NODE_NAME is node2, but this host is node1: the job would upgrade the wrong node/);
  } finally {
    delete process.env.SYSTEM_UPGRADE_NODE_NAME;
  }
  errors.length = 0;
  t.is(await upgradeCommand(['suc-job', file, '--poll', 'often', '--config', configFile], () => undefined, (l) => errors.push(l)), ExitCode.invalidInput);
  t.regex(errors.join('\n'), /--poll: expected a duration such as 10s or 55m, found "often"/);
  t.is(await upgradeCommand(['suc-job', '--config', configFile], () => undefined, (l) => errors.push(l)), ExitCode.invalidInput, 'no bundle: usage');
});
