import test from 'ava';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootVm, parseMarkerFields, READY_MARKER, type Vm } from '#qemu/index.ts';
import { until } from '#lab/guest-cluster.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { blankDisk, BOOT_TIMEOUT, buildInstaller, INSTALL_TIMEOUT, OTHER_SERIAL, PANIC, sha256Of, TARGET_SERIAL } from '../../helpers/installer-e2e.ts';
import { freePort, MAC1, pxeSite, startPxeServe } from '../../helpers/pxe.ts';
import { testImage, type BuiltImage } from '#lab/test-image.ts';

// A machine on QEMU's user network boots iPXE from its NIC ROM, gets the chain script from
// QEMU's own DHCP and TFTP (a factory's dnsmasq in real life), and reaches `pxe serve` on
// 127.0.0.1 through a guest forward: 10.0.2.100:80 in the guest, one relay process per TCP
// connection (QEMU guestfwd cmd:), so the guest network stays restrict=on.
const SERVER_IN_GUEST = '10.0.2.100';
const UNKNOWN_MAC = '52:54:00:aa:00:99';

let img: BuiltImage;
let pxeDir: string;
const vms: Vm[] = [];

test.before(async (t) => {
  img = await testImage('test-amd64.yaml', (m) => t.log(m));
  const built = await buildInstaller(img, 'pxe', 'amd64', (m) => t.log(m));
  pxeDir = built.path;
  t.log(`build --output pxe from the cached root: ${built.seconds ? `${built.seconds} s` : 'cached'}; root.squashfs ${statSync(join(pxeDir, 'root.squashfs')).size} bytes, image.raw.zst ${statSync(join(pxeDir, 'image.raw.zst')).size} bytes`);
});

test.afterEach.always(async () => {
  for (const vm of vms.splice(0)) await vm.stop();
});

/** pxe serve on loopback for the guests, and QEMU's TFTP directory holding the chain script it serves. */
async function server(disk: Record<string, string>): Promise<{ serve: Awaited<ReturnType<typeof startPxeServe>>; tftp: string; port: number }> {
  const site = await pxeSite(disk);
  const port = await freePort();
  const serve = await startPxeServe(pxeDir, site.clusterFile, port, { image: false, baseUrl: `http://${SERVER_IN_GUEST}` });
  const tftp = tempDir('gk-e2e-pxe-tftp-');
  writeFileSync(join(tftp, 'boot.ipxe'), await (await fetch(`${serve.base}/boot.ipxe`)).text());
  return { serve, tftp, port };
}

function netboot(mac: string, tftp: string, port: number) {
  return [{ kind: 'user' as const, mac, guestfwd: [{ addr: SERVER_IN_GUEST, port: 80, cmd: `${process.execPath} ${join(ROOT, 'qemu/tcp-relay.mjs')} 127.0.0.1 ${port}` }], netboot: { tftp, bootfile: 'boot.ipxe' } }];
}

test.serial('a machine whose MAC is not in cluster.yaml is refused by the server and nothing is written', async (t) => {
  const { serve, tftp, port } = await server({ serial: TARGET_SERIAL });
  t.teardown(serve.stop);
  const dir = tempDir('gk-e2e-pxe-stranger-');
  const disk = await blankDisk(join(dir, 'disk.raw'), 4 * 1024 ** 3, true);
  const before = await sha256Of(disk);
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk, format: 'raw', write: true, diskSerial: TARGET_SERIAL, networks: netboot(UNKNOWN_MAC, tftp, port), serialLog: join(dir, 'serial.log') });
  vms.push(vm);
  const refused = await until('the server to refuse the unknown MAC', BOOT_TIMEOUT, async () => serve.events().find((e) => e.mac === UNKNOWN_MAC && e.kind === 'refused'));
  t.log(`refused: ${JSON.stringify(refused)}`);
  // The script it got says so, waits 10 s and exits; the firmware then finds no bootable disk.
  await new Promise((r) => setTimeout(r, 20_000));
  t.false(serve.events().some((e) => e.mac === UNKNOWN_MAC && e.kind !== 'refused'), 'no installer and no seed for it');
  await vm.stop();
  t.is(await sha256Of(disk), before, 'its disk is byte for byte as before');
});

