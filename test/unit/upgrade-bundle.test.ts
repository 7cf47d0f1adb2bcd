import test from 'ava';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { bless } from '#agent/bootslot.ts';
import { envValues, readEnvFile } from '#agent/grubenv.ts';
import { noteTrialFailure, readUpgradeRecord, stageUpgrade, upgradeStatus } from '#agent/upgrade.ts';
import { upgradeCommand } from '#agent/upgradecli.ts';
import { writeBundle, type BundleInput } from '#builder/upgrade/write.ts';
import { renderGrubCfg } from '#builder/render/grub.ts';
import { ExitCode } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { encodePublicKey, generateKeyPair, keyIdHex, parsePublicKey, type MinisignSecretKey } from '#common/minisign.ts';
import { loadSignKey, parseOutputs } from '#builder/cli/commands/build.ts';
import { readTrustedKeys, trustedKeyIds } from '#builder/rootfs/steps.ts';
import { cli } from '#lab/cli.ts';
import { AgentConfigSchema, bootSettings, upgradeSettings } from '#common/schema/agent.ts';
import { compareVersions, parseVersion, rangeError, satisfies } from '#common/semver.ts';
import { indexTar, readBundle, ustarHeader } from '#common/upgrade/bundle.ts';
import { loadImageDef, ROOT, tempDir } from '../helpers/fixtures.ts';
import { bundle, fakeNode, grubenv, MiB, parts, trust } from '../helpers/upgrade-node.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('semver: precedence as semver.org orders it, and the range language', (t) => {
  const order = ['1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1', '1.0.0', '1.0.1', '1.1.0', '2.0.0'];
  for (let i = 0; i + 1 < order.length; i++) {
    t.is(compareVersions(parseVersion(order[i]!)!, parseVersion(order[i + 1]!)!), -1, `${order[i]} < ${order[i + 1]}`);
    t.is(compareVersions(parseVersion(order[i + 1]!)!, parseVersion(order[i]!)!), 1);
  }
  t.is(compareVersions(parseVersion('1.0.0+build.1')!, parseVersion('1.0.0')!), 0);
  t.is(parseVersion('1.0'), undefined);
  t.true(satisfies('1.4.2', '>=1.0.0 <2.0.0'));
  t.false(satisfies('2.0.0', '>=1.0.0 <2.0.0'));
  t.true(satisfies('0.3.0', '*'));
  t.true(satisfies('1.2.3', '1.2.3'));
  t.false(satisfies('1.2.4', '=1.2.3'));
  t.false(satisfies('1.2.3-rc.1', '>=1.2.3'));
  t.regex(rangeError('>=1.0 <2') ?? '', /">=1\.0" is not a comparator/);
  t.false(satisfies('1.0.0', '>=1.0'));
});

/** Everything staging may write, to prove a refusal wrote nothing. */
function snapshot(node: ReturnType<typeof fakeNode>): Record<string, string> {
  const files = [node.slots.A, node.slots.B, join(node.esp, 'grub/grubenv'), join(node.esp, 'slot-a/vmlinuz'), join(node.esp, 'slot-b/vmlinuz'), join(node.esp, 'slot-b/initrd.img'), node.upgrade.recordFile, join(node.config.stateDir, 'boot.json')];
  return Object.fromEntries(files.map((f) => [f, existsSync(f) ? sha(readFileSync(f)) : 'absent']));
}

