import test from 'ava';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { makeSeedIso, seedIsoPlan, xorrisoCrashed } from '#common/install/seed-iso.ts';
import type { CommandPlan } from '#common/exec.ts';
import { labelledDevices, SEED_MEDIUM_LABEL } from '#common/install/media.ts';
import { parseSeedPayload } from '#agent/install.ts';
import { cli } from '#lab/cli.ts';
import { ROOT as ROOT_DIR, tempDir } from '../helpers/fixtures.ts';

const INIT = ['init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1'];

async function cluster(): Promise<string> {
  const dir = tempDir();
  const r = await cli(...INIT, '--config-dir', dir);
  if (r.code !== 0) throw new Error(r.stderr);
  return join(dir, 'cluster.yaml');
}

test('seed --out writes NoCloud files and the private node seed (0700/0600)', async (t) => {
  const file = await cluster();
  const out = join(tempDir(), 'seed');
  const r = await cli('seed', '--cluster', file, '--node', 'node2', '--out', out);
  t.is(r.code, 0, r.stderr);
  t.is(statSync(out).mode & 0o777, 0o700);
  t.is(statSync(join(out, 'geminik8s/seed.yaml')).mode & 0o777, 0o600);
  t.regex(readFileSync(join(out, 'meta-data'), 'utf8'), /local-hostname: node2/);
  t.regex(readFileSync(join(out, 'network-config'), 'utf8'), /192\.168\.10\.12\/24/);
  const v = await cli('validate', join(out, 'geminik8s/seed.yaml'));
  t.is(v.code, 0, v.stderr);
  t.false(readFileSync(join(out, 'user-data'), 'utf8').includes(readFileSync(join(file, '../secrets/k3s-token'), 'utf8').trim()));
  const again = await cli('seed', '--cluster', file, '--node', 'node2', '--out', out);
  t.is(again.code, 5);
  t.is((await cli('seed', '--cluster', file, '--node', 'node2', '--out', out, '--force')).code, 0);
});

test('seed --format iso makes a cidata ISO (0600) that holds the seed files', async (t) => {
  const file = await cluster();
  const iso = join(tempDir(), 'node1-seed.iso');
  const r = await cli('seed', '--cluster', file, '--node', 'node1', '--out', iso, '--format', 'iso');
  t.is(r.code, 0, r.stderr);
  t.is(statSync(iso).mode & 0o777, 0o600);
  const info = await runPlan({ cmd: 'xorriso', args: ['-indev', iso, '-pvd_info'] });
  t.regex(info.stdout + info.stderr, /Volume Id\s*:\s*cidata/);
  const list = await runPlan({ cmd: 'xorriso', args: ['-indev', iso, '-find', '/', '-type', 'f'] });
  for (const f of ['/user-data', '/meta-data', '/network-config', '/geminik8s/seed.yaml']) t.true(list.stdout.includes(`'${f}'`), f);
  const out = tempDir();
  await runPlan({ cmd: 'xorriso', args: ['-osirrox', 'on', '-indev', iso, '-extract', '/meta-data', join(out, 'meta-data')] });
  t.regex(readFileSync(join(out, 'meta-data'), 'utf8'), /local-hostname: node1/);
});