test.serial('PXE: iPXE chains to pxe serve, the live installer picks the disk by serial, writes it, and the machine reboots into it as its node with its own seed', async (t) => {
  const { serve, tftp, port } = await server({ serial: TARGET_SERIAL });
  t.teardown(serve.stop);
  const dir = tempDir('gk-e2e-pxe-install-');
  const imageBytes = statSync(img.raw).size;
  // Two blank disks: the target, just big enough, and a larger one the rule must leave alone.
  const target = await blankDisk(join(dir, 'target.raw'), imageBytes + 256 * 1024 ** 2);
  const other = await blankDisk(join(dir, 'other.raw'), imageBytes + 2 * 1024 ** 3, true);
  const otherBefore = await sha256Of(other);
  const started = Date.now();
  const vm = await bootVm({
    arch: 'amd64',
    firmware: 'bios',
    image: target,
    format: 'raw',
    write: true,
    diskSerial: TARGET_SERIAL,
    drives: [{ path: other, serial: OTHER_SERIAL, writable: true }],
    networks: netboot(MAC1, tftp, port),
    console: true,
    serialLog: join(dir, 'serial.log'),
  });
  vms.push(vm);
  const stages = () => serve.events().filter((e) => e.mac === MAC1 && e.kind === 'stage');
  const last = await until('the installer to finish (stage rebooting or failed)', INSTALL_TIMEOUT, async () => {
    if (PANIC.test(vm.log())) return { stage: 'panic', detail: 'the guest panicked' };
    return stages().find((e) => e.stage === 'rebooting' || e.stage === 'failed');
  });
  const installedAt = Date.now();
  t.log(`install stages: ${stages().map((e) => `${e.stage}${e.detail ? ` (${e.detail.slice(0, 120)})` : ''} at ${e.at}`).join('; ')}`);
  t.is(last.stage, 'rebooting', `${last.detail ?? ''}\n${vm.log().slice(-4000)}`);
  t.deepEqual(stages().map((e) => e.stage), ['booted', 'disk-chosen', 'written', 'verified', 'seeded', 'rebooting']);
  t.regex(stages().find((e) => e.stage === 'disk-chosen')!.detail!, new RegExp(`serial ${TARGET_SERIAL}`));
  const fetched = /geminik8s-live: fetched (\d+) bytes in (\d+) s/.exec(vm.log());
  t.truthy(fetched, 'the live root was fetched');
  t.regex(vm.log(), /geminik8s-live: sha256 matches/, 'and its sha256 checked');
  t.is(Number(fetched![1]), statSync(join(pxeDir, 'root.squashfs')).size);
  t.true(serve.events().some((e) => e.mac === MAC1 && e.kind === 'seed'), 'the seed went to its MAC');

  const ready = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  const f = parseMarkerFields(ready.line);
  t.log(`installed system: ${ready.line}`);
  t.like(f, { slot: 'A', role: 'leader', root: 'ro', etc: 'overlay', boots: '1' });
  t.regex(f.persistent!, /^\/dev\/vd/);
  t.true(serve.events().some((e) => e.mac === MAC1 && e.kind === 'boot-disk'), 'after the install the server sent it to its disk');
  t.log(`power-on to installed: ${((installedAt - started) / 1000).toFixed(0)} s wall; installed to READY: ${((Date.now() - installedAt) / 1000).toFixed(0)} s wall (guest uptime ${f.uptime} s); live root ${fetched![1]} bytes in ${fetched![2]} s of guest time`);
  await vm.stop();
  t.is(await sha256Of(other), otherBefore, 'the other disk is byte for byte as before');
});