test('the bundle is a tar GNU tar reads, manifest first, and its signature member passes minisign -V', async (t) => {
  const dir = tempDir('gk-bundle-');
  const key = generateKeyPair();
  const file = await bundle(dir, key);
  const listed = await runPlan({ cmd: 'tar', args: ['-tvf', file] });
  t.deepEqual(listed.stdout.trim().split('\n').map((l) => l.split(/\s+/).pop()), ['manifest.json', 'manifest.json.minisig', 'vmlinuz', 'initrd.img', 'root.img']);
  const out = join(dir, 'x');
  mkdirSync(out);
  await runPlan({ cmd: 'tar', args: ['-xf', file, '-C', out] });
  t.true(readFileSync(join(out, 'root.img')).equals(readFileSync(join(dir, 'root.img'))));
  writeFileSync(join(dir, 'key.pub'), encodePublicKey(key));
  const v = await runPlan({ cmd: 'minisign', args: ['-Vm', join(out, 'manifest.json'), '-x', join(out, 'manifest.json.minisig'), '-p', join(dir, 'key.pub')] }, { allowFailure: true });
  t.is(v.exitCode, 0, v.stderr);
  t.regex(v.stdout, /geminik8s:edge-1\.1\.0-amd64/);
  const { manifest } = await readBundle(file);
  t.is(manifest.parts.find((p) => p.name === 'root.img')!.sha256, sha(readFileSync(join(dir, 'root.img'))));
  t.deepEqual((await indexTar(file)).map((m) => m.name), ['manifest.json', 'manifest.json.minisig', 'vmlinuz', 'initrd.img', 'root.img']);
  // Our header is ustar as GNU tar writes it: same checksum rules, so tar accepted it above.
  t.is(ustarHeader('a', 1, 0).toString('latin1', 257, 262), 'ustar');
});

test('staging writes the passive slot, its kernel and initrd on the ESP, then arms a try; the active slot is untouched', async (t) => {
  const node = fakeNode();
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  const file = await bundle(node.dir, key);
  const before = snapshot(node);
  const lines: string[] = [];
  const r = await stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot, progress: (l) => lines.push(l) });
  t.is(r.slot, 'B');
  t.is(r.from, 'A');
  const root = readFileSync(join(node.dir, 'root.img'));
  const slotB = readFileSync(node.slots.B);
  t.true(slotB.subarray(0, root.length).equals(root));
  t.is(sha(readFileSync(node.slots.A)), before[node.slots.A]!);
  t.true(readFileSync(join(node.esp, 'slot-b/vmlinuz')).equals(readFileSync(join(node.dir, 'vmlinuz'))));
  t.true(readFileSync(join(node.esp, 'slot-b/initrd.img')).equals(readFileSync(join(node.dir, 'initrd.img'))));
  t.is(readFileSync(join(node.esp, 'slot-a/vmlinuz'), 'utf8'), 'kernel A');
  t.false(existsSync(join(node.esp, 'slot-b/vmlinuz.new')));
  const env = envValues(await readEnvFile(join(node.esp, 'grub/grubenv')));
  t.like(env, { active_slot: 'A', try_slot: 'B', try_count: '3' });
  const record = await readUpgradeRecord(node.upgrade.recordFile);
  t.like(record.current, { version: '1.1.0', slot: 'B', state: 'armed' });
  t.truthy(record.current?.armedAt);
  t.true(lines.some((l) => l.includes('writing root.img')));
});

