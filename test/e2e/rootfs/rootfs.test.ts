import test from 'ava';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { cli } from '#lab/cli.ts';
import { assertNodeRoot } from '../../helpers/node-root.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { seedTestImage } from '#lab/test-image.ts';

// Builds the offline test image's root (Kubernetes layer off) from Debian with mmdebstrap.
// The apt cache under ~/.cache/geminik8s makes a rebuild fast; a cold build downloads ~300 MB.
let out: string;
let root: string;
let buildSeconds = 0;

let buildLog = '';

test.before(async () => {
  out = tempDir('gk-e2e-rootfs-');
  const started = Date.now();
  const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'rootfs', '--out', out);
  buildSeconds = (Date.now() - started) / 1000;
  if (r.code !== 0) throw new Error(`build failed (${r.code}): ${r.stderr.slice(-3000)}`);
  buildLog = r.stderr;
  root = join(out, 'root');
  mkdirSync(root);
  await runPlan({ cmd: 'tar', args: ['--xattrs', '--xattrs-include=*', '-xf', join(out, 'test-0.1.0-amd64.rootfs.tar'), '-C', root, '--numeric-owner'] });
});

// Last: the suites after this one (boot, cluster, upgrade…) boot the image of this very root,
// so only its disk stage is built for them instead of the whole image again (about 3 minutes).
test.after('the root goes into the test image cache', async () => {
  await seedTestImage('test-amd64.yaml', join(out, 'test-0.1.0-amd64.rootfs.tar'), join(out, 'test-0.1.0-amd64.manifest.json'), console.log);
});

test('the root tar and its manifest are written under their final names, nothing temporary left', (t) => {
  t.log(`rootfs build: ${buildSeconds.toFixed(0)} s, ${(statSync(join(out, 'test-0.1.0-amd64.rootfs.tar')).size / 1048576).toFixed(0)} MiB`);
  const names = readdirSync(out).filter((n) => n !== 'root').sort();
  t.deepEqual(names, ['test-0.1.0-amd64.manifest.json', 'test-0.1.0-amd64.rootfs.tar']);
  const manifest = JSON.parse(readFileSync(join(out, 'test-0.1.0-amd64.manifest.json'), 'utf8'));
  t.like(manifest, { image: 'test', version: '0.1.0', arch: 'amd64', kubernetes: false, base: 'debian/trixie' });
  t.is(manifest.components.postgresql.major, 17);
});

test('a node root: files, units, users, PostgreSQL, the agent runs inside it, no secret or identity; no apt lists, manuals or cached packages', async (t) => {
  await assertNodeRoot(t, root);
  t.deepEqual(readdirSync(join(root, 'var/lib/apt/lists')).filter((n) => n !== 'partial' && n !== 'lock' && n !== 'auxfiles'), [], 'no apt lists');
  t.false(existsSync(join(root, 'usr/share/man/man1')), 'no manual pages');
  t.deepEqual(readdirSync(join(root, 'var/cache/apt/archives')).filter((n) => n.endsWith('.deb')), [], 'no cached packages');
  t.false(existsSync(join(root, 'etc/ssl/private/ssl-cert-snakeoil.key')), 'no TLS key shared by every node');
  t.is(readFileSync(join(root, 'etc/hostname'), 'utf8').trim(), 'geminik8s', 'not the build host\'s name');
});

test('a second build takes its packages from the base root cache and makes the same root, byte for byte', async (t) => {
  // The first build made the base (an empty cache) or took it too (a warm one): either way the
  // same inputs must give the same tar, and this one must not install a package.
  t.regex(buildLog, /installing the packages into a new base root|base root from the cache/);
  const again = tempDir('gk-e2e-rootfs-again-');
  const started = Date.now();
  const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'rootfs', '--out', again);
  const seconds = (Date.now() - started) / 1000;
  t.is(r.code, 0, r.stderr.slice(-3000));
  t.regex(r.stderr, /base root from the cache: trixie-amd64-[0-9a-f]{16}\.tar/);
  t.notRegex(r.stderr, /installing remaining packages/);
  t.log(`rootfs build: ${buildSeconds.toFixed(0)} s (${/base root from the cache/.test(buildLog) ? 'base cached' : 'base made'}), again from the base: ${seconds.toFixed(0)} s`);
  const sha = async (f: string): Promise<string> => (await runPlan({ cmd: 'sha256sum', args: [f] })).stdout.split(' ')[0]!;
  t.is(await sha(join(again, 'test-0.1.0-amd64.rootfs.tar')), await sha(join(out, 'test-0.1.0-amd64.rootfs.tar')));
});
