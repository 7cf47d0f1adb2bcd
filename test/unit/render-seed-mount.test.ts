import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

// overlays/usr/lib/geminik8s/mount-seed.sh, run for real on loop devices in a private mount
// namespace. Loop devices and mounts need root (CI runs as root), and the kernel must know the
// filesystem: some VM kernels (e.g. Firecracker's) have neither vfat nor iso9660, and a container
// cannot load modules. Those cases then run in the QEMU e2e suites, whose guests boot this script.
const isRoot = process.getuid?.() === 0;
const kernelFs = existsSync('/proc/filesystems') ? readFileSync('/proc/filesystems', 'utf8') : '';
const canMount = (fs: string) => (isRoot && new RegExp(`\\s${fs}$`, 'm').test(kernelFs) ? test.serial : test.serial.skip);
const rootOnly = isRoot ? test.serial : test.serial.skip;
const SCRIPT = join(ROOT, 'overlays', NODE_PATHS.mountSeedScript);
const SEED = 'apiVersion: geminik8s.io/v1alpha1\nkind: NodeSeed\n';

/** A label no other device carries, so blkid finds only ours. */
const uniqueLabel = (): string => `GK${randomBytes(4).toString('hex').toUpperCase()}`;

async function withLoop<T>(image: string, fn: () => Promise<T>): Promise<T> {
  const dev = (await runPlan({ cmd: 'losetup', args: ['--find', '--show', '--read-only', image] })).stdout.trim();
  try {
    // A fresh loop device may not be probeable for a moment; at boot, devices have settled.
    for (let i = 0; i < 20; i++) {
      const r = await runPlan({ cmd: 'blkid', args: ['-c', '/dev/null', '-o', 'value', '-s', 'LABEL', dev] }, { allowFailure: true });
      if (r.stdout.trim()) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return await fn();
  } finally {
    await runPlan({ cmd: 'losetup', args: ['-d', dev] }, { allowFailure: true });
  }
}

/** Run the script in a private mount namespace and report what a reader of the mount sees. */
async function mountAndInspect(label: string, target: string) {
  const inspect = `"$0" "$1" && stat -c '%a %U' "$1/geminik8s/seed.yaml" "$1" "$(dirname "$1")" && findmnt -no FSTYPE,OPTIONS "$1"`;
  return runPlan(
    { cmd: 'unshare', args: ['--mount', '--propagation', 'private', 'sh', '-c', inspect, SCRIPT, target], env: { GEMINIK8S_SEED_LABELS: `${label} ${label.toLowerCase()}` } },
    { allowFailure: true },
  );
}

canMount('vfat')('mount-seed.sh mounts a vfat config partition read-only with the seed private (0600, directories 0700)', async (t) => {
  const dir = tempDir();
  const label = uniqueLabel();
  const image = join(dir, 'config.img');
  writeFileSync(join(dir, 'seed.yaml'), SEED);
  await runPlan({ cmd: 'mkfs.vfat', args: ['-C', '-n', label, image, '8192'] });
  await runPlan({ cmd: 'mmd', args: ['-i', image, '::geminik8s'] });
  await runPlan({ cmd: 'mcopy', args: ['-i', image, join(dir, 'seed.yaml'), '::geminik8s/seed.yaml'] });
  const target = join(dir, 'run/geminik8s/config');
  const r = await withLoop(image, () => mountAndInspect(label, target));
  t.is(r.exitCode, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.regex(lines[0]!, /mounted read-only/);
  t.deepEqual(lines.slice(1, 4), ['600 root', '700 root', '700 root']);
  t.regex(lines[4]!, /^vfat\s+ro,nosuid,nodev,noexec,/);
});

canMount('iso9660')('mount-seed.sh mounts a cidata ISO (lower-case volume id), keeping its Rock Ridge modes', async (t) => {
  const dir = tempDir();
  const label = uniqueLabel().toLowerCase();
  const src = join(dir, 'src');
  mkdirSync(join(src, 'geminik8s'), { recursive: true, mode: 0o700 });
  writeFileSync(join(src, 'geminik8s', 'seed.yaml'), SEED, { mode: 0o600 });
  const image = join(dir, 'seed.iso');
  await runPlan({ cmd: 'xorriso', args: ['-as', 'mkisofs', '-quiet', '-output', image, '-volid', label, '-joliet', '-rock', src] });
  const target = join(dir, 'run/geminik8s/config');
  const r = await withLoop(image, () => mountAndInspect(label.toUpperCase(), target));
  t.is(r.exitCode, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.is(lines[1], '600 root');
  t.regex(lines[4]!, /^iso9660\s+ro,nosuid,nodev,noexec/);
});

rootOnly('mount-seed.sh without a seed medium mounts nothing, says so, and lets first boot report "unconfigured"', async (t) => {
  const target = join(tempDir(), 'run/geminik8s/config');
  const r = await runPlan(
    { cmd: 'unshare', args: ['--mount', '--propagation', 'private', 'sh', '-c', '"$0" "$1" && ! mountpoint -q "$1"', SCRIPT, target], env: { GEMINIK8S_SEED_LABELS: uniqueLabel() } },
    { allowFailure: true },
  );
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /no seed medium found/);
});

// overlays/usr/lib/geminik8s/grow-persistent.sh on a loop device: the first run grows the
// partition and its ext4 to the end of the disk; later runs see from sysfs that nothing is left.
const canGrow = isRoot && existsSync('/usr/bin/growpart') ? test.serial : test.serial.skip;
canGrow('grow-persistent.sh grows PERSISTENT and its ext4 once, then answers without growpart', async (t) => {
  const dir = tempDir();
  const image = join(dir, 'disk.img');
  const label = uniqueLabel();
  await runPlan({ cmd: 'truncate', args: ['-s', '64M', image] });
  await runPlan({ cmd: 'sfdisk', args: ['-q', image], input: `label: gpt\nsize=24M, name=${label}\n` });
  const dev = (await runPlan({ cmd: 'losetup', args: ['--find', '--show', '--partscan', image] })).stdout.trim();
  try {
    const part = `${dev}p1`;
    // Without udev in a container the partition node may need a nudge.
    if (!existsSync(part)) await runPlan({ cmd: 'partx', args: ['-a', dev] }, { allowFailure: true });
    for (let i = 0; i < 20 && !existsSync(part); i++) await new Promise((r) => setTimeout(r, 100));
    await runPlan({ cmd: 'mkfs.ext4', args: ['-q', part] });
    const grow = () => runPlan({ cmd: 'sh', args: [join(ROOT, 'overlays', NODE_PATHS.growScript)], env: { GEMINIK8S_PERSISTENT_LABEL: label } }, { allowFailure: true });
    const first = await grow();
    t.is(first.exitCode, 0, first.stderr);
    t.regex(first.stdout, /grown to the end of/);
    const sectors = Number(readFileSync(`/sys/class/block/${part.slice(5)}/size`, 'utf8'));
    t.true(sectors > 120_000, `partition now ${sectors} sectors`);
    const fs = (await runPlan({ cmd: 'dumpe2fs', args: ['-h', part] })).stdout;
    const blocks = Number(/^Block count:\s+(\d+)/m.exec(fs)![1]) * Number(/^Block size:\s+(\d+)/m.exec(fs)![1]);
    t.true(blocks >= (sectors - 2048) * 512, 'the file system fills the partition');
    const second = await grow();
    t.is(second.exitCode, 0, second.stderr);
    t.regex(second.stdout, /already fills/);
    t.notRegex(second.stdout + second.stderr, /NOCHANGE|resize2fs/, 'neither growpart nor resize2fs ran');
    // As the unit runs it: with PERSISTENT's mount point, the device from the mount table, and
    // the sizes that fill the disk kept there for the next boot.
    const mnt = join(dir, 'persistent');
    mkdirSync(mnt);
    await runPlan({ cmd: 'mount', args: [part, mnt] });
    try {
      const script = join(ROOT, 'overlays', NODE_PATHS.growScript);
      const third = await runPlan({ cmd: 'sh', args: [script, mnt] }, { allowFailure: true });
      t.is(third.exitCode, 0, third.stderr);
      t.regex(third.stdout, new RegExp(`PERSISTENT ${part} already fills ${dev}$`, 'm'));
      const stamp = readFileSync(join(mnt, '.grown'), 'utf8');
      t.is(stamp, `${part} ${readFileSync(`/sys/class/block/${part.slice(5)}/start`, 'utf8').trim()} ${sectors} ${readFileSync(`/sys/class/block/${dev.slice(5)}/size`, 'utf8').trim()}\n`);
      t.false(existsSync(join(mnt, '.grown.tmp')));
      // The next boot: no program at all on PATH, so any tool it started would fail.
      const fourth = await runPlan({ cmd: '/bin/sh', args: [script, mnt], env: { PATH: '/nonexistent' } }, { allowFailure: true });
      t.is(fourth.exitCode, 0, fourth.stderr);
      t.regex(fourth.stdout, /already fills .* \(unchanged since .*\.grown\)/);
      // A disk that grew since: the stamp no longer matches, and the partition grows again.
      writeFileSync(join(mnt, '.grown'), `${part} 1 2 3\n`);
      const fifth = await runPlan({ cmd: '/bin/sh', args: [script, mnt], env: { PATH: '/nonexistent' } }, { allowFailure: true });
      t.not(fifth.exitCode, 0, 'sizes that differ from the stamp take the slow path (tools needed)');
    } finally {
      await runPlan({ cmd: 'umount', args: [mnt] }, { allowFailure: true });
    }
  } finally {
    await runPlan({ cmd: 'losetup', args: ['-d', dev] }, { allowFailure: true });
  }
});