test('refused bundles write nothing: unsigned, untrusted key, tampered part, tampered manifest, other arch, image, version, PostgreSQL major or slot file system, too big', async (t) => {
  const node = fakeNode({ slotBytes: 4 * MiB });
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  const dir = join(node.dir, 'bundles');
  mkdirSync(dir);
  const cases: [string, () => Promise<string>, RegExp][] = [
    ['unsigned', () => bundle(dir, undefined, {}, 'unsigned.tar'), /unsigned/],
    ['untrusted key', () => bundle(dir, generateKeyPair(), {}, 'other-key.tar'), /not trusted/],
    ['other arch', () => bundle(dir, key, { arch: 'arm64' }, 'arm64.tar'), /for arm64; this node is amd64/],
    ['other image', () => bundle(dir, key, { image: 'other' }, 'image.tar'), /image other; this node runs image edge/],
    ['not from this version', () => bundle(dir, key, { upgradableFrom: ['>=1.0.1'] }, 'from.tar'), /upgrades from >=1\.0\.1; this node runs 1\.0\.0/],
    ['PostgreSQL major', () => bundle(dir, key, { postgresqlMajor: 18 }, 'pg.tar'), /PostgreSQL 18; this node's data is PostgreSQL 17/],
    ['other slot file system', () => bundle(dir, key, { rootfsType: 'erofs' }, 'erofs.tar'), /slot is erofs; this node's GRUB mounts its slots as squashfs .*needs a re-flash/],
    ['too big', async () => bundle(dir, key, { parts: parts(dir, 5 * MiB) }, 'big.tar'), /root\.img is \d+ bytes; slot B .* holds 4194304/],
    ['tampered part', async () => {
      const f = await bundle(dir, key, {}, 'tampered.tar');
      const buf = readFileSync(f);
      const root = (await indexTar(f)).find((m) => m.name === 'root.img')!;
      buf[root.offset + 1000]! ^= 1;
      writeFileSync(f, buf);
      return f;
    }, /root\.img does not match its sha256/],
    ['tampered manifest', async () => {
      const f = await bundle(dir, key, {}, 'manifest.tar');
      const buf = readFileSync(f);
      const text = buf.toString('latin1');
      const at = text.indexOf('"version": "1.1.0"');
      buf.write('"version": "1.1.9"', at, 'latin1');
      // Keep the tar header's checksum valid: only the content changed, so the tar still reads.
      writeFileSync(f, buf);
      return f;
    }, /does not match the data/],
  ];
  for (const [what, make, re] of cases) {
    const file = await make();
    const before = snapshot(node);
    const err = await t.throwsAsync(stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot }), undefined, what);
    t.regex(err?.message ?? '', re, what);
    t.is((err as { exitCode?: number }).exitCode, ExitCode.refused, what);
    t.deepEqual(snapshot(node), before, `${what}: nothing written`);
  }
  // The CLI says the same with exit code 5.
  const errors: string[] = [];
  const code = await upgradeCommand(['stage', join(dir, 'unsigned.tar'), '--config', node.configFile], () => undefined, (l) => errors.push(l));
  t.is(code, ExitCode.refused);
  t.regex(errors.join('\n'), /upgrade refused: .*unsigned/);
});

test('a try that falls back is recorded with the gate\'s reason and not staged again unless asked; a good bundle afterwards is blessed', async (t) => {
  const node = fakeNode();
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  const bad = await bundle(node.dir, key, {}, 'v1.1.0.tar');
  await stageUpgrade({ bundle: bad, upgrade: node.upgrade, boot: node.boot });

  // Reboot into B (GRUB counts down), a trying boot: staging is refused while it is unblessed.
  const reboot = async (slot: 'A' | 'B', ...env: string[]): Promise<void> => {
    writeFileSync(join(node.dir, 'cmdline'), `BOOT_IMAGE=/slot-${slot.toLowerCase()}/vmlinuz geminik8s.slot=${slot}\n`);
    writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
    if (env.length) await grubenv(node, ...env);
  };
  await reboot('B', 'try_count=2');
  await t.throwsAsync(stageUpgrade({ bundle: bad, upgrade: node.upgrade, boot: node.boot }), { message: /this boot is a try of slot B/ });
  await noteTrialFailure(node.upgrade.recordFile, 'B', 'the health gate did not pass within 15 min: replication is not synchronous');
  // GRUB spends the tries and boots A.
  await reboot('A', 'try_slot=', 'try_count=0');
  const status = await upgradeStatus(node.upgrade, node.boot);
  t.is(status.boot.state, 'fell-back');
  t.like(status.record.current, { state: 'fell-back', version: '1.1.0', reason: 'the health gate did not pass within 15 min: replication is not synchronous' });
  t.is(status.record.failed.length, 1);
  const lines: string[] = [];
  t.is(await upgradeCommand(['status', '--config', node.configFile], (l) => lines.push(l)), 0);
  t.regex(lines.join('\n'), /fell-back .*replication is not synchronous/);

  await t.throwsAsync(stageUpgrade({ bundle: bad, upgrade: node.upgrade, boot: node.boot }), { message: /failed on this node .* not retried automatically/ });
  // A different good bundle stages, boots and is blessed: the old failure does not make it fall back.
  const good = await bundle(node.dir, key, { version: '1.1.1' }, 'v1.1.1.tar');
  await stageUpgrade({ bundle: good, upgrade: node.upgrade, boot: node.boot });
  await reboot('B', 'try_count=2');
  t.true((await bless(node.boot)).changed);
  const after = await upgradeStatus(node.upgrade, node.boot);
  t.like(after.record.current, { state: 'blessed', version: '1.1.1', slot: 'B' });
  t.is(after.boot.state, 'steady');
  // The operator may retry the failed one explicitly (from B it goes to A).
  const retried = await stageUpgrade({ bundle: bad, upgrade: { ...node.upgrade, imageManifest: join(node.dir, 'manifest.json') }, boot: node.boot, retryFailed: true }).catch((e: Error) => e);
  // The running image says 1.0.0 still (the fake manifest), so 1.1.0 is in range; it goes to slot A.
  t.false(retried instanceof Error, String(retried));
  t.is((retried as { slot: string }).slot, 'A');
});

