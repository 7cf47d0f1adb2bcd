import test from 'ava';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

const INIT = ['init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1'];
const IMAGE = join(ROOT, 'images/edge-amd64.yaml');

async function cluster(): Promise<{ file: string; secrets: string[]; keys: Record<string, string> }> {
  const dir = tempDir();
  const r = await cli(...INIT, '--config-dir', dir);
  if (r.code !== 0) throw new Error(r.stderr);
  const secretsDir = join(dir, 'secrets');
  const tlsDir = join(secretsDir, 'tls');
  const keys = Object.fromEntries(readdirSync(tlsDir).filter((f) => f.endsWith('.key')).map((f) => [f.replace(/\.key$/, ''), readFileSync(join(tlsDir, f), 'utf8')]));
  return { file: join(dir, 'cluster.yaml'), secrets: readdirSync(secretsDir).filter((f) => f !== 'tls').map((f) => readFileSync(join(secretsDir, f), 'utf8').trim()), keys };
}

interface Row {
  scope: string;
  path: string;
  mode: string;
  bytes: number;
  secret: boolean;
}

test('render writes every file under --out/<scope>/ with its mode, lists it, and never prints a secret', async (t) => {
  const { file, secrets, keys } = await cluster();
  const out = join(tempDir(), 'render');
  const r = await cli('--log-level', 'debug', 'render', '--image', IMAGE, '--cluster', file, '--node', 'node2', '--out', out, '--json');
  t.is(r.code, 0, r.stderr);
  const listing = JSON.parse(r.stdout) as { node: string; files: Row[] };
  t.is(listing.node, 'node2');
  t.is(statSync(out).mode & 0o777, 0o700, '--out holds secrets');
  for (const row of listing.files) {
    const path = join(out, row.scope, row.path.replace(/^\/+/, ''));
    t.true(existsSync(path), path);
    t.is(`0${(statSync(path).mode & 0o777).toString(8)}`, row.mode, path);
    t.is(statSync(path).size, row.bytes, path);
  }
  const seed = listing.files.find((f) => f.path === 'geminik8s/seed.yaml')!;
  t.deepEqual([seed.scope, seed.mode, seed.secret], ['seed', '0600', true]);
  t.false(listing.files.some((f) => f.path.endsWith('.ipxe')), 'render writes no netboot script: pxe serve hands those out');
  t.true(secrets.length >= 4);
  for (const s of secrets) {
    t.false(r.stdout.includes(s) || r.stderr.includes(s), 'a secret reached the output');
    t.true(readFileSync(join(out, 'seed/geminik8s/seed.yaml'), 'utf8').includes(s), 'the seed carries every secret');
  }
  // Of the private keys, the seed carries node2's own and no other: never the CA's.
  t.deepEqual(Object.keys(keys).sort(), ['ca', 'node1', 'node2']);
  const seedDoc = parse(readFileSync(join(out, 'seed/geminik8s/seed.yaml'), 'utf8')) as { tls: { key: string; cert: string } };
  t.is(seedDoc.tls.key, keys.node2!);
  for (const [party, key] of Object.entries(keys)) {
    const body = key.split('\n')[1]!;
    t.false(r.stdout.includes(body) || r.stderr.includes(body), `${party}'s key reached the output`);
    if (party !== 'node2') t.false(JSON.stringify(seedDoc).includes(body), `the seed carries ${party}'s key`);
  }
  // No leftover temporary files: every file was renamed into place.
  const all = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? all(join(dir, e.name)) : [e.name]));
  t.deepEqual(all(out).filter((n) => n.includes('.tmp-')), []);
});

test('render --pxe-base-url, which rendered an iPXE script onto an installed slot A, is refused with the way that replaced it, and writes nothing', async (t) => {
  const { file } = await cluster();
  const out = join(tempDir(), 'render');
  const r = await cli('render', '--image', IMAGE, '--cluster', file, '--node', 'node1', '--out', out, '--pxe-base-url', 'http://10.0.2.2:8080/pxe');
  t.is(r.code, 2);
  t.regex(r.stderr, /--pxe-base-url is gone: build --output pxe and pxe serve/);
  t.false(existsSync(out));
});

test('render prints a table, refuses a non-empty --out without --force (exit 5), and overwrites with it', async (t) => {
  const { file } = await cluster();
  const out = tempDir();
  writeFileSync(join(out, 'keep'), 'x');
  const refused = await cli('render', '--image', IMAGE, '--cluster', file, '--node', 'node1', '--out', out);
  t.is(refused.code, 5);
  t.regex(refused.stderr, /is not empty; pass --force/);
  t.deepEqual(readdirSync(out), ['keep']);
  const r = await cli('render', '--image', IMAGE, '--cluster', file, '--node', 'node1', '--out', out, '--force');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^SCOPE\s+PATH\s+MODE\s+BYTES$/m);
  t.regex(r.stdout, /^seed\s+geminik8s\/seed\.yaml\s+0600\s+\d+\s+\(secret\)$/m);
  t.regex(r.stdout, /^image\s+\/etc\/systemd\/system\/k3s\.service\s+0644\s+\d+$/m);
});

test('render with bad input exits 2 and writes nothing', async (t) => {
  const { file } = await cluster();
  const base = tempDir();
  const unknownNode = await cli('render', '--image', IMAGE, '--cluster', file, '--node', 'node3', '--out', join(base, 'a'));
  t.is(unknownNode.code, 2);
  t.regex(unknownNode.stderr, /node3/);
  const badImage = join(base, 'bad.yaml');
  writeFileSync(badImage, readFileSync(IMAGE, 'utf8').replace('arch: amd64', 'arch: riscv64'));
  const invalid = await cli('render', '--image', badImage, '--cluster', file, '--node', 'node1', '--out', join(base, 'b'));
  t.is(invalid.code, 2);
  t.regex(invalid.stderr, /bad\.yaml:\d+:\d+.*arch/);
  writeFileSync(join(base, 'c'), 'a file');
  const notDir = await cli('render', '--image', IMAGE, '--cluster', file, '--node', 'node1', '--out', join(base, 'c'));
  t.is(notDir.code, 2);
  t.false(existsSync(join(base, 'a')) || existsSync(join(base, 'b')));
});
