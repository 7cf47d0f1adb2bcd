import test from 'ava';
import { chooseDisk, describeDisks, parseDisks, parseSize, rulesFromCmdline, validateDiskRules, type Disk, type DiskRules } from '#common/install/disks.ts';

const GiB = 1024 ** 3;
// Two blank disks of different sizes and serials, an NVMe, and the USB stick the installer booted from.
const LSBLK = JSON.stringify({
  blockdevices: [
    { name: '/dev/sda', path: '/dev/sda', type: 'disk', size: 32 * GiB, model: 'QEMU HARDDISK   ', serial: 'SMALL-1', rota: true, ro: false, rm: false, tran: 'sata', mountpoints: [null] },
    { name: '/dev/sdb', path: '/dev/sdb', type: 'disk', size: 64 * GiB, model: 'QEMU HARDDISK', serial: 'BIG-2', rota: true, ro: false, rm: false, tran: 'sata', mountpoints: [null] },
    { name: '/dev/nvme0n1', path: '/dev/nvme0n1', type: 'disk', size: 64 * GiB, model: 'Samsung SSD 980', serial: 'S64DNX0R', rota: false, ro: false, rm: false, tran: 'nvme', mountpoints: [null] },
    {
      name: '/dev/sdc', path: '/dev/sdc', type: 'disk', size: 64 * GiB, model: 'Ultra', serial: 'USB-STICK', rota: false, ro: false, rm: true, tran: 'usb', mountpoints: [null],
      children: [{ name: '/dev/sdc1', path: '/dev/sdc1', type: 'part', size: 64 * GiB, mountpoints: ['/run/live/medium'] }],
    },
    { name: '/dev/sr0', path: '/dev/sr0', type: 'rom', size: 900_000_000, model: 'QEMU DVD-ROM', serial: 'QM00003', rota: true, ro: false, rm: true, tran: 'ata', mountpoints: [null] },
    { name: '/dev/zram0', path: '/dev/zram0', type: 'disk', size: 0, rota: false, ro: false, rm: false, tran: null, mountpoints: ['[SWAP]'] },
  ],
});
const LINKS = {
  byId: { 'ata-QEMU_HARDDISK_SMALL-1': '/dev/sda', 'ata-QEMU_HARDDISK_BIG-2': '/dev/sdb', 'nvme-Samsung_SSD_980_S64DNX0R': '/dev/nvme0n1', 'usb-Ultra_USB-STICK-0:0': '/dev/sdc' },
  byPath: { 'pci-0000:00:1f.2-ata-1': '/dev/sda', 'pci-0000:00:1f.2-ata-2': '/dev/sdb', 'pci-0000:00:04.0-nvme-1': '/dev/nvme0n1' },
};
const disks = (): Disk[] => parseDisks(LSBLK, LINKS);
const IMAGE = 4 * GiB;
const choose = (rules: DiskRules, boot: string[] = ['/dev/sdc']) => chooseDisk(disks(), rules, boot, IMAGE);

test('lsblk and the by-id/by-path links become disks; CD drives and zram are never targets', (t) => {
  const d = disks();
  t.deepEqual(d.map((x) => x.path), ['/dev/sda', '/dev/sdb', '/dev/nvme0n1', '/dev/sdc']);
  t.deepEqual(d.map((x) => x.type), ['hdd', 'hdd', 'nvme', 'ssd']);
  t.is(d[0]!.model, 'QEMU HARDDISK');
  t.deepEqual(d[0]!.byId, ['ata-QEMU_HARDDISK_SMALL-1']);
  t.deepEqual(d[3]!.mounts, ['/dev/sdc1 on /run/live/medium']);
  t.true(d[3]!.removable);
});

test('each rule alone picks its disk; rules combine with AND', (t) => {
  const pick = (rules: DiskRules): string => {
    const c = choose(rules);
    return c.ok ? c.disk.path : `refused: ${c.reason}`;
  };
  t.is(pick({ serial: 'SMALL-1' }), '/dev/sda');
  t.is(pick({ device: '/dev/sdb' }), '/dev/sdb');
  t.is(pick({ byId: '/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNX0R' }), '/dev/nvme0n1');
  t.is(pick({ byPath: 'pci-0000:00:1f.2-ata-2' }), '/dev/sdb');
  t.is(pick({ model: 'Samsung*' }), '/dev/nvme0n1');
  t.is(pick({ maxSize: '40GiB' }), '/dev/sda');
  t.is(pick({ type: 'nvme' }), '/dev/nvme0n1');
  t.is(pick({ type: 'hdd', minSize: '50GiB' }), '/dev/sdb');
  t.is(pick({ model: 'QEMU*', serial: 'BIG-2', minSize: '60GiB', maxSize: '70GiB', type: 'hdd' }), '/dev/sdb');
});

