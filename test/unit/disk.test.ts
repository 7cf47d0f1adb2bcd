import test from 'ava';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { patchBiosBoot } from '#builder/disk/bios.ts';
import { assertFits, derivedUuid, derivedVolumeId, layoutSeed, partition, planDisk, sfdiskScript } from '#builder/disk/layout.ts';
import { mcopyPlans } from '#common/install/media.ts';
import { erofsPlan, ext4Plan, grubEarlyConfig, grubMkimagePlan, sfdiskPlan, squashfsPlan, vfatPlan } from '#builder/disk/plans.ts';
import { writeAt } from '#builder/disk/steps.ts';
import { runPlan } from '#common/exec.ts';
import { GeminiError } from '#common/errors.ts';
import { assertGolden } from '../helpers/golden.ts';
import { loadImageDef, tempDir } from '../helpers/fixtures.ts';

const EPOCH = 1_700_000_000;

for (const file of ['edge-amd64.yaml', 'edge-arm64.yaml', 'test-amd64.yaml']) {
  test(`partition plan and sfdisk script match their golden files: ${file}`, async (t) => {
    const image = await loadImageDef(file);
    const layout = planDisk(image, layoutSeed(image, EPOCH));
    const name = file.replace(/\.yaml$/, '');
    assertGolden(t, `disk/${name}.layout.json`, `${JSON.stringify(layout, null, 2)}\n`);
    assertGolden(t, `disk/${name}.sfdisk`, sfdiskScript(layout));
  });
}

test('layout: 1 MiB aligned, in order, no overlap, PERSISTENT last, equal slots, room for the backup GPT', async (t) => {
  const image = await loadImageDef('edge-amd64.yaml');
  const layout = planDisk(image, layoutSeed(image, EPOCH));
  t.deepEqual(layout.partitions.map((p) => [p.number, p.name]), [[1, 'BIOS'], [2, 'ESP'], [3, 'CONFIG'], [4, 'ROOT_A'], [5, 'ROOT_B'], [6, 'PERSISTENT']]);
  let end = 1024 ** 2;
  for (const p of layout.partitions) {
    t.is(p.offset % 1024 ** 2, 0, `${p.name} aligned`);
    t.true(p.offset >= end, `${p.name} does not overlap`);
    end = p.offset + p.size;
  }
  t.true(layout.size - end >= 33 * 512, 'backup GPT fits after the last partition');
  t.is(partition(layout, 'rootA').size, partition(layout, 'rootB').size);
  t.is(partition(layout, 'config').label, 'CIDATA', 'cloud-init NoCloud finds the config partition by this label');
});

test('identifiers are derived from the seed: stable for one seed, different for another, well-formed', (t) => {
  const a = derivedUuid('seed-1', 'disk');
  t.is(a, derivedUuid('seed-1', 'disk'));
  t.not(a, derivedUuid('seed-2', 'disk'));
  t.not(a, derivedUuid('seed-1', 'part/ROOT_A'));
  t.regex(a, /^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/);
  t.regex(derivedVolumeId('seed-1', 'fs/esp'), /^[0-9A-F]{8}$/);
});

test('content that does not fit names the partition and the bytes missing', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const slot = partition(planDisk(image, layoutSeed(image, EPOCH)), 'rootA');
  t.notThrows(() => assertFits(slot, slot.size, 'root'));
  const err = t.throws(() => assertFits(slot, slot.size + 4096, 'the root filesystem (squashfs)'), { instanceOf: GeminiError });
  t.is(err?.exitCode, 2);
  t.regex(err!.message, /partition 4 \(ROOT_A\).*4096 bytes .* missing; raise partitions\.root/);
});

test('tool plans snapshot: grub-mkimage per target, mksquashfs, mkfs.erofs, mkfs.ext4, mkfs.vfat, mtools, sfdisk', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const layout = planDisk(image, layoutSeed(image, EPOCH));
  t.snapshot({
    grub: (['i386-pc', 'x86_64-efi', 'arm64-efi'] as const).map((target) => grubMkimagePlan({ target, moduleDir: `/mods/${target}`, earlyConfig: '/w/early.cfg', output: `/w/${target}.img`, sourceDateEpoch: EPOCH })),
    early: grubEarlyConfig(partition(layout, 'esp').fsId!),
    squashfs: squashfsPlan({ dir: '/w/root', output: '/w/root.sqfs', compression: 'xz', sourceDateEpoch: EPOCH }),
    erofs: erofsPlan({ dir: '/w/root', output: '/w/root.erofs', compression: 'lz4hc', blockSize: '64K', uuid: partition(layout, 'rootA').uuid.toLowerCase(), sourceDateEpoch: EPOCH }),
    ext4: ext4Plan({ output: '/w/p.img', part: partition(layout, 'persistent'), sourceDateEpoch: EPOCH }),
    vfat: vfatPlan({ output: '/w/esp.img', part: partition(layout, 'esp'), fat32: true }),
    mtools: mcopyPlans('/w/esp.img', [{ from: '/w/grub.cfg', to: '/grub/grub.cfg' }, { from: '/w/x.efi', to: '/EFI/BOOT/BOOTX64.EFI' }], EPOCH),
    sfdisk: sfdiskPlan('/w/disk.raw', sfdiskScript(layout)),
  });
});

