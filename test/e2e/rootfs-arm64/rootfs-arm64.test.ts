import test from 'ava';
import { existsSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { partitionOffset } from '#common/install/media.ts';
import { bootVm, parseMarkerFields, READY_MARKER, type Vm } from '#qemu/index.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { blankDisk, buildInstaller, INSTALL_TIMEOUT, onConsole, sha256Of, TARGET_SERIAL } from '../../helpers/installer-e2e.ts';
import { pxeSite } from '../../helpers/pxe.ts';
import { testImage, type BuiltImage } from '#lab/test-image.ts';
import { elfHeader, EM, inRoot } from '../../helpers/root-files.ts';

// Builds the arm64 test image (root, then disk) on this amd64 host: mmdebstrap runs the arm64 maintainer
// scripts, update-initramfs and customize-root.sh through qemu-user-static's binfmt entry (the
// build's "check host tools" step mounts binfmt_misc and enables qemu-aarch64 when needed).
// Slow: dpkg runs under emulation. The apt cache under ~/.cache/geminik8s makes a rebuild
// skip the ~350 MB download, not the emulated installation.
const NAME = 'test-0.1.0-arm64';
let img: BuiltImage;
let out: string;
let root: string;
let buildSeconds = 0;
const vms: Vm[] = [];

test.before(async (t) => {
  // Longer than the slow tier's 40 min inactivity timeout allows a cold build under emulation.
  t.timeout(75 * 60_000, 'arm64 image build under qemu-user emulation');
  const started = Date.now();
  img = await testImage('test-arm64.yaml', (m) => t.log(m));
  buildSeconds = img.buildSeconds || (Date.now() - started) / 1000;
  out = img.dir;
  root = tempDir('gk-e2e-arm64-root-');
  await runPlan({ cmd: 'tar', args: ['-xf', img.rootfsTar, '-C', root, '--numeric-owner'] });
});

test.after.always(async () => {
  if (root) await rm(root, { recursive: true, force: true });
  for (const vm of vms.splice(0)) await vm.stop();
});

test('the root tar and its manifest are written under their final names, for arm64', (t) => {
  const mib = statSync(join(out, `${NAME}.rootfs.tar`)).size / 1048576;
  t.log(`arm64 image build (root + disk) on ${process.arch} through qemu-user binfmt: ${img.buildSeconds ? `${buildSeconds.toFixed(0)} s` : 'cached'}, root ${mib.toFixed(0)} MiB`);
  t.true(readdirSync(out).includes(`${NAME}.manifest.json`));
  const manifest = JSON.parse(readFileSync(join(out, `${NAME}.manifest.json`), 'utf8'));
  t.like(manifest, { image: 'test', version: '0.1.0', arch: 'arm64', kubernetes: false, base: 'debian/trixie' });
  t.true(manifest.packages.includes('linux-image-arm64'));
  t.true(manifest.packages.includes('grub-efi-arm64-bin'));
  t.like(JSON.parse(readFileSync(join(root, 'usr/share/geminik8s/manifest.json'), 'utf8')), { arch: 'arm64' });
  // dpkg inside the root is an arm64 dpkg: its packages are arm64 (or all), none amd64.
  const status = readFileSync(join(root, 'var/lib/dpkg/status'), 'utf8');
  t.regex(status, /^Package: nodejs\n(?:.+\n)*?Architecture: arm64$/m);
  t.notRegex(status, /^Architecture: amd64$/m);
});

test('/usr/bin/node is an aarch64 ELF executable', (t) => {
  const node = inRoot(root, '/usr/bin/node');
  t.deepEqual(elfHeader(node), { elfClass: 2, data: 1, machine: EM.arm64 }, node);
});

test('the kernel and initramfs GRUB loads by fixed names are there, for arm64', (t) => {
  const vmlinuz = readlinkSync(join(root, 'boot/vmlinuz'));
  t.regex(vmlinuz, /^vmlinuz-.+-arm64$/);
  const version = vmlinuz.slice('vmlinuz-'.length);
  t.is(readlinkSync(join(root, 'boot/initrd.img')), `initrd.img-${version}`);
  t.true(statSync(join(root, 'boot', vmlinuz)).size > 5 * 1048576, 'kernel image');
  // Made by update-initramfs under emulation; a failed run would leave it missing or tiny.
  t.true(statSync(join(root, 'boot', `initrd.img-${version}`)).size > 5 * 1048576, 'initramfs');
  t.true(existsSync(join(root, 'usr/lib/modules', version, 'modules.dep')), 'kernel modules and depmod output');
  // An arm64 Image with its EFI stub: PE/COFF ('MZ') for the firmware or GRUB, and the arm64
  // Image header magic 'ARM\x64' at offset 56 (Documentation/arch/arm64/booting.rst).
  const head = readFileSync(join(root, 'boot', vmlinuz)).subarray(0, 64);
  t.is(head.subarray(0, 2).toString('latin1'), 'MZ');
  t.is(head.readUInt32LE(56), 0x644d5241);
});

test('grub-efi-arm64-bin modules are under /usr/lib/grub/arm64-efi for the disk builder', (t) => {
  const dir = join(root, 'usr/lib/grub/arm64-efi');
  const mods = readdirSync(dir).filter((n) => n.endsWith('.mod'));
  for (const m of ['normal', 'linux', 'part_gpt', 'fat', 'ext2', 'squash4', 'search', 'loadenv', 'configfile', 'test', 'echo']) {
    t.true(mods.includes(`${m}.mod`), `${m}.mod`);
  }
  t.true(existsSync(join(dir, 'moddep.lst')), 'moddep.lst, which grub-mkimage reads');
  t.deepEqual(elfHeader(join(dir, 'normal.mod')), { elfClass: 2, data: 1, machine: EM.arm64 }, 'aarch64 GRUB modules');
});

test('the agent bundle runs inside the root with the root\'s arm64 Node.js, through binfmt', async (t) => {
  const r = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', '--version'] }, { allowFailure: true });
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout.trim(), JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  const arch = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '-p', 'process.arch'] });
  t.is(arch.stdout.trim(), 'arm64');
  const bad = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', 'firstboot', '--config', '/etc/geminik8s/agent.yaml'] }, { allowFailure: true });
  t.is(bad.exitCode, 0, bad.stderr);
  t.regex(bad.stdout, /UNCONFIGURED: .*no geminik8s seed found/);
});