test('zero or several matches refuse and list every disk with its attributes; never the largest', (t) => {
  const several = choose({ minSize: '50GiB' });
  t.false(several.ok);
  if (several.ok) return;
  t.regex(several.reason, /2 disks match the rules \(\/dev\/sdb, \/dev\/nvme0n1\)/);
  const listed = describeDisks(several.verdicts, { minSize: '50GiB' });
  for (const d of ['/dev/sda', '/dev/sdb', '/dev/nvme0n1', '/dev/sdc']) t.true(listed.includes(`  ${d}  `), listed);
  t.regex(listed, /\/dev\/sda {2}hdd {2}32\.0 GiB \(34359738368 B\) {2}model "QEMU HARDDISK" {2}serial "SMALL-1" {2}sata\n {6}by-id: ata-QEMU_HARDDISK_SMALL-1\n {6}by-path: pci-0000:00:1f\.2-ata-1\n {6}no: smaller than 50GiB/);
  t.regex(listed, /\/dev\/sdc .*removable\n.*\n {6}never: the medium this installer booted from, in use \(\/dev\/sdc1 on \/run\/live\/medium\)/);

  const none = choose({ serial: 'NOPE' });
  t.false(none.ok);
  if (!none.ok) t.is(none.reason, 'no disk matches the rules');
  const contradict = choose({ type: 'nvme', maxSize: '40GiB' });
  t.false(contradict.ok);
  const empty = choose({});
  t.false(empty.ok);
  if (!empty.ok) t.regex(empty.reason, /never picks a disk by itself/);
});

test('the boot medium, a mounted, read-only or too small disk is never taken, even when the rules name it', (t) => {
  const own = choose({ serial: 'USB-STICK' }, ['/dev/sdc']);
  t.false(own.ok);
  if (!own.ok) t.regex(own.reason, /\/dev\/sdc matches but is the medium this installer booted from/);
  // Even unmounted: the boot disk stays excluded.
  const unmounted = chooseDisk(disks().map((d) => ({ ...d, mounts: [] })), { serial: 'USB-STICK' }, ['/dev/sdc'], IMAGE);
  t.false(unmounted.ok);
  const small = chooseDisk(disks(), { serial: 'SMALL-1' }, [], 40 * GiB);
  t.false(small.ok);
  if (!small.ok) t.regex(small.reason, /\/dev\/sda matches but is 34359738368 bytes, the image needs 42949672960/);
  const ro = chooseDisk(disks().map((d) => (d.path === '/dev/sda' ? { ...d, readOnly: true } : d)), { serial: 'SMALL-1' }, [], IMAGE);
  t.false(ro.ok);
  // Rules that match the boot medium and one other disk take the other one.
  const other = choose({ minSize: '50GiB' }, ['/dev/nvme0n1']);
  t.true(other.ok);
  if (other.ok) t.is(other.disk.path, '/dev/sdb');
});

test('rules from the kernel command line and from a seed are checked with their paths', (t) => {
  const c = rulesFromCmdline('BOOT_IMAGE=/vmlinuz quiet geminik8s.install.serial=SMALL-1 geminik8s.install.min_size=16GiB geminik8s.install.model="QEMU HARDDISK" geminik8s.install.dry_run=1 geminik8s.install.seed_url=http://10.0.2.2:8080/seed/52-54-00-12-34-56');
  t.deepEqual(c.rules, { serial: 'SMALL-1', minSize: '16GiB', model: 'QEMU HARDDISK' });
  t.true(c.dryRun);
  t.is(c.seedUrl, 'http://10.0.2.2:8080/seed/52-54-00-12-34-56');
  t.false(rulesFromCmdline('geminik8s.install.type=ssd').dryRun);

  t.deepEqual(validateDiskRules(c.rules, 'cmdline').rules, c.rules);
  const bad = validateDiskRules({ minSize: '10 parsecs', type: 'tape', colour: 'red' }, 'seed.yaml');
  t.deepEqual(bad.issues.map((i) => i.path).sort(), ['', 'minSize', 'type']);
  t.regex(bad.issues.find((i) => i.path === 'minSize')!.message, /expected a size such as 64GiB/);
  const crossed = validateDiskRules({ minSize: '2T', maxSize: '1T' }, 'seed.yaml');
  t.is(crossed.issues[0]!.path, 'minSize');
  t.regex(validateDiskRules({}, 'cmdline').issues[0]!.message, /never picks a disk by itself/);
  t.is(parseSize('64GiB'), 64 * GiB);
  t.is(parseSize('500GB'), 500e9);
  t.is(parseSize('1048576'), 1048576);
  t.is(parseSize('12 furlongs'), undefined);
});
