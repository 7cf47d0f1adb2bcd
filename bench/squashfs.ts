// npm run bench:squashfs -- [--variants gzip:1M,gzip:128K,lzo:128K,lz4:128K,zstd:128K,xz:128K] [--json FILE]
// Chooses the root slot's file system, codec and block size by measurement. A variant
// `erofs:CODEC-SIZE` makes an EROFS slot with the builder's plan instead (CODEC lz4 or lz4hc,
// SIZE its largest physical cluster: erofs:lz4hc-64K). For each variant it
// makes the test image's slot from its root tree (size, host seconds), writes it into slot A of
// a copy of the disk, boots that directly (kernel and initrd given to QEMU, so GRUB's codec
// support does not limit the choice) under TCG, and times cold reads in the guest, page cache
// dropped before each: start Node.js, import cloud-init, start postgres, read all of /usr.
// Prints figures; asserts nothing.
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { erofsPlan, squashfsPlan } from '#builder/disk/plans.ts';
import { writeAt } from '#builder/disk/steps.ts';
import { partitionOffset } from '#common/install/media.ts';
import { bootVm, GuestShell, READY_MARKER } from '#qemu/index.ts';
import { bootFiles, testImage } from '#lab/test-image.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
};
const variants = arg('--variants', 'gzip:1M,gzip:128K,lzo:128K,lz4:128K,zstd:128K,xz:128K').split(',').map((v) => v.split(':') as [string, string]);
const jsonFile = arg('--json', '');
const TIMEOUT = 20 * 60_000;
const PROBES: Record<string, string> = {
  node: 'node -e 0',
  cloudinit: "python3 -c 'import cloudinit.cmd.main, cloudinit.config.schema'",
  postgres: '/usr/lib/postgresql/*/bin/postgres --version >/dev/null',
  readUsr: 'tar -cf - /usr 2>/dev/null | wc -c >/dev/null',
};

/** The builder's mkfs.erofs plan for a variant `CODEC-SIZE` (lz4hc-64K, lz4-128K). */
function erofsVariant(dir: string, output: string, variant: string): CommandPlan {
  const [codec, size] = variant.split('-');
  return erofsPlan({ dir, output, compression: codec === 'lz4' ? 'lz4' : 'lz4hc', blockSize: (size ?? '128K') as '128K', uuid: '00000000-0000-4000-8000-000000000001', sourceDateEpoch: 1_700_000_000 });
}

const img = await testImage('test-amd64.yaml', (m) => console.log(m));
const work = mkdtempSync(join(tmpdir(), 'gk-bench-squashfs-'));
const rows: Record<string, unknown>[] = [];
try {
  const tree = join(work, 'tree');
  await runPlan({ cmd: 'mkdir', args: [tree] });
  await runPlan({ cmd: 'tar', args: ['-xpf', img.rootfsTar, '-C', tree, '--numeric-owner'] });
  const { kernel, initrd } = await bootFiles(img.rootfsTar, work);
  for (const [comp, block] of variants) {
    const slot = join(work, `slot-${comp}-${block}.sqfs`);
    const started = performance.now();
    await runPlan(comp === 'erofs' ? erofsVariant(tree, slot, block) : squashfsPlan({ dir: tree, output: slot, compression: comp as 'gzip', blockSize: block, sourceDateEpoch: 1_700_000_000 }), { timeoutMs: 60 * 60_000 });
    const mkSeconds = (performance.now() - started) / 1000;
    const bytes = statSync(slot).size;
    const raw = join(work, 'disk.raw');
    await runPlan({ cmd: 'cp', args: ['--sparse=always', img.raw, raw] });
    await writeAt(raw, slot, await partitionOffset(raw, 'ROOT_A'));
    const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: raw, format: 'raw', write: true, console: true, name: `sqfs-${comp}`,
      kernel: { kernel, initrd, append: `root=PARTLABEL=ROOT_A rootfstype=${comp === 'erofs' ? 'erofs' : 'squashfs'} ro geminik8s.slot=A console=tty0 console=ttyS0,115200 panic=10 net.ifnames=0` } });
    const row: Record<string, unknown> = { comp, block, mib: +(bytes / 1048576).toFixed(1), mkSeconds: +mkSeconds.toFixed(1) };
    try {
      const ready = await vm.waitFor(READY_MARKER, TIMEOUT);
      row.readyGuestS = ready.guestUptimeS;
      const shell = await GuestShell.open(vm.consoleSocket!, TIMEOUT);
      await shell.run('timeout 300 systemctl is-system-running --wait >/dev/null 2>&1', 330_000);
      for (const [name, cmd] of Object.entries(PROBES)) {
        const out = await shell.check(`sync; echo 3 > /proc/sys/vm/drop_caches; s=$(cut -d' ' -f1 /proc/uptime); ${cmd}; e=$(cut -d' ' -f1 /proc/uptime); echo "$s $e"`, 600_000);
        const [s, e] = out.trim().split('\n').pop()!.split(' ').map(Number);
        row[`${name}S`] = +(e! - s!).toFixed(2);
      }
      shell.close();
    } finally {
      await vm.stop();
    }
    console.log(JSON.stringify(row));
    rows.push(row);
  }
} finally {
  await runPlan({ cmd: 'rm', args: ['-rf', work] });
}
console.log('\ncodec  block  MiB    mksquashfs s  ready guest s  node s  cloud-init s  postgres s  read /usr s');
for (const r of rows) console.log(`${String(r.comp).padEnd(6)} ${String(r.block).padEnd(6)} ${String(r.mib).padEnd(6)} ${String(r.mkSeconds).padStart(12)} ${String(r.readyGuestS).padStart(14)} ${String(r.nodeS).padStart(7)} ${String(r.cloudinitS).padStart(13)} ${String(r.postgresS).padStart(11)} ${String(r.readUsrS).padStart(12)}`);
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify(rows, null, 2)}\n`);
