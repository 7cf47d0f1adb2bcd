import test from 'ava';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { bootVm, GuestShell, parseMarkerFields, READY_MARKER, type Vm } from '#qemu/index.ts';
import { until } from '#lab/guest-cluster.ts';
import { cli } from '#lab/cli.ts';
import { tempDir } from '../../helpers/fixtures.ts';
import { blankDisk, BOOT_TIMEOUT, buildInstaller, INSTALL_TIMEOUT, onConsole, OTHER_SERIAL, sha256Of, TARGET_SERIAL } from '../../helpers/installer-e2e.ts';
import { MAC1, pxeSite } from '../../helpers/pxe.ts';
import { testImage, type BuiltImage } from '#lab/test-image.ts';

let img: BuiltImage;
let iso: string;
const vms: Vm[] = [];

test.before(async (t) => {
  img = await testImage('test-amd64.yaml', (m) => t.log(m));
  const built = await buildInstaller(img, 'iso', 'amd64', (m) => t.log(m));
  iso = built.path;
  t.log(`build --output iso from the cached root: ${built.seconds ? `${built.seconds} s` : 'cached'}; ${statSync(iso).size} bytes`);
});

test.afterEach.always(async () => {
  for (const vm of vms.splice(0)) await vm.stop();
});

/** The ISO with node1's seed in it (`seed --into`), node1's disk chosen by `disk` (cluster.yaml from init). */
async function seededIso(dir: string, disk: Record<string, string>): Promise<string> {
  const site = await pxeSite(disk);
  const out = join(dir, 'node1.iso');
  const r = await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--into', iso, '--out', out);
  if (r.code !== 0) throw new Error(`seed --into ${iso} failed (${r.code}): ${r.stderr}`);
  return out;
}

test.serial('the ISO without a seed reads it from a GKSEED medium; a rule that matches both disks refuses, lists every disk, and writes nothing anywhere', async (t) => {
  const dir = tempDir('gk-e2e-iso-refuse-');
  // The ISO as built (no seed) and node1's seed on its own medium, as on a second USB stick.
  const site = await pxeSite({ minSize: '1GiB' });
  const medium = join(dir, 'seed.img');
  const m = await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--format', 'medium', '--out', medium);
  t.is(m.code, 0, m.stderr);
  const a = await blankDisk(join(dir, 'a.raw'), 4 * 1024 ** 3, true);
  const b = await blankDisk(join(dir, 'b.raw'), 6 * 1024 ** 3, true);
  const before = [await sha256Of(a), await sha256Of(b), await sha256Of(medium)];
  // Boot order disk, then CD: the blank disk falls through to the ISO.
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: a, format: 'raw', write: true, diskSerial: TARGET_SERIAL, drives: [{ path: b, serial: OTHER_SERIAL, writable: true }, { path: medium, serial: 'GK-SEED', writable: true }], cdrom: iso, serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const refusal = await onConsole(vm, /refusing to install node1: [^\n]*/, INSTALL_TIMEOUT);
  t.log(refusal);
  t.regex(vm.log(), /the seed of node1 comes from \/dev\/vd\w+ labelled GKSEED/, 'the seed came from the medium');
  t.regex(refusal, /2 disks match the rules/);
  // The refusal carries the listing of every disk with its attributes (the CD is not a disk), the seed's medium never a target.
  await onConsole(vm, /serial "GK-SEED"[^\n]*\n(?:[^\n]*by-\w+:[^\n]*\n)*[^\n]*never: the medium the seed came from/, 60_000);
  t.regex(vm.log(), new RegExp(`serial "${OTHER_SERIAL}"`));
  t.regex(vm.log(), new RegExp(`serial "${TARGET_SERIAL}"`));
  t.false(/written \d+%/.test(vm.log()), 'no write started');
  await vm.stop();
  t.deepEqual([await sha256Of(a), await sha256Of(b), await sha256Of(medium)], before, 'both disks and the seed medium are byte for byte as before');
});

test.serial('written to a USB stick, the ISO boots from it, and its installer never picks the stick itself', async (t) => {
  const dir = tempDir('gk-e2e-iso-usb-');
  // Only the stick (665 MB) is under 1 GiB: the rule matches it and nothing else.
  const seeded = await seededIso(dir, { maxSize: '1GiB' });
  const blank = await blankDisk(join(dir, 'blank.raw'), 4 * 1024 ** 3, true);
  const before = await sha256Of(blank);
  // The stick is the boot disk, on a copy-on-write overlay (the harness's default), as dd would leave it.
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: seeded, format: 'raw', diskSerial: 'GK-USB', drives: [{ path: blank, serial: TARGET_SERIAL, writable: true }], serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const refusal = await onConsole(vm, /refusing to install node1: [^\n]*/, INSTALL_TIMEOUT);
  t.log(refusal);
  t.regex(vm.log(), /geminik8s-live: medium \/dev\/vda labelled GK_TEST_0_1_0/, 'the live root came from the stick');
  t.regex(refusal, /no disk matches the rules/);
  await onConsole(vm, /the medium this installer booted from/, 60_000);
  await vm.stop();
  t.is(await sha256Of(blank), before, 'the other disk is byte for byte as before');
});

