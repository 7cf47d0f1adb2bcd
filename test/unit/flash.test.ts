import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { loadCluster, loadClusterSecrets, loadClusterTls } from '#common/config.ts';
import { describeTarget, parseLsblk, refusals, type BlockDevice } from '#builder/ops/flash.ts';
import { deviceOfSource } from '#common/install/media.ts';
import { renderSeedFiles } from '#builder/render/index.ts';
import { SEED_FILE_IN_PARTITION } from '#builder/render/cloud-init.ts';
import { cli } from '#lab/cli.ts';
import { tempDir } from '../helpers/fixtures.ts';

const MiB = 1024 * 1024;
const disk = (over: Partial<BlockDevice> = {}): BlockDevice => ({ name: 'sdb', path: '/dev/sdb', type: 'disk', size: 16 * 1024 ** 3, model: 'SanDisk Ultra ', serial: '4C5300011', mountpoints: [null], tran: 'usb', rm: true, children: [{ name: 'sdb1', path: '/dev/sdb1', type: 'part', size: 16 * 1024 ** 3 - MiB, model: null, serial: null, mountpoints: [null], fstype: 'vfat', label: 'PHOTOS' }], ...over });

test('flash refuses a partition, a mounted disk, the running system\'s disk and a disk too small, all named at once', (t) => {
  t.deepEqual(refusals(disk(), 2 * 1024 ** 3, ['/dev/vda', '/dev/vda1']), []);
  const part = refusals({ ...disk().children![0]!, children: [] }, 1, []);
  t.regex(part[0]!, /\/dev\/sdb1 is a part, not a whole disk: give the disk it belongs to/);
  const mounted = disk({ children: [{ ...disk().children![0]!, mountpoints: ['/media/usb'] }] });
  t.regex(refusals(mounted, 1, [])[0]!, /\/dev\/sdb is in use: \/dev\/sdb1 on \/media\/usb \(unmount it first\)/);
  t.regex(refusals(disk(), 1, ['/dev/sdb1'])[0]!, /holds the running system \(\/dev\/sdb1\)/);
  t.regex(refusals(disk({ size: 1000 }), 2000, [])[0]!, /has 1000 bytes, the image needs 2000/);
  t.is(refusals({ ...mounted, size: 1 }, 2, ['/dev/sdb']).length, 3);
  const shown = describeTarget(disk());
  t.regex(shown, /^\/dev\/sdb: SanDisk Ultra, serial 4C5300011, 16\.0 GiB \(17179869184 bytes\), usb, removable$/m);
  t.regex(shown, /^ {2}\/dev\/sdb1 {2}16\.0 GiB {2}vfat {2}PHOTOS$/m);
  t.is(deviceOfSource('/dev/vda2\n'), '/dev/vda2');
  t.is(deviceOfSource('/dev/mapper/root[/@]'), '/dev/mapper/root');
  t.is(deviceOfSource('overlay'), undefined);
  t.is(parseLsblk('{"blockdevices": [{"name": "loop0", "path": "/dev/loop0", "type": "loop", "size": 67108864, "model": null, "serial": null, "mountpoints": [null]}]}')?.size, 67108864);
});

// Loop devices are real block devices; they need root (CI runs as root).
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;
const loops: string[] = [];

test.after.always(async () => {
  for (const l of loops) await runPlan({ cmd: 'umount', args: [l] }, { allowFailure: true });
  for (const l of loops) await runPlan({ cmd: 'losetup', args: ['-d', l] }, { allowFailure: true });
});

async function loop(file: string, bytes: number): Promise<string> {
  writeFileSync(file, '');
  await runPlan({ cmd: 'truncate', args: ['-s', String(bytes), file] });
  const dev = (await runPlan({ cmd: 'losetup', args: ['-f', '--show', file] })).stdout.trim();
  loops.push(dev);
  return dev;
}

function sha256Prefix(file: string, bytes: number): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(MiB);
  for (let pos = 0; pos < bytes;) {
    const n = readSync(fd, buf, 0, Math.min(MiB, bytes - pos), pos);
    h.update(buf.subarray(0, n));
    pos += n;
  }
  closeSync(fd);
  return h.digest('hex');
}