test('our units are enabled and Debian\'s default PostgreSQL cluster is gone, as on amd64', (t) => {
  const wants = join(root, 'etc/systemd/system/multi-user.target.wants/geminik8s-agent.service');
  t.is(readlinkSync(wants), '/etc/systemd/system/geminik8s-agent.service');
  t.is(readlinkSync(join(root, 'etc/systemd/system/postgresql.service')), '/dev/null');
  t.false(existsSync(join(root, 'var/lib/postgresql/17/main')));
  t.true(existsSync(join(root, 'usr/lib/postgresql/17/bin/postgres')));
  t.regex(readFileSync(join(root, 'usr/lib/os-release'), 'utf8'), /IMAGE_ID=test/);
  t.false(existsSync(join(root, 'usr/lib/geminik8s/build')), 'build inputs removed');
});

test('the arm64 disk: GPT with the same layout, BOOTAA64.EFI (an arm64 PE) and grub.cfg on the ESP, serial console ttyAMA0', async (t) => {
  const table = JSON.parse((await runPlan({ cmd: 'sfdisk', args: ['-J', img.raw] })).stdout).partitiontable;
  t.deepEqual(table.partitions.map((p: { name: string }) => p.name), ['BIOS', 'ESP', 'CONFIG', 'ROOT_A', 'ROOT_B', 'PERSISTENT']);
  t.is(table.partitions[3].type, 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE', 'ROOT_A typed as an ARM64 root');
  const esp = `${img.raw}@@${await partitionOffset(img.raw, 'ESP')}`;
  const listing = (await runPlan({ cmd: 'mdir', args: ['-b', '-/', '-i', esp, '::'] })).stdout;
  t.regex(listing, /::\/EFI\/BOOT\/BOOTAA64\.EFI/);
  t.notRegex(listing, /BOOTX64/);
  const efi = join(tempDir(), 'BOOTAA64.EFI');
  await runPlan({ cmd: 'mcopy', args: ['-i', esp, '::EFI/BOOT/BOOTAA64.EFI', efi] });
  const pe = readFileSync(efi);
  t.is(pe.subarray(0, 2).toString('latin1'), 'MZ');
  const peOffset = pe.readUInt32LE(0x3c);
  t.is(pe.subarray(peOffset, peOffset + 4).toString('latin1'), 'PE\0\0');
  t.is(pe.readUInt16LE(peOffset + 4), 0xaa64, 'IMAGE_FILE_MACHINE_ARM64');
  const cfg = (await runPlan({ cmd: 'mtype', args: ['-i', esp, '::grub/grub.cfg'] })).stdout;
  t.regex(cfg, /console=ttyAMA0,115200/);
  t.notRegex(cfg, /^serial /m, 'no 16550 serial terminal on arm64: the console comes through EFI');
});

// Booting the arm64 image under TCG to the marker: 157 s on an idle machine here (455 s while
// other VMs ran). GEMINIK8S_E2E_ARM64_BOOT=0 leaves it out.
const bootTest = process.env.GEMINIK8S_E2E_ARM64_BOOT === '0' ? test.skip : test;
bootTest('the arm64 image boots under qemu-system-aarch64 with AAVMF to the marker, root read-only', async (t) => {
  const vm = await bootVm({ arch: 'arm64', firmware: 'uefi', image: img.qcow2, format: 'qcow2', serialLog: join(tempDir('gk-e2e-arm64-boot-'), 'serial.log') });
  vms.push(vm);
  const ready = await vm.waitFor(READY_MARKER, 25 * 60_000);
  t.log(`arm64 UEFI boot: ${ready.line} (wall ${(ready.elapsedMs / 1000).toFixed(0)} s)`);
  t.like(parseMarkerFields(ready.line), { slot: 'A', root: 'ro', etc: 'overlay' });
});

/** The PE machine field of an EFI application (IMAGE_FILE_MACHINE_ARM64 is 0xaa64). */
function peMachine(pe: Buffer): number {
  if (pe.subarray(0, 2).toString('latin1') !== 'MZ') throw new Error('not a PE file');
  const at = pe.readUInt32LE(0x3c);
  return pe.readUInt16LE(at + 4);
}

// The installer ISO for arm64: GRUB's arm64-efi from the arm64 root, nothing of the host's x86
// GRUB. Booted under AAVMF to the installer, which reads node1's seed from a GKSEED medium and
// refuses: its rule names a serial no disk has (an install would write and hash the whole
// image under arm64 TCG; the installer's code is the same Node.js as on amd64, installing in
// the iso suite). GEMINIK8S_E2E_ARM64_BOOT=0 leaves the boot out, as above.
test('the arm64 installer ISO: UEFI only, BOOTAA64.EFI from the root; booted under AAVMF its live system runs the installer, which reads the seed medium and writes nothing', async (t) => {
  const built = await buildInstaller(img, 'iso', 'arm64', (m) => t.log(m));
  t.log(`build --output iso (arm64) from the cached root: ${built.seconds ? `${built.seconds} s` : 'cached'}; ${statSync(built.path).size} bytes`);
  const torito = (await runPlan({ cmd: 'xorriso', args: ['-indev', built.path, '-report_el_torito', 'plain'] })).stdout;
  const platforms = [...torito.matchAll(/^El Torito boot img :\s+\d+\s+(\S+)/gm)].map((m) => m[1]);
  t.deepEqual(platforms, ['UEFI'], 'one El Torito image, for UEFI: no BIOS boot record');
  const dir = tempDir('gk-e2e-arm64-iso-');
  await runPlan({ cmd: 'xorriso', args: ['-osirrox', 'on', '-indev', built.path, '-extract', '/efi.img', join(dir, 'efi.img')] });
  await runPlan({ cmd: 'mcopy', args: ['-i', join(dir, 'efi.img'), '::EFI/BOOT/BOOTAA64.EFI', join(dir, 'BOOTAA64.EFI')], env: { MTOOLS_SKIP_CHECK: '1' } });
  t.is(peMachine(readFileSync(join(dir, 'BOOTAA64.EFI'))), 0xaa64, 'IMAGE_FILE_MACHINE_ARM64');
  const files = (await runPlan({ cmd: 'mdir', args: ['-/', '-b', '-i', join(dir, 'efi.img'), '::'], env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
  t.notRegex(files, /bootx64|bootia32/i, 'no x86 EFI loader');
  if (process.env.GEMINIK8S_E2E_ARM64_BOOT === '0') return;

  const site = await pxeSite({ serial: 'NO-SUCH-DISK' });
  const medium = join(dir, 'seed.img');
  const m = await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--format', 'medium', '--out', medium);
  t.is(m.code, 0, m.stderr);
  const blank = await blankDisk(join(dir, 'blank.raw'), 4 * 1024 ** 3, true);
  const before = await sha256Of(blank);
  const vm = await bootVm({ arch: 'arm64', firmware: 'uefi', image: blank, format: 'raw', write: true, diskSerial: TARGET_SERIAL, drives: [{ path: medium, serial: 'GK-SEED', writable: true }], cdrom: built.path, serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const refusal = await onConsole(vm, /refusing to install node1: [^\n]*/, INSTALL_TIMEOUT);
  t.log(refusal);
  t.regex(vm.log(), /geminik8s-live: medium \S+ labelled GK_TEST_0_1_0/, 'the live root came from the ISO');
  t.regex(vm.log(), /the seed of node1 comes from \/dev\/\w+ labelled GKSEED/);
  t.regex(refusal, /no disk matches the rules/);
  await vm.stop();
  t.is(await sha256Of(blank), before, 'the blank disk is byte for byte as before');
});