// Under UEFI (OVMF): the ISO's El Torito EFI image, then the installed disk's ESP. The other two
// tests boot it under SeaBIOS (El Torito for BIOS, and the hybrid MBR as a USB disk), and the
// pxe suite installs under SeaBIOS.
test.serial('under UEFI, the ISO installs onto the disk its seed names by serial, leaves the other alone, and the machine boots it as its node', async (t) => {
  const dir = tempDir('gk-e2e-iso-install-');
  const seeded = await seededIso(dir, { serial: TARGET_SERIAL });
  const imageBytes = statSync(img.raw).size;
  // The target just big enough; a larger disk the rule must leave alone.
  const target = await blankDisk(join(dir, 'target.raw'), imageBytes + 256 * 1024 ** 2);
  const other = await blankDisk(join(dir, 'other.raw'), imageBytes + 2 * 1024 ** 3, true);
  const otherBefore = await sha256Of(other);
  const started = Date.now();
  // Boot order disk, then CD: the blank target falls through to the ISO; once installed, it boots itself.
  // node1's NIC (the MAC its seed names) on QEMU's own network: without it cloud-init fails its
  // network stage and the agent waits 120 s for an address it cannot get.
  const vm = await bootVm({ arch: 'amd64', firmware: 'uefi', image: target, format: 'raw', write: true, console: true, diskSerial: TARGET_SERIAL, drives: [{ path: other, serial: OTHER_SERIAL, writable: true }], cdrom: seeded, networks: [{ kind: 'user', mac: MAC1 }], serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const done = await onConsole(vm, /installed node1 onto \S+|refusing to install[^\n]*|geminik8s-install\.service: Failed[^\n]*/, INSTALL_TIMEOUT);
  const installedAt = Date.now();
  t.regex(done, /^installed node1 onto \/dev\/vd/, vm.log().slice(-4000));
  // The disk it wrote is the one its listing shows with the serial the seed names.
  const disk = /installed node1 onto (\S+)/.exec(done)![1]!;
  t.regex(vm.log(), new RegExp(`${disk}\\s+\\S+\\s+[^\\n]*serial "${TARGET_SERIAL}"`), 'the chosen disk is the one the seed names');
  t.regex(vm.log(), /geminik8s-live: medium \S+ labelled GK_TEST_0_1_0/, 'the live root came from the ISO');
  t.regex(vm.log(), /geminik8s-live: sha256 matches/, 'and its sha256 was checked');
  t.regex(vm.log(), /efi: EFI v[\d.]+ by EDK II/, 'the live system was booted by UEFI firmware');

  const ready = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  const f = parseMarkerFields(ready.line);
  t.log(`installed system: ${ready.line}`);
  t.like(f, { slot: 'A', root: 'ro', etc: 'overlay', boots: '1' });
  t.is(vm.log().match(/efi: EFI v[\d.]+ by EDK II/g)?.length, 2, 'the installed system too');
  // The installed system applied its seed whole: cloud-init found node1's NIC (no failed stage).
  const log = vm.log();
  const installedBoot = log.slice(log.lastIndexOf('Linux version'));
  t.notRegex(installedBoot, /Failed to start[^\n]*cloud-/, 'no cloud-init stage failed on the installed system');
  // The marker prints the role hostmeta holds when the agent has started: on a loaded host the
  // leader's bootstrap (initdb) may still be under way (one run said role=init at 320 s).
  if (f.role !== 'leader') {
    t.is(f.role, 'init', ready.line);
    const shell = await GuestShell.open(vm.consoleSocket!, BOOT_TIMEOUT);
    try {
      await until('node1 to take its role as leader', BOOT_TIMEOUT, async () => (/"role"\s*:\s*"leader"/.test(await shell.check('cat /var/lib/geminik8s/hostmeta.json')) ? true : undefined));
    } finally {
      shell.close();
    }
  }
  t.log(`ISO ${statSync(seeded).size} bytes; power-on to installed: ${((installedAt - started) / 1000).toFixed(0)} s wall; installed to READY: ${((Date.now() - installedAt) / 1000).toFixed(0)} s wall (guest uptime ${f.uptime} s)`);
  await vm.stop();
  t.is(await sha256Of(other), otherBefore, 'the other disk is byte for byte as before');
});