test('seed --format medium makes a FAT image labelled GKSEED (0600) whose geminik8s/seed.json the installer reads; the same seed makes the same bytes', async (t) => {
  const file = await cluster();
  const dir = tempDir();
  const img = join(dir, 'seed.img');
  const r = await cli('seed', '--cluster', file, '--node', 'node2', '--out', img, '--format', 'medium');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /node2 has no install\.disk rules/, 'init writes no disk rules: the installer would need them on its command line');
  t.is(statSync(img).mode & 0o777, 0o600, 'it carries secrets');
  const probed = (await runPlan({ cmd: 'blkid', args: ['-c', '/dev/null', '-o', 'export', img] })).stdout;
  t.deepEqual(labelledDevices(probed.replace(/^DEVNAME=.*$/m, 'DEVNAME=/dev/sdz'), 'gkseed'), [{ device: '/dev/sdz', type: 'vfat' }]);
  const json = (await runPlan({ cmd: 'mtype', args: ['-i', img, '::/geminik8s/seed.json'], env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
  const payload = parseSeedPayload('seed.json', JSON.parse(json));
  t.is(payload.node, 'node2');
  t.true(payload.files.some((f) => f.path === 'geminik8s/seed.yaml'));
  t.deepEqual(readdirSync(dir), ['seed.img'], 'no temporary file is left');
  t.is((await cli('seed', '--cluster', file, '--node', 'node2', '--out', img, '--format', 'medium')).code, 5, 'an existing output is kept without --force');
  const epoch = process.env.SOURCE_DATE_EPOCH;
  process.env.SOURCE_DATE_EPOCH = '1700000000';
  try {
    const again = join(dir, 'again.img');
    t.is((await cli('seed', '--cluster', file, '--node', 'node2', '--out', img, '--format', 'medium', '--force')).code, 0);
    t.is((await cli('seed', '--cluster', file, '--node', 'node2', '--out', again, '--format', 'medium')).code, 0);
    t.true(readFileSync(img).equals(readFileSync(again)));
  } finally {
    if (epoch === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = epoch;
  }
});

test('labelledDevices finds every filesystem with the label, in any case, from blkid -o export', (t) => {
  const out = 'DEVNAME=/dev/sda1\nLABEL=CONFIG\nTYPE=vfat\n\nDEVNAME=/dev/sdb\nLABEL=gkseed\nUUID=1234-ABCD\nTYPE=vfat\n\nDEVNAME=/dev/sr0\nLABEL=GKSEED\nTYPE=iso9660\n\nDEVNAME=/dev/sdc1\nTYPE=ext4\n';
  t.deepEqual(labelledDevices(out, SEED_MEDIUM_LABEL), [{ device: '/dev/sdb', type: 'vfat' }, { device: '/dev/sr0', type: 'iso9660' }]);
  t.deepEqual(labelledDevices('', SEED_MEDIUM_LABEL), []);
});

test('seed for an unknown node exits 2 naming the nodes', async (t) => {
  const file = await cluster();
  const r = await cli('seed', '--cluster', file, '--node', 'node3', '--out', join(tempDir(), 'x'));
  t.is(r.code, 2);
  t.regex(r.stderr, /no node named "node3"; the cluster has "node1" and "node2"/);
  t.false(existsSync(join(tempDir(), 'x')));
});

test('the seed ISO plan pins dates under SOURCE_DATE_EPOCH', (t) => {
  t.snapshot(seedIsoPlan('/tmp/seed', '/tmp/out.iso', '1700000000'));
  t.false(seedIsoPlan('/tmp/seed', '/tmp/out.iso').args.some((a) => a.startsWith('--modification-date')));
});

test('a seed ISO is made again once after xorriso crashed, never after it refused its input', async (t) => {
  const dir = tempDir();
  // A stand-in for xorriso that crashes as xorriso reports it on its first run, then writes the ISO.
  const crashOnce = (_src: string, output: string): CommandPlan => ({
    cmd: 'bash',
    args: ['-c', `if [ ! -e "$0.ran" ]; then : > "$0.ran"; printf 'UNIX-SIGNAL:  SIGSEGV  errno= 0\nxorriso : ABORT : Trying to shut down drive and library\n' >&2; exit 1; fi; echo iso > "$0"`, output],
  });
  await makeSeedIso(dir, join(dir, 'a.iso'), undefined, crashOnce);
  t.is(readFileSync(join(dir, 'a.iso'), 'utf8'), 'iso\n');
  const refuses = (): CommandPlan => ({ cmd: 'bash', args: ['-c', `echo run >> "$0"; echo 'xorriso : FAILURE : Cannot determine attributes of source file' >&2; exit 1`, join(dir, 'runs')] });
  await t.throwsAsync(makeSeedIso(dir, join(dir, 'b.iso'), undefined, refuses), { message: /Cannot determine attributes/ });
  t.is(readFileSync(join(dir, 'runs'), 'utf8'), 'run\n');
  t.false(xorrisoCrashed(new Error('UNIX-SIGNAL: SIGSEGV')));
});

test('seed --into writes the seed onto the config partition of a copy of a raw image (mtools, 0600), the original untouched', async (t) => {
  const { planDisk, layoutSeed, partition, sfdiskScript } = await import('#builder/disk/layout.ts');
  const { vfatPlan, sfdiskPlan } = await import('#builder/disk/plans.ts');
  const { writeAt } = await import('#builder/disk/steps.ts');
  const { loadImageDef } = await import('../helpers/fixtures.ts');
  const { createHash } = await import('node:crypto');
  const image = await loadImageDef('test-amd64.yaml');
  const small = { ...image, partitions: { esp: 33 * 1024 ** 2, config: 4 * 1024 ** 2, root: 4 * 1024 ** 2, persistent: 4 * 1024 ** 2 } };
  const layout = planDisk(small, layoutSeed(small, 1));
  const dir = tempDir();
  const raw = join(dir, 'generic.raw');
  await runPlan({ cmd: 'truncate', args: ['-s', String(layout.size), raw] });
  await runPlan(sfdiskPlan(raw, sfdiskScript(layout)));
  const config = join(dir, 'config.img');
  await runPlan(vfatPlan({ output: config, part: partition(layout, 'config'), fat32: false }));
  await writeAt(raw, config, partition(layout, 'config').offset);
  const before = createHash('sha256').update(readFileSync(raw)).digest('hex');

  const file = await cluster();
  const out = join(dir, 'node1.raw');
  const r = await cli('seed', '--cluster', file, '--node', 'node1', '--into', raw, '--out', out);
  t.is(r.code, 0, r.stderr);
  t.is(statSync(out).mode & 0o777, 0o600);
  t.is(createHash('sha256').update(readFileSync(raw)).digest('hex'), before, 'the generic image is not modified');
  const at = `${out}@@${partition(layout, 'config').offset}`;
  const seed = (await runPlan({ cmd: 'mtype', args: ['-i', at, '::geminik8s/seed.yaml'] })).stdout;
  t.regex(seed, /node: node1/);
  t.regex((await runPlan({ cmd: 'mtype', args: ['-i', at, '::meta-data'] })).stdout, /local-hostname: node1/);
  t.is((await cli('seed', '--cluster', file, '--node', 'node1', '--into', raw, '--out', out)).code, 5, 'an existing output is refused');
  const qcow2 = join(dir, 'generic.qcow2');
  await runPlan({ cmd: 'qemu-img', args: ['convert', '-O', 'qcow2', raw, qcow2] });
  const q = await cli('seed', '--cluster', file, '--node', 'node1', '--into', qcow2, '--out', join(dir, 'x.raw'));
  t.is(q.code, 2);
  t.regex(q.stderr, /qcow2 image; give the \.raw image/);
  const notDisk = join(dir, 'notdisk.raw');
  await runPlan({ cmd: 'truncate', args: ['-s', '1M', notDisk] });
  t.is((await cli('seed', '--cluster', file, '--node', 'node1', '--into', notDisk, '--out', join(dir, 'y.raw'))).code, 2);
  t.false(existsSync(join(dir, 'y.raw')));
});

test('durations survive the seed: rendered in ms with their unit, parsed back to the same ms, again after firstboot re-writes it', async (t) => {
  const { loadCluster } = await import('#common/config.ts');
  const { parseSeed } = await import('#common/config.ts');
  const { renderSeedFiles } = await import('#builder/render/index.ts');
  const { seedDocument } = await import('#common/schema/seed.ts');
  const { stringify } = await import('yaml');
  const { FAKE_SECRETS, fakeTls } = await import('../helpers/fixtures.ts');
  const { writeFileSync } = await import('node:fs');
  const file = join(tempDir(), 'cluster.yaml');
  const text = readFileSync(join(ROOT_DIR, 'test/fixtures/cluster.yaml'), 'utf8').replace('postgresql:', 'failover:\n  checkInterval: 3s\n  checkTimeout: 5s\n  fenceAfter: 20s\n  promoteAfter: 30s\n  degradeAfter: 20s\npostgresql:');
  writeFileSync(file, text);
  const cluster = await loadCluster(file);
  t.deepEqual(cluster.failover, { checkInterval: 3000, checkTimeout: 5000, fenceAfter: 20000, promoteAfter: 30000, degradeAfter: 20000 });
  const seedText = renderSeedFiles(cluster, 'node1', FAKE_SECRETS, fakeTls('node1')).find((f) => f.path === 'geminik8s/seed.yaml')!.content;
  t.regex(seedText, /checkInterval: 3000ms/);
  const first = parseSeed('seed.yaml', seedText);
  t.deepEqual(first.issues, []);
  t.deepEqual(first.seed!.cluster.failover, cluster.failover);
  const again = parseSeed('seed.yaml', stringify(seedDocument(first.seed!), { version: '1.1' }));
  t.deepEqual(again.seed!.cluster.failover, cluster.failover, 'a re-written seed keeps its timings');
  t.deepEqual(again.seed!.tls, fakeTls('node1'), 'and its TLS material, byte for byte');
  // A seed without TLS material, or with another node's, is refused with what to do.
  const { tls: _tls, ...bare } = first.seed!;
  const without = parseSeed('seed.yaml', stringify(seedDocument(bare), { version: '1.1' }));
  t.regex(without.issues.map((i) => `${i.path}: ${i.message}`).join('\n'), /^tls: the node needs its TLS material .*geminik8s seed/m);
  const other = parseSeed('seed.yaml', stringify(seedDocument({ ...first.seed!, tls: fakeTls('node2') }), { version: '1.1' }));
  t.regex(other.issues.map((i) => `${i.path}: ${i.message}`).join('\n'), /^tls\.cert: does not fit this node: the certificate names node2 of cluster site-a, not node1/m);
  // A seed from before TLS (agent.tls: false, no tls) runs as development plaintext; agent.tls: true does not parse into one.
  const legacyDoc = seedDocument(bare) as { cluster: { agent: Record<string, unknown>; witness: Record<string, unknown> } };
  legacyDoc.cluster.agent = { port: 7443, tls: false };
  legacyDoc.cluster.witness = { type: 'lease', url: 'http://192.168.10.5:7444' };
  const legacy = parseSeed('seed.yaml', stringify(legacyDoc, { version: '1.1' }));
  t.deepEqual(legacy.issues, []);
  t.deepEqual(legacy.seed!.cluster.agent, { port: 7443, insecurePlaintext: true });
  legacyDoc.cluster.agent = { port: 7443, tls: true };
  t.regex(parseSeed('seed.yaml', stringify(legacyDoc, { version: '1.1' })).issues.map((i) => `${i.path}: ${i.message}`).join('\n'), /^cluster\.agent\.tls: agent\.tls is gone/m);
  // TLS material in a plaintext cluster's seed is refused.
  const mixed = seedDocument({ ...first.seed!, cluster: { ...first.seed!.cluster, agent: { port: 7443, insecurePlaintext: true } } });
  t.regex(parseSeed('seed.yaml', stringify(mixed, { version: '1.1' })).issues.map((i) => `${i.path}: ${i.message}`).join('\n'), /^tls: must be absent when cluster\.agent\.insecurePlaintext is true/m);
});
