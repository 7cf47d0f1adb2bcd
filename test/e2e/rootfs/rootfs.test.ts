import test from 'ava';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '../../../common/exec.ts';
import { cli } from '../../helpers/cli.ts';
import { FAKE_SECRETS, ROOT, tempDir } from '../../helpers/fixtures.ts';

// Builds the offline test image's root (Kubernetes layer off) from Debian with mmdebstrap.
// The apt cache under ~/.cache/geminik8s makes a rebuild fast; a cold build downloads ~300 MB.
let out: string;
let root: string;
let buildSeconds = 0;

test.before(async () => {
  out = tempDir('gk-e2e-rootfs-');
  const started = Date.now();
  const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'rootfs', '--out', out);
  buildSeconds = (Date.now() - started) / 1000;
  if (r.code !== 0) throw new Error(`build failed (${r.code}): ${r.stderr.slice(-3000)}`);
  root = join(out, 'root');
  mkdirSync(root);
  await runPlan({ cmd: 'tar', args: ['-xf', join(out, 'test-0.1.0-amd64.rootfs.tar'), '-C', root, '--numeric-owner'] });
});

test('the root tar and its manifest are written under their final names, nothing temporary left', (t) => {
  t.log(`rootfs build: ${buildSeconds.toFixed(0)} s, ${(statSync(join(out, 'test-0.1.0-amd64.rootfs.tar')).size / 1048576).toFixed(0)} MiB`);
  const names = readdirSync(out).filter((n) => n !== 'root').sort();
  t.deepEqual(names, ['test-0.1.0-amd64.manifest.json', 'test-0.1.0-amd64.rootfs.tar']);
  const manifest = JSON.parse(readFileSync(join(out, 'test-0.1.0-amd64.manifest.json'), 'utf8'));
  t.like(manifest, { image: 'test', version: '0.1.0', arch: 'amd64', kubernetes: false, base: 'debian/trixie' });
  t.is(manifest.components.postgresql.major, 17);
});

test('required files, units, users and PostgreSQL binaries are there; Debian\'s default cluster is not', (t) => {
  for (const f of [
    'usr/lib/postgresql/17/bin/postgres', 'usr/lib/postgresql/17/bin/pg_rewind', 'usr/lib/postgresql/17/bin/pg_basebackup',
    'usr/bin/node', 'usr/lib/geminik8s/agent.mjs', 'usr/lib/geminik8s/ready.sh', 'etc/geminik8s/agent.yaml',
    'etc/systemd/system/geminik8s-agent.service', 'etc/systemd/system/geminik8s-firstboot.service', 'etc/systemd/system/geminik8s-postgresql.service',
    'usr/share/geminik8s/manifest.json', 'usr/share/geminik8s/packages.tsv', 'usr/bin/arping', 'usr/bin/cloud-init',
  ]) t.true(existsSync(join(root, f)), f);
  // Symlinks inside the root point at root-relative paths: inspect the link, do not follow it.
  const wants = join(root, 'etc/systemd/system/multi-user.target.wants/geminik8s-agent.service');
  t.true(lstatSync(wants, { throwIfNoEntry: false })?.isSymbolicLink() ?? false, 'agent enabled');
  t.is(readlinkSync(wants), '/etc/systemd/system/geminik8s-agent.service');
  t.false(existsSync(join(root, 'usr/local/bin/k3s')), 'no K3s in the test image');
  t.false(existsSync(join(root, 'var/lib/postgresql/17/main')), 'no packaged default cluster');
  t.is(readlinkSync(join(root, 'etc/systemd/system/postgresql.service')), '/dev/null', 'packaged postgresql.service masked');
  const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8');
  t.regex(passwd, /^postgres:/m);
  t.regex(readFileSync(join(root, 'usr/lib/os-release'), 'utf8'), /IMAGE_VERSION=0\.1\.0/);
  t.is(statSync(join(root, 'usr/lib/geminik8s/ready.sh')).mode & 0o111, 0o111);
  t.deepEqual(readdirSync(join(root, 'var/lib/apt/lists')).filter((n) => n !== 'partial' && n !== 'lock' && n !== 'auxfiles'), [], 'no apt lists');
  t.false(existsSync(join(root, 'usr/share/man/man1')), 'no manual pages');
  t.deepEqual(readdirSync(join(root, 'var/cache/apt/archives')).filter((n) => n.endsWith('.deb')), [], 'no cached packages');
});

test('the agent bundle runs inside the root with the root\'s own Node.js', async (t) => {
  const r = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', '--version'] }, { allowFailure: true });
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout.trim(), JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  const bad = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', 'firstboot', '--config', '/etc/geminik8s/agent.yaml'] }, { allowFailure: true });
  t.is(bad.exitCode, 0, bad.stderr);
  t.regex(bad.stdout, /UNCONFIGURED: .*no geminik8s seed found/);
});

test('no secret is present in the generic root', async (t) => {
  const r = await runPlan({ cmd: 'grep', args: ['-rlI', '-e', FAKE_SECRETS.agentToken, '-e', 'BEGIN OPENSSH PRIVATE KEY', join(root, 'etc'), join(root, 'usr/lib/geminik8s'), join(root, 'var/lib')] }, { allowFailure: true });
  t.is(r.stdout.trim(), '');
  t.false(existsSync(join(root, 'var/lib/geminik8s/seed.yaml')));
  const keys = existsSync(join(root, 'etc/ssh')) ? readdirSync(join(root, 'etc/ssh')).filter((n) => n.startsWith('ssh_host_')) : [];
  t.deepEqual(keys, [], 'no SSH host keys baked into a generic image');
});
