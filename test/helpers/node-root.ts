import type { ExecutionContext } from 'ava';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { FAKE_SECRETS, ROOT } from './fixtures.ts';

/** What both suites assert about a node root (see test/e2e/rootfs). */
export async function assertNodeRoot(t: ExecutionContext, root: string): Promise<void> {
  for (const f of [
    'usr/lib/postgresql/17/bin/postgres', 'usr/lib/postgresql/17/bin/pg_rewind', 'usr/lib/postgresql/17/bin/pg_basebackup',
    'usr/bin/node', 'usr/lib/geminik8s/agent.mjs', 'usr/lib/geminik8s/ready.sh', 'etc/geminik8s/agent.yaml',
    'etc/systemd/system/geminik8s-agent.service', 'etc/systemd/system/geminik8s-postgresql.service',
    'usr/share/geminik8s/manifest.json', 'usr/share/geminik8s/packages.tsv', 'usr/bin/arping', 'usr/bin/cloud-init',
  ]) t.true(existsSync(join(root, f)), f);
  const wants = join(root, 'etc/systemd/system/multi-user.target.wants/geminik8s-agent.service');
  t.true(lstatSync(wants, { throwIfNoEntry: false })?.isSymbolicLink() ?? false, 'agent enabled');
  t.is(readlinkSync(wants), '/etc/systemd/system/geminik8s-agent.service');
  t.false(existsSync(join(root, 'etc/systemd/system/geminik8s-firstboot.service')), 'first boot runs in the agent, with no unit of its own');
  t.false(existsSync(join(root, 'usr/local/bin/k3s')), 'no K3s in the test image');
  t.false(existsSync(join(root, 'var/lib/postgresql/17/main')), 'no packaged default cluster');
  t.is(readlinkSync(join(root, 'etc/systemd/system/postgresql.service')), '/dev/null', 'packaged postgresql.service masked');
  t.regex(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^postgres:/m);
  const osRelease = readFileSync(join(root, 'usr/lib/os-release'), 'utf8');
  t.regex(osRelease, /^IMAGE_VERSION=0\.1\.0$/m);
  for (const key of ['VARIANT', 'VARIANT_ID', 'IMAGE_ID', 'IMAGE_VERSION']) t.is(osRelease.split('\n').filter((l) => l.startsWith(`${key}=`)).length, 1, `${key} once`);
  t.is(statSync(join(root, 'usr/lib/geminik8s/ready.sh')).mode & 0o111, 0o111);
  t.false(existsSync(join(root, 'usr/lib/geminik8s/build')), 'customize inputs removed');
  t.regex(readlinkSync(join(root, 'boot/vmlinuz')), /^vmlinuz-.+-amd64$/);
  t.true(statSync(join(root, 'boot', readlinkSync(join(root, 'boot/initrd.img')))).size > 5 * 1048576, 'initramfs');
  t.deepEqual(readdirSync(join(root, 'var/lib/apt/lists')).filter((n) => n !== 'partial' && n !== 'lock' && n !== 'auxfiles'), [], 'no apt lists');
  t.false(existsSync(join(root, 'usr/share/man/man1')), 'no manual pages');
  t.deepEqual(readdirSync(join(root, 'var/cache/apt/archives')).filter((n) => n.endsWith('.deb')), [], 'no cached packages');
  // The agent bundle runs with the root's own Node.js.
  const v = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', '--version'] }, { allowFailure: true });
  t.is(v.exitCode, 0, v.stderr);
  t.is(v.stdout.trim(), JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  // The same through the command operators and the SUC job use.
  const w = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/geminik8s-agent', '--version'] }, { allowFailure: true });
  t.is(w.exitCode, 0, w.stderr);
  t.is(w.stdout.trim(), v.stdout.trim());
  const fb = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', 'firstboot', '--config', '/etc/geminik8s/agent.yaml'] }, { allowFailure: true });
  t.is(fb.exitCode, 0, fb.stderr);
  t.regex(fb.stdout, /UNCONFIGURED: .*no geminik8s seed found/);
  // No secret, no per-machine identity.
  const grep = await runPlan({ cmd: 'grep', args: ['-rlI', '-e', FAKE_SECRETS.agentToken, '-e', 'BEGIN OPENSSH PRIVATE KEY', join(root, 'etc'), join(root, 'usr/lib/geminik8s'), join(root, 'var/lib')] }, { allowFailure: true });
  t.is(grep.stdout.trim(), '');
  t.false(existsSync(join(root, 'var/lib/geminik8s/seed.yaml')));
  t.deepEqual(existsSync(join(root, 'etc/ssh')) ? readdirSync(join(root, 'etc/ssh')).filter((n) => n.startsWith('ssh_host_')) : [], [], 'no SSH host keys');
  t.is(readFileSync(join(root, 'etc/machine-id'), 'utf8'), '', 'empty machine-id, made on first boot');
  // arping's file capability survived (the export keeps extended attributes byte for byte).
  const cap = await runPlan({ cmd: 'python3', args: ['-c', 'import os,sys; print(os.getxattr(sys.argv[1], "security.capability").hex())', join(root, 'usr/bin/arping')] }, { allowFailure: true });
  t.is(cap.stdout.trim().slice(0, 16), '0100000200200000', `cap_net_raw on arping: ${cap.stderr}`);
}
