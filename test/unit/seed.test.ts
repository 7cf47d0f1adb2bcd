import test from 'ava';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '../../common/exec.ts';
import { seedIsoPlan } from '../../builder/src/seed/iso.ts';
import { cli } from '../helpers/cli.ts';
import { tempDir } from '../helpers/fixtures.ts';

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