test('a try armed earlier in this boot is withdrawn before its slot is rewritten', async (t) => {
  const node = fakeNode();
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  await stageUpgrade({ bundle: await bundle(node.dir, key, {}, 'one.tar'), upgrade: node.upgrade, boot: node.boot });
  // Staging again in the same boot: a crash while writing must not leave slot B armed.
  const lines: string[] = [];
  await stageUpgrade({ bundle: await bundle(node.dir, key, { version: '1.1.1' }, 'two.tar'), upgrade: node.upgrade, boot: node.boot, progress: (l) => lines.push(l) });
  t.true(lines.some((l) => l.startsWith('withdrawing the try of slot B')));
  t.like(envValues(await readEnvFile(join(node.esp, 'grub/grubenv'))), { try_slot: 'B', try_count: '3' });
  t.like((await readUpgradeRecord(node.upgrade.recordFile)).current, { version: '1.1.1', state: 'armed' });

  // An ESP whose grub.cfg counts down from 2 gets 2 tries, not the agent's 3 (a single boot).
  writeFileSync(join(node.esp, 'grub/grub.cfg'), renderGrubCfg(await loadImageDef('test-amd64.yaml')));
  await stageUpgrade({ bundle: await bundle(node.dir, key, { version: '1.1.2' }, 'three.tar'), upgrade: node.upgrade, boot: node.boot });
  t.like(envValues(await readEnvFile(join(node.esp, 'grub/grubenv'))), { try_slot: 'B', try_count: '2' });
});

test('keygen writes a 0600 secret key and a public key, refuses to overwrite them, encrypts with a password file; bundle inspect checks the signature', async (t) => {
  const dir = tempDir('gk-keygen-');
  const prefix = join(dir, 'release');
  const r = await cli('keygen', '--out', prefix, '--json');
  t.is(r.code, 0, r.stderr);
  const made = JSON.parse(r.stdout) as { keyId: string; encrypted: boolean };
  t.regex(made.keyId, /^[0-9A-F]{16}$/);
  t.false(made.encrypted);
  t.is(statSync(`${prefix}.key`).mode & 0o777, 0o600);
  t.is(statSync(`${prefix}.pub`).mode & 0o777, 0o644);
  t.is(parsePublicKey(readFileSync(`${prefix}.pub`, 'utf8'), 'pub').keyId.length, 8);
  const again = await cli('keygen', '--out', prefix);
  t.is(again.code, ExitCode.refused);
  t.regex(again.stderr, /release\.key exists/);
  // The key signs a bundle minisign's format; inspect verifies it and names the wrong key.
  const file = await bundle(dir, await loadSignKey(`${prefix}.key`));
  const good = await cli('bundle', 'inspect', file, '--trusted-key', `${prefix}.pub`);
  t.is(good.code, 0, good.stderr);
  t.regex(good.stdout, new RegExp(`signature: good, key ${made.keyId}`));
  await cli('keygen', '--out', join(dir, 'other'));
  const bad = await cli('bundle', 'inspect', file, '--trusted-key', join(dir, 'other.pub'));
  t.is(bad.code, ExitCode.refused);
  t.regex(bad.stderr, new RegExp(`signed with key ${made.keyId}, which is not trusted`));

  writeFileSync(join(dir, 'pw'), 'correct horse\n');
  t.is((await cli('keygen', '--out', join(dir, 'enc'), '--password-file', join(dir, 'pw'))).code, 0);
  await t.throwsAsync(loadSignKey(join(dir, 'enc.key')), { message: /encrypted: give its password with --sign-password-file/ });
  t.deepEqual((await loadSignKey(join(dir, 'enc.key'), join(dir, 'pw'))).publicKey, parsePublicKey(readFileSync(join(dir, 'enc.pub'), 'utf8'), 'p').publicKey);
});