test('BIOS boot patch: boot sector points at core.img, drive check off, partition table kept, blocklist names the rest', (t) => {
  const bootImg = Buffer.alloc(512, 0xaa);
  const mbr = Buffer.alloc(512);
  mbr.fill(0x11, 440, 510);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const coreImg = Buffer.alloc(512 * 3 + 100, 0x33);
  coreImg.fill(0, 500, 512);
  const { mbr: out, core } = patchBiosBoot({ bootImg, coreImg, mbr, coreSector: 2048, maxCoreBytes: 1024 ** 2 });
  t.is(out.readBigUInt64LE(0x5c), 2048n);
  t.is(out[0x64], 0xff);
  t.deepEqual([...out.subarray(0x66, 0x68)], [0x90, 0x90]);
  t.deepEqual(out.subarray(440), mbr.subarray(440), 'disk signature, partition table and 0x55AA untouched');
  t.is(out[0], 0xaa);
  t.is(core.length, 512 * 4, 'padded to whole sectors');
  t.is(core.readBigUInt64LE(500), 2049n);
  t.is(core.readUInt16LE(508), 3);
  t.is(core.readUInt16LE(510), 0x820);
  t.throws(() => patchBiosBoot({ bootImg, coreImg, mbr, coreSector: 2048, maxCoreBytes: 1024 }), { message: /does not fit the BIOS boot partition/ });
});

test('a miniature disk assembled from real tools: GPT readable by sfdisk, filesystems found at their offsets, real GRUB core patched', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const small = { ...image, partitions: { esp: 33 * 1024 ** 2, config: 4 * 1024 ** 2, root: 8 * 1024 ** 2, persistent: 8 * 1024 ** 2 } };
  const layout = planDisk(small, layoutSeed(small, EPOCH));
  const dir = tempDir('gk-disk-');
  const tree = join(dir, 'root');
  mkdirSync(join(tree, 'boot'), { recursive: true });
  writeFileSync(join(tree, 'boot/vmlinuz'), 'kernel');
  const sq = join(dir, 'root.sqfs');
  await runPlan(squashfsPlan({ dir: tree, output: sq, compression: 'gzip', sourceDateEpoch: EPOCH }));
  const esp = join(dir, 'esp.img');
  await runPlan(vfatPlan({ output: esp, part: partition(layout, 'esp'), fat32: true }));
  const cfg = join(dir, 'grub.cfg');
  writeFileSync(cfg, 'echo hello\n');
  for (const p of mcopyPlans(esp, [{ from: cfg, to: '/grub/grub.cfg' }], EPOCH)) await runPlan(p);
  const persistent = join(dir, 'persistent.img');
  await runPlan(ext4Plan({ output: persistent, part: partition(layout, 'persistent'), sourceDateEpoch: EPOCH }));
  const core = join(dir, 'core.img');
  const early = join(dir, 'early.cfg');
  writeFileSync(early, grubEarlyConfig(partition(layout, 'esp').fsId!));
  await runPlan(grubMkimagePlan({ target: 'i386-pc', moduleDir: '/usr/lib/grub/i386-pc', earlyConfig: early, output: core, sourceDateEpoch: EPOCH }));

  const raw = join(dir, 'disk.raw');
  writeFileSync(raw, '');
  await runPlan({ cmd: 'truncate', args: ['-s', String(layout.size), raw] });
  await runPlan(sfdiskPlan(raw, sfdiskScript(layout)));
  await writeAt(raw, esp, partition(layout, 'esp').offset);
  await writeAt(raw, sq, partition(layout, 'rootA').offset);
  await writeAt(raw, persistent, partition(layout, 'persistent').offset);
  const bios = partition(layout, 'biosBoot');
  const patched = patchBiosBoot({ bootImg: readFileSync('/usr/lib/grub/i386-pc/boot.img'), coreImg: readFileSync(core), mbr: readFileSync(raw).subarray(0, 512), coreSector: bios.offset / 512, maxCoreBytes: bios.size });
  const fd = await open(raw, 'r+');
  await fd.write(patched.mbr, 0, 512, 0);
  await fd.write(patched.core, 0, patched.core.length, bios.offset);
  await fd.close();

  const table = JSON.parse((await runPlan({ cmd: 'sfdisk', args: ['-J', raw] })).stdout).partitiontable;
  t.is(table.id, layout.diskGuid);
  t.deepEqual(table.partitions.map((p: { name: string; start: number; uuid: string }) => [p.name, p.start * 512, p.uuid]), layout.partitions.map((p) => [p.name, p.offset, p.uuid]));
  const probe = async (offset: number, tag: string): Promise<string> => (await runPlan({ cmd: 'blkid', args: ['-p', '-o', 'value', '-s', tag, '-O', String(offset), raw] })).stdout.trim();
  t.is(await probe(partition(layout, 'esp').offset, 'TYPE'), 'vfat');
  t.is(await probe(partition(layout, 'esp').offset, 'UUID'), `${partition(layout, 'esp').fsId!.slice(0, 4)}-${partition(layout, 'esp').fsId!.slice(4)}`);
  t.is(await probe(partition(layout, 'rootA').offset, 'TYPE'), 'squashfs');
  t.is(await probe(partition(layout, 'persistent').offset, 'LABEL'), 'PERSISTENT');
  t.is(await probe(partition(layout, 'persistent').offset, 'UUID'), partition(layout, 'persistent').fsId!);
  const head = readFileSync(raw).subarray(0, 512);
  t.is(head.readUInt16LE(510), 0xaa55, 'protective MBR signature kept');
  t.is(head[450], 0xee, 'protective MBR partition type kept');
  t.true(statSync(raw).blocks * 512 < layout.size, 'holes stay holes');
});
