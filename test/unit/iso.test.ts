import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { emptySeedSlot, fillSeedSlot, grubMkrescuePlan, isoGrubCfg, isoKernelArgs, isoVolumeId, parseReportLba, SEED_SLOT_BYTES, type IsoBoot } from '#builder/iso/iso.ts';
import { kernelCmdline } from '#builder/render/grub.ts';
import { loadImage } from '#common/config.ts';
import { runPlan } from '#common/exec.ts';
import { rulesFromCmdline } from '#common/install/disks.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';
import { assertGolden } from '../helpers/golden.ts';

const boot = async (arch: 'amd64' | 'arm64' = 'amd64'): Promise<IsoBoot> => {
  const image = await loadImage(join(ROOT, `images/test-${arch}.yaml`));
  return { arch: image.arch, volumeId: isoVolumeId(image.name, image.version), cmdline: kernelCmdline(image), rootfsType: image.rootfs.type, rootSha256: '0'.repeat(64), title: `geminik8s ${image.name} ${image.version} (${image.arch})` };
};

test('the ISO menu: install, or a dry run, from the medium the live boot finds by its label', async (t) => {
  const b = await boot();
  assertGolden(t, 'iso/amd64-grub.cfg', isoGrubCfg(b));
  const install = rulesFromCmdline(isoKernelArgs(b, false).join(' '));
  t.is(install.imageUrl, 'file:///run/geminik8s/live/medium/live/image.raw.zst');
  t.is(install.seedUrl, 'file:///run/geminik8s/live/medium/geminik8s/seed.json');
  t.false(install.dryRun);
  t.deepEqual(install.rules, {}, 'the rules come from the seed, never from the ISO');
  t.true(rulesFromCmdline(isoKernelArgs(b, true).join(' ')).dryRun);
  t.true(isoKernelArgs(b, false).includes(`geminik8s.live.label=${b.volumeId}`));
});

test('the arm64 ISO menu: the same entries on the EFI console, with the arm64 serial console for the kernel and no 16550 serial terminal', async (t) => {
  const cfg = isoGrubCfg(await boot('arm64'));
  assertGolden(t, 'iso/arm64-grub.cfg', cfg);
  t.regex(cfg, /console=ttyAMA0,115200/);
  t.notRegex(cfg, /^serial |^terminal_/m);
  t.is(cfg.match(/^menuentry /gm)?.length, 2);
});

test('the ISO menu passes grub-script-check, and the check fails on a broken menu', async (t) => {
  const dir = tempDir();
  const check = async (text: string): Promise<number | undefined> => {
    writeFileSync(join(dir, 'grub.cfg'), text);
    return (await runPlan({ cmd: 'grub-script-check', args: [join(dir, 'grub.cfg')] }, { allowFailure: true })).exitCode;
  };
  const cfg = isoGrubCfg(await boot());
  t.is(await check(cfg), 0);
  t.not(await check(cfg.replace(/\n}\n/, '\n')), 0);
});

test('the grub-mkrescue plan grafts the big files in place, escaping = in paths, with the label and the build date', (t) => {
  const plan = grubMkrescuePlan('/w/iso-tree', { 'live/vmlinuz': '/w/root/boot/vmlinuz', 'live/root.squashfs': '/w/a=b/root.img' }, '/out/.x.iso.tmp-1', 'GK_TEST_0_1_0', 1700000000);
  t.deepEqual(plan, {
    cmd: 'grub-mkrescue',
    args: ['--output', '/out/.x.iso.tmp-1', '/w/iso-tree', 'live/vmlinuz=/w/root/boot/vmlinuz', 'live/root.squashfs=/w/a\\=b/root.img', '--', '-volid', 'GK_TEST_0_1_0'],
    env: { SOURCE_DATE_EPOCH: '1700000000' },
    title: 'grub-mkrescue .x.iso.tmp-1',
  });
});

test('the arm64 grub-mkrescue plan takes the one GRUB platform it is given (the arm64 root\'s arm64-efi), so no host x86 boot record is added', (t) => {
  const plan = grubMkrescuePlan('/w/iso-tree', {}, '/out/x.iso', 'GK_TEST_0_1_0', 1700000000, '/w/root/usr/lib/grub/arm64-efi');
  t.deepEqual(plan.args.slice(0, 4), ['--directory', '/w/root/usr/lib/grub/arm64-efi', '--output', '/out/x.iso']);
  t.false(grubMkrescuePlan('/w/iso-tree', {}, '/out/x.iso', 'GK_TEST_0_1_0', 1700000000).args.includes('--directory'));
});

test('volume IDs keep to ISO 9660 d-characters and 32 bytes', (t) => {
  t.is(isoVolumeId('test', '0.1.0'), 'GK_TEST_0_1_0');
  t.is(isoVolumeId('edge-site.a', '1.2.3-rc.1+b7'), 'GK_EDGE_SITE_A_1_2_3_RC_1_B7');
  t.is(isoVolumeId('a'.repeat(40), '1.0.0').length, 32);
});

test('the seed slot: empty is JSON null, a seed is padded to the slot, a seed too large for it is refused', (t) => {
  t.is(JSON.parse(emptySeedSlot().toString('utf8')), null);
  const filled = fillSeedSlot('{"node":"node1"}\n')!;
  t.is(filled.length, SEED_SLOT_BYTES);
  t.deepEqual(JSON.parse(filled.toString('utf8')), { node: 'node1' });
  t.is(fillSeedSlot('x'.repeat(SEED_SLOT_BYTES)), undefined);
});

test('report_lba output: the one extent of the file asked for, nothing for a file in several extents or absent', (t) => {
  const out = "Report layout: xt , Startlba ,   Blocks , Filesize , ISO image path\nFile data lba:  0 ,     9650 ,      512 ,  1048576 , '/geminik8s/seed.json'\n";
  t.deepEqual(parseReportLba(out, 'geminik8s/seed.json'), { offset: 9650 * 2048, bytes: 1048576 });
  t.is(parseReportLba(out, 'live/root.squashfs'), undefined);
  t.is(parseReportLba(`${out}File data lba:  1 ,     9999 ,      512 ,  1048576 , '/geminik8s/seed.json'\n`, 'geminik8s/seed.json'), undefined);
});