test('build options and the image\'s trusted keys: errors name the option, or the image file and field', async (t) => {
  t.deepEqual(parseOutputs('raw,upgrade,raw'), ['raw', 'upgrade']);
  t.throws(() => parseOutputs('raw,vmdk'), { message: /--output: unknown format "vmdk"; expected a comma-separated list of raw, qcow2, raw\.zst, upgrade, oci, pxe, iso/ });
  const dir = tempDir('gk-trust-');
  const key = generateKeyPair();
  writeFileSync(join(dir, 'good.pub'), encodePublicKey(key));
  writeFileSync(join(dir, 'bad.pub'), 'untrusted comment: x\nnot a key\n');
  const image = await loadImageDef('test-amd64.yaml');
  const imageFile = join(dir, 'image.yaml');
  t.deepEqual(await trustedKeyIds({ ...image, upgrade: { trustedKeys: ['good.pub'] } }, imageFile), [keyIdHex(key.keyId)]);
  await t.throwsAsync(readTrustedKeys({ ...image, upgrade: { trustedKeys: ['good.pub', 'bad.pub'] } }, imageFile), { message: /image\.yaml: upgrade\.trustedKeys\.1: .*bad\.pub: line 2: not base64/ });
  await t.throwsAsync(readTrustedKeys({ ...image, upgrade: { trustedKeys: ['missing.pub'] } }, imageFile), { message: /upgrade\.trustedKeys\.0: cannot read .*missing\.pub/ });
  // A range the schema cannot read is reported with its path.
  writeFileSync(imageFile, readFileSync(join(ROOT, 'images/test-amd64.yaml'), 'utf8') + 'upgrade:\n  from: [">=1.0"]\n');
  const v = await cli('validate', imageFile);
  t.is(v.code, ExitCode.invalidInput);
  t.regex(v.stderr, /upgrade\.from\.0: ">=1\.0" is not a comparator/);
});

test('a restart while the slot is written leaves the old slot booting, and the record says the write was interrupted', async (t) => {
  const node = fakeNode();
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  const file = await bundle(node.dir, key);
  // A missing slot device is refused before anything is written.
  const missing = await t.throwsAsync(stageUpgrade({ bundle: file, upgrade: { ...node.upgrade, slotDevices: { A: node.slots.A, B: join(node.dir, 'no-such-device') } }, boot: node.boot }));
  t.regex(missing?.message ?? '', /cannot read slot B's device/);
  t.is((await readUpgradeRecord(node.upgrade.recordFile)).current, null);
  // The record as a power cut during the write leaves it: writing, in this boot.
  await stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot });
  const done = await readUpgradeRecord(node.upgrade.recordFile);
  t.is(done.current?.bootId, readFileSync(join(node.dir, 'boot_id'), 'utf8').trim());
  writeFileSync(node.upgrade.recordFile, JSON.stringify({ ...done, current: { ...done.current, state: 'writing', armedAt: undefined } }));
  await grubenv(node, 'try_slot=', 'try_count=0');
  t.is((await upgradeStatus(node.upgrade, node.boot)).record.current?.state, 'writing', 'still writing in the same boot');
  writeFileSync(join(node.dir, 'boot_id'), `${randomUUID()}\n`);
  const after = await upgradeStatus(node.upgrade, node.boot);
  t.like(after.record.current, { state: 'interrupted', slot: 'B' });
  t.regex(after.record.current?.reason ?? '', /restarted while slot B was being written; the slot was never armed/);
  t.is(after.boot.state, 'steady');
  t.is(after.boot.trySlot, undefined);
  t.deepEqual(after.slots, { A: '1.0.0', B: null });
  // Staging again works.
  t.is((await stageUpgrade({ bundle: file, upgrade: node.upgrade, boot: node.boot })).slot, 'B');
});
