import test from 'ava';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { loadImage } from '#common/config.ts';
import { sha256File } from '#builder/components/fetch.ts';
import { partitionOffset } from '#common/install/media.ts';
import { slotBootPath } from '#common/render/paths.ts';
import { bootVm, parseMarkerFields, READY_MARKER, type Vm } from '#qemu/index.ts';
import { cli } from '#lab/cli.ts';
import { freePort, MAC1, pxeSite, startPxeServe } from '../../helpers/pxe.ts';
import { kernelCmdline } from '#builder/render/grub.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { bootFiles, testImage, type BuiltImage } from '#lab/test-image.ts';

// The offline test image (Kubernetes layer off), built once per source state and cached.
// Boots run under TCG; a boot of this image takes 1.5 to 3 minutes here.
const BOOT_TIMEOUT = 8 * 60_000;
let img: BuiltImage;
const vms: Vm[] = [];

test.before(async (t) => {
  img = await testImage('test-amd64.yaml', (m) => t.log(m));
  if (img.buildSeconds) t.log(`full build (rootfs + disk): ${img.buildSeconds.toFixed(0)} s`);
});

test.afterEach.always(async () => {
  for (const vm of vms.splice(0)) await vm.stop();
});


/** Copy the raw image sparsely, so a test may change it. */
async function scratchCopy(): Promise<string> {
  const copy = join(tempDir('gk-e2e-boot-'), 'disk.raw');
  await runPlan({ cmd: 'cp', args: ['--sparse=always', img.raw, copy] });
  return copy;
}