/** A 48 MiB GPT image with a FAT partition named CONFIG and random bytes after it. */
async function smallImage(dir: string): Promise<string> {
  const img = join(dir, 'node.raw');
  await runPlan({ cmd: 'truncate', args: ['-s', String(48 * MiB), img] });
  await runPlan({ cmd: 'sfdisk', args: ['-q', img], input: 'label: gpt\nstart=2048, size=65536, name=CONFIG\nstart=67584, size=16384, name=DATA\n' });
  const part = join(dir, 'config.img');
  await runPlan({ cmd: 'mkfs.vfat', args: ['-C', part, String(32 * 1024)] });
  await runPlan({ cmd: 'dd', args: [`if=${part}`, `of=${img}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none'] });
  const fd = openSync(img, 'r+');
  const noise = randomBytes(4 * MiB);
  const { writeSync } = await import('node:fs');
  writeSync(fd, noise, 0, noise.length, 34 * MiB);
  closeSync(fd);
  return img;
}

serial('flash writes a .raw.zst onto a loop device, reads it back, and can put a node\'s seed on its config partition', async (t) => {
  t.timeout(300_000);
  const dir = tempDir('gk-flash-');
  const raw = await smallImage(dir);
  await runPlan({ cmd: 'zstd', args: ['-q', '-f', raw, '-o', `${raw}.zst`] });
  const dev = await loop(join(dir, 'stick.img'), 64 * MiB);
  const plain = await cli('flash', `${raw}.zst`, '--device', dev, '--yes');
  t.is(plain.code, 0, plain.stderr);
  t.regex(plain.stderr, /target:\n\/dev\/loop\d+: unknown model, serial unknown, 0\.1 GiB \(67108864 bytes\)/);
  t.regex(plain.stderr, /read back 50331648 bytes: sha256 [0-9a-f]{64} matches/);
  t.is(sha256Prefix(join(dir, 'stick.img'), 48 * MiB), sha256Prefix(raw, 48 * MiB), 'the stick holds the image byte for byte');

  const site = join(dir, 'site');
  const init = await cli('init', '--name', 'shop', '--node1-ip', '10.1.0.11', '--node2-ip', '10.1.0.12', '--vip', '10.1.0.50', '--config-dir', site);
  t.is(init.code, 0, init.stderr);
  const seeded = await cli('flash', raw, '--device', dev, '--seed-cluster', join(site, 'cluster.yaml'), '--node', 'node2', '--yes');
  t.is(seeded.code, 0, seeded.stderr);
  t.regex(seeded.stdout, /seed of node2$/m);
  const cluster = await loadCluster(join(site, 'cluster.yaml'));
  const want = renderSeedFiles(cluster, 'node2', await loadClusterSecrets(join(site, 'cluster.yaml'), cluster), await loadClusterTls(join(site, 'cluster.yaml'), cluster, 'node2')).find((f) => f.path === SEED_FILE_IN_PARTITION)!;
  const got = await runPlan({ cmd: 'mtype', args: ['-i', `${join(dir, 'stick.img')}@@${MiB}`, `::/${SEED_FILE_IN_PARTITION}`] });
  t.is(got.stdout, want.content, 'the node reads its own seed from the stick');
  t.is(sha256Prefix(join(dir, 'stick.img'), 48 * MiB).length, 64);
  // Outside the config partition the image is untouched.
  const tail = (f: string) => createHash('sha256').update(readFileSync(f).subarray(33 * MiB, 48 * MiB)).digest('hex');
  t.is(tail(join(dir, 'stick.img')), tail(raw));
});

serial('flash refuses, writing nothing: a file, a mounted disk, a disk too small, and no --yes without a terminal', async (t) => {
  t.timeout(300_000);
  const dir = tempDir('gk-flash-no-');
  const raw = await smallImage(dir);
  const file = await cli('flash', raw, '--device', join(dir, 'node.raw'), '--yes');
  t.is(file.code, 5);
  t.regex(file.stderr, /not a block device/);

  const small = await loop(join(dir, 'small.img'), 16 * MiB);
  const tooSmall = await cli('flash', raw, '--device', small, '--yes');
  t.is(tooSmall.code, 5);
  t.regex(tooSmall.stderr, new RegExp(`${small} has 16777216 bytes, the image needs 50331648`));
  // A .raw.zst is measured by the size its frame header records, not by its compressed size.
  await runPlan({ cmd: 'zstd', args: ['-q', '-f', raw, '-o', `${raw}.zst`] });
  const tooSmallZst = await cli('flash', `${raw}.zst`, '--device', small, '--yes');
  t.is(tooSmallZst.code, 5);
  t.regex(tooSmallZst.stderr, new RegExp(`${small} has 16777216 bytes, the image needs 50331648`));
  // zstd reading a pipe cannot record the size: refused before any disk is looked at.
  await runPlan({ cmd: 'sh', args: ['-c', `zstd -q -c < '${raw}' > '${raw}.piped.zst'`] });
  const unsized = await cli('flash', `${raw}.piped.zst`, '--device', small, '--yes');
  t.is(unsized.code, 2);
  t.regex(unsized.stderr, /piped\.zst: zstd does not record the decompressed size/);
  t.is(sha256Prefix(join(dir, 'small.img'), 16 * MiB), createHash('sha256').update(Buffer.alloc(16 * MiB)).digest('hex'), 'nothing was written');

  // A partition is refused by type (the pure test above); this kernel's loop driver does not
  // scan partitions (losetup -P makes no /dev/loopNp1), so it is not tried on a device here.

  const busy = await loop(join(dir, 'busy.img'), 64 * MiB);
  await runPlan({ cmd: 'mkfs.ext4', args: ['-q', busy] });
  const mnt = tempDir('gk-flash-mnt-');
  await runPlan({ cmd: 'mount', args: [busy, mnt] });
  try {
    const mounted = await cli('flash', raw, '--device', busy, '--yes');
    t.is(mounted.code, 5);
    t.regex(mounted.stderr, new RegExp(`${busy} is in use: ${busy} on ${mnt}`));
  } finally {
    await runPlan({ cmd: 'umount', args: [mnt] });
  }

  const blank = await loop(join(dir, 'blank.img'), 64 * MiB);
  const ask = await cli('flash', raw, '--device', blank);
  t.is(ask.code, 5);
  t.regex(ask.stderr, /no terminal to confirm on: pass --yes/);
  t.is(sha256Prefix(join(dir, 'blank.img'), 64 * MiB), createHash('sha256').update(Buffer.alloc(64 * MiB)).digest('hex'), 'nothing was written');
});
