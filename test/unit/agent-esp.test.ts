import test from 'ava';
import { openSync, readSync, closeSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { parseMountinfo, withWritableEsp, type EspDeps } from '#agent/esp.ts';
import { tempDir } from '../helpers/fixtures.ts';

const MOUNTINFO_RO = [
  '22 1 0:20 / / ro,relatime shared:1 - squashfs /dev/vda4 ro',
  '40 22 0:35 / /boot/efi rw,relatime shared:20 - autofs systemd-1 rw,fd=45,pgrp=1',
  '61 40 254:2 / /boot/efi ro,noatime shared:31 - vfat /dev/vda2 ro,fmask=0077,dmask=0077',
  '62 22 0:40 / /with\\040space rw - tmpfs tmpfs rw',
].join('\n');

/** Deps over a mountinfo text that follows the remounts, recording every call. */
function fakeDeps(mountinfo: string, fail: { rw?: boolean; ro?: boolean } = {}) {
  const calls: string[] = [];
  let text = mountinfo;
  const deps: EspDeps = {
    mountinfo: async () => text,
    touch: async (dir) => {
      calls.push(`touch ${dir}`);
    },
    run: async (plan: CommandPlan) => {
      const mode = plan.args[1]!.split(',')[1]!;
      calls.push(`${plan.cmd} ${plan.args.join(' ')}`);
      if (fail[mode as 'rw' | 'ro']) throw new Error(`mount: ${mode} refused`);
      text = text.replace(/(\/boot\/efi )(ro|rw)(,noatime)/, `$1${mode}$3`);
    },
    warn: (m) => calls.push(`warn ${m}`),
  };
  return { calls, deps, current: () => text };
}

test.serial('parseMountinfo: mount point, type and the per-mount read-only flag; octal escapes decoded', (t) => {
  t.deepEqual(parseMountinfo(MOUNTINFO_RO), [
    { mountPoint: '/', fsType: 'squashfs', readOnly: true },
    { mountPoint: '/boot/efi', fsType: 'autofs', readOnly: false },
    { mountPoint: '/boot/efi', fsType: 'vfat', readOnly: true },
    { mountPoint: '/with space', fsType: 'tmpfs', readOnly: false },
  ]);
});

test.serial('a read-only ESP is writable while fn runs and read-only again after it', async (t) => {
  const f = fakeDeps(MOUNTINFO_RO);
  const seen = await withWritableEsp('/boot/efi/', async () => /\/boot\/efi rw,/.test(f.current()), f.deps);
  t.true(seen, 'read-write inside');
  t.deepEqual(f.calls, ['touch /boot/efi', 'mount -o remount,rw /boot/efi', 'mount -o remount,ro /boot/efi']);
});

test.serial('fn failing still puts the ESP back read-only, and its error is what the caller gets', async (t) => {
  const f = fakeDeps(MOUNTINFO_RO);
  await t.throwsAsync(withWritableEsp('/boot/efi', async () => Promise.reject(new Error('disk full')), f.deps), { message: 'disk full' });
  t.is(f.calls.at(-1), 'mount -o remount,ro /boot/efi');
});

test.serial('overlapping writers remount once each way: read-write for the first, read-only after the last', async (t) => {
  const f = fakeDeps(MOUNTINFO_RO);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const a = withWritableEsp('/boot/efi', () => gate, f.deps);
  const b = withWritableEsp('/boot/efi', async () => 'b', f.deps);
  t.is(await b, 'b');
  t.deepEqual(f.calls.filter((c) => c.startsWith('mount')), ['mount -o remount,rw /boot/efi'], 'still read-write: the first writer runs');
  release();
  await a;
  t.deepEqual(f.calls.filter((c) => c.startsWith('mount')), ['mount -o remount,rw /boot/efi', 'mount -o remount,ro /boot/efi']);
});

test.serial('an ESP already read-write, or a directory that is no mount of its own, is left as it is', async (t) => {
  const rw = fakeDeps(MOUNTINFO_RO.replace('/boot/efi ro,noatime', '/boot/efi rw,noatime'));
  await withWritableEsp('/boot/efi', async () => undefined, rw.deps);
  t.false(rw.calls.some((c) => c.startsWith('mount')));
  const none = fakeDeps(MOUNTINFO_RO);
  await withWritableEsp('/var/tmp/esp', async () => undefined, none.deps);
  t.false(none.calls.some((c) => c.startsWith('mount')));
});

test.serial('a failed remount read-write fails before fn runs; a failed return to read-only is a warning, the write stands', async (t) => {
  const rwFails = fakeDeps(MOUNTINFO_RO, { rw: true });
  let ran = false;
  await t.throwsAsync(withWritableEsp('/boot/efi', async () => (ran = true), rwFails.deps), { message: /rw refused/ });
  t.false(ran);
  const roFails = fakeDeps(MOUNTINFO_RO, { ro: true });
  t.is(await withWritableEsp('/boot/efi', async () => 'written', roFails.deps), 'written');
  t.regex(roFails.calls.at(-1)!, /^warn could not remount \/boot\/efi read-only again: mount: ro refused/);
  // The next writer starts from what the mount really is (read-write now), not from a count.
  const next = await withWritableEsp('/boot/efi', async () => 'again', roFails.deps);
  t.is(next, 'again');
});

const isRoot = process.getuid?.() === 0;
const vfat = isRoot && /\svfat$/m.test(existsSync('/proc/filesystems') ? readFileSync('/proc/filesystems', 'utf8') : '');

/** The FAT32 boot sector's state byte (offset 0x41), where Linux keeps its dirty flag (bit 0). */
function fatDirty(image: string): boolean {
  const fd = openSync(image, 'r');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, 0x41);
    return (b[0]! & 1) === 1;
  } finally {
    closeSync(fd);
  }
}

(vfat ? test.serial : test.serial.skip)('on a real FAT32 mounted read-only: the write lands, the dirty flag is set only while it runs, and the mount ends read-only', async (t) => {
  const dir = tempDir();
  const image = join(dir, 'esp.img');
  const mnt = join(dir, 'efi');
  await runPlan({ cmd: 'truncate', args: ['-s', '64M', image] });
  await runPlan({ cmd: 'mkfs.vfat', args: ['-F', '32', '-n', 'ESP', image] });
  await runPlan({ cmd: 'mkdir', args: ['-p', mnt] });
  await runPlan({ cmd: 'mount', args: ['-o', 'loop,ro,umask=0077', image, mnt] });
  try {
    t.false(fatDirty(image), 'clean while read-only');
    const dirtyInside = await withWritableEsp(mnt, async () => {
      writeFileSync(join(mnt, 'grubenv'), 'x');
      return fatDirty(image);
    });
    t.true(dirtyInside, 'Linux marks the FAT dirty while it is mounted read-write');
    const opts = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === mnt).at(-1);
    t.true(opts?.readOnly, 'read-only again');
    t.false(fatDirty(image), 'and clean on disk: a power cut now finds nothing to repair');
    t.is(readFileSync(join(mnt, 'grubenv'), 'utf8'), 'x');
  } finally {
    await runPlan({ cmd: 'umount', args: [mnt] }, { allowFailure: true });
  }
});