/** Read or change the GRUB environment block on a raw image's ESP, with mtools and grub-editenv. */
async function grubenv(raw: string, set?: string[]): Promise<Record<string, string>> {
  const at = `${raw}@@${await partitionOffset(raw, 'ESP')}`;
  const local = join(tempDir(), 'grubenv');
  await runPlan({ cmd: 'mcopy', args: ['-i', at, '::grub/grubenv', local] });
  if (set) {
    await runPlan({ cmd: 'grub-editenv', args: [local, 'set', ...set] });
    await runPlan({ cmd: 'mcopy', args: ['-o', '-i', at, local, '::grub/grubenv'] });
  }
  const list = (await runPlan({ cmd: 'grub-editenv', args: [local, 'list'] })).stdout;
  return Object.fromEntries(list.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

test('outputs: raw, qcow2 with sha256 sums and a report; nothing temporary left', async (t) => {
  const names = readdirSync(img.dir).sort();
  t.true(names.includes('test-0.1.0-amd64.raw') && names.includes('test-0.1.0-amd64.qcow2'), names.join(' '));
  t.deepEqual(names.filter((n) => n.startsWith('.')), [], 'no temporary files');
  for (const f of [img.raw, img.qcow2]) {
    const [sum, name] = readFileSync(`${f}.sha256`, 'utf8').trim().split(/\s+/);
    t.is(name, f.split('/').pop());
    t.is(sum, await sha256File(f), `${name}: sha256 file matches`);
  }
  const report = img.report as { partitions: { name: string; size: number; used: number | null }[]; outputs: unknown[] };
  t.deepEqual(report.partitions.map((p) => p.name), ['BIOS', 'ESP', 'CONFIG', 'ROOT_A', 'ROOT_B', 'PERSISTENT']);
  const rootA = report.partitions.find((p) => p.name === 'ROOT_A')!;
  t.true(rootA.used! > 100 * 1024 ** 2 && rootA.used! < rootA.size, `slot A holds ${rootA.used} bytes`);
  t.log(JSON.stringify(report.partitions));
});

test('the same root tar, definition and SOURCE_DATE_EPOCH give a byte-identical raw image; --output pxe gives pxe serve the same kernel, initrd, slot and image', async (t) => {
  const out = tempDir('gk-e2e-repro-');
  const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'disk', '--rootfs-tar', img.rootfsTar, '--output', 'raw,qcow2,pxe', '--out', out, '--json');
  t.is(r.code, 0, r.stderr.slice(-3000));
  t.is(await sha256File(join(out, 'test-0.1.0-amd64.raw')), await sha256File(img.raw), 'raw images differ');
  t.is(await sha256File(join(out, 'test-0.1.0-amd64.qcow2')), await sha256File(img.qcow2), 'qcow2 images differ');

  const pxe = join(out, 'test-0.1.0-amd64.pxe');
  t.deepEqual(readdirSync(out).filter((n) => n.startsWith('.')), [], 'no temporary files');
  t.deepEqual(readdirSync(pxe).sort(), ['SHA256SUMS', 'image.raw.zst', 'initrd.img', 'pxe.json', 'root.squashfs', 'vmlinuz']);
  t.is((await runPlan({ cmd: 'sha256sum', args: ['-c', '--quiet', 'SHA256SUMS'], cwd: pxe }, { allowFailure: true })).exitCode, 0, 'SHA256SUMS');
  // The kernel and initrd GRUB boots from the ESP; the slot as written into ROOT_A; the whole image.
  const esp = `${img.raw}@@${await partitionOffset(img.raw, 'ESP')}`;
  for (const name of ['vmlinuz', 'initrd.img'] as const) {
    const local = join(tempDir(), name);
    await runPlan({ cmd: 'mcopy', args: ['-i', esp, `::${slotBootPath('A', name)}`, local] });
    t.is(await sha256File(join(pxe, name)), await sha256File(local), name);
  }
  const slot = readFileSync(join(pxe, 'root.squashfs'));
  const rootA = await partitionOffset(img.raw, 'ROOT_A');
  const inImage = (await runPlan({ cmd: 'sh', args: ['-c', `tail -c +${rootA + 1} ${img.raw} | head -c ${slot.length} | sha256sum`] })).stdout.split(' ')[0] ?? '';
  t.is(createHash('sha256').update(slot).digest('hex'), inImage, 'root.squashfs is ROOT_A');
  const unpacked = (await runPlan({ cmd: 'sh', args: ['-c', `zstd -d -c -q ${join(pxe, 'image.raw.zst')} | sha256sum`] })).stdout.split(' ')[0] ?? '';
  t.is(unpacked, await sha256File(img.raw), 'image.raw.zst is the raw image');
  const meta = JSON.parse(readFileSync(join(pxe, 'pxe.json'), 'utf8')) as { cmdline: string; rootfsType: string; version: string };
  t.like(meta, { cmdline: kernelCmdline(await loadImage(join(ROOT, 'images/test-amd64.yaml'))), rootfsType: 'squashfs', version: '0.1.0' });

  // pxe serve takes the directory as it is, without --image.
  const site = await pxeSite({ serial: 'SMALL-1' });
  const port = await freePort();
  const serve = await startPxeServe(pxe, site.clusterFile, port, { image: false });
  t.teardown(serve.stop);
  const script = await (await fetch(`${serve.base}/boot?mac=${MAC1}`)).text();
  t.true(script.includes(`geminik8s.install.serial=SMALL-1 ${meta.cmdline}`), script);
  const kernel = Buffer.from(await (await fetch(`${serve.base}/files/vmlinuz`)).arrayBuffer());
  t.is(createHash('sha256').update(kernel).digest('hex'), await sha256File(join(pxe, 'vmlinuz')));
});

test('BIOS (SeaBIOS): boots slot A to the marker; root read-only, /etc an overlay, PERSISTENT grown and kept across a reboot', async (t) => {
  // A disk larger than the image, as when it is flashed onto a bigger drive.
  const dir = tempDir('gk-e2e-bios-');
  const disk = join(dir, 'disk.qcow2');
  const size = (await runPlan({ cmd: 'qemu-img', args: ['info', '--output=json', img.raw] })).stdout;
  const bigger = JSON.parse(size)['virtual-size'] + 1024 ** 3;
  await runPlan({ cmd: 'qemu-img', args: ['create', '-q', '-f', 'qcow2', '-b', img.raw, '-F', 'raw', disk, String(bigger)] });
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk, format: 'qcow2', write: true, serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const first = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  t.log(`BIOS boot: ${first.line} (wall ${(first.elapsedMs / 1000).toFixed(0)} s)`);
  const f = parseMarkerFields(first.line);
  t.like(f, { slot: 'A', role: 'unconfigured', root: 'ro', etc: 'overlay', boots: '1' });
  t.regex(f.persistent!, /^\/dev\/vda6/);
  const persistentMiB = Number(/:([\d.]+)G$/.exec(f.persistent!)?.[1] ?? 0) * 1024 || Number(/:([\d.]+)M$/.exec(f.persistent!)?.[1] ?? 0);
  t.true(persistentMiB > 1200, `PERSISTENT grown from 512 MiB to fill the disk: ${f.persistent}`);
  t.regex(vm.log(), /UNCONFIGURED: .*no geminik8s seed found/, 'no seed: the node says why on its console');
  t.regex(vm.log(), /geminik8s: cloud-init skip: no seed medium with NoCloud data/, 'the empty CONFIG partition is no NoCloud source: cloud-init stays off');
  t.notRegex(vm.log(), /Cloud-init: (Local|Network) Stage|cloud-init\[\d+\]/, 'no cloud-init unit ran');

  const mark = vm.mark();
  await vm.reset();
  const second = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT, { since: mark });
  t.like(parseMarkerFields(second.line), { slot: 'A', root: 'ro', boots: '2' }, 'the boot counter on PERSISTENT survived the reboot');
});

test('UEFI (OVMF): boots slot A to the marker', async (t) => {
  const vm = await bootVm({ arch: 'amd64', firmware: 'uefi', image: img.qcow2, format: 'qcow2', serialLog: join(tempDir('gk-e2e-uefi-'), 'serial.log') });
  vms.push(vm);
  const ready = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  t.log(`UEFI boot: ${ready.line} (wall ${(ready.elapsedMs / 1000).toFixed(0)} s)`);
  t.like(parseMarkerFields(ready.line), { slot: 'A', root: 'ro', etc: 'overlay' });
});

test('a try of a slot whose kernel cannot boot falls back to the active slot once its tries are spent', async (t) => {
  const raw = await scratchCopy();
  // Slot B: a real kernel and an initrd that is not one, on the ESP where GRUB loads a slot's
  // kernel from, so the kernel panics (panic=10 reboots).
  const tree = tempDir('gk-e2e-badslot-');
  const { kernel } = await bootFiles(img.rootfsTar, tree);
  const badInitrd = join(tree, 'initrd.img');
  writeFileSync(badInitrd, Buffer.alloc(65536, 0x5a));
  const esp = `${raw}@@${await partitionOffset(raw, 'ESP')}`;
  await runPlan({ cmd: 'mmd', args: ['-i', esp, `::${dirname(slotBootPath('B', 'vmlinuz'))}`] });
  await runPlan({ cmd: 'mcopy', args: ['-i', esp, kernel, `::${slotBootPath('B', 'vmlinuz')}`] });
  await runPlan({ cmd: 'mcopy', args: ['-i', esp, badInitrd, `::${slotBootPath('B', 'initrd.img')}`] });
  const image = await loadImage(join(ROOT, 'images/test-amd64.yaml'));
  t.deepEqual(await grubenv(raw, ['try_slot=B', `try_count=${image.boot.tries}`]), { active_slot: 'A', try_slot: 'B', try_count: String(image.boot.tries) });

  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: raw, format: 'raw', write: true, serialLog: join(tempDir('gk-e2e-fallback-'), 'serial.log') });
  vms.push(vm);
  const ready = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT + 3 * 60_000);
  const log = vm.log();
  t.log(`fallback: ${ready.line} (wall ${(ready.elapsedMs / 1000).toFixed(0)} s)`);
  t.is((log.match(/geminik8s: booting slot B/g) ?? []).length, image.boot.tries, 'slot B was tried once per try');
  t.regex(log, /Kernel panic/);
  t.regex(log, /tries of slot B are spent; falling back to slot A/);
  t.like(parseMarkerFields(ready.line), { slot: 'A', root: 'ro' });
  await vm.stop();
  t.deepEqual(await grubenv(raw), { active_slot: 'A', try_slot: '', try_count: '0' }, 'GRUB cleared the spent try; A stays active');
});

test('a generic image carries no seed: the config partition holds only its README', async (t) => {
  const config = await partitionOffset(img.raw, 'CONFIG');
  const listing = (await runPlan({ cmd: 'mdir', args: ['-b', '-/', '-i', `${img.raw}@@${config}`, '::'] })).stdout.trim().split('\n');
  t.deepEqual(listing, ['::/README.txt']);
  const label = (await runPlan({ cmd: 'blkid', args: ['-p', '-o', 'value', '-s', 'LABEL', '-O', String(config), img.raw] })).stdout.trim();
  t.is(label, 'CIDATA');
});

test("slot A's kernel and initrd are on the ESP, the same bytes as the slot's /boot", async (t) => {
  const esp = `${img.raw}@@${await partitionOffset(img.raw, 'ESP')}`;
  const tree = tempDir('gk-e2e-espboot-');
  // The names are links to the versioned files: extract those too.
  await runPlan({ cmd: 'tar', args: ['-xf', img.rootfsTar, '-C', tree, '--wildcards', './boot/vmlinuz*', './boot/initrd.img*'] });
  for (const name of ['vmlinuz', 'initrd.img'] as const) {
    const local = join(tempDir(), name);
    await runPlan({ cmd: 'mcopy', args: ['-i', esp, `::${slotBootPath('A', name)}`, local] });
    t.is(await sha256File(local), await sha256File(join(tree, 'boot', name)), name);
  }
});
