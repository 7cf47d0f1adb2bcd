import test from 'ava';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { shellQuote, type CommandPlan } from '#common/exec.ts';
import { archFromFileName, formatFromFileName, overlayPlan, qemuOptionProblems, qemuPlan, type QemuOptions } from '#qemu/plan.ts';
import { assertGolden } from '../helpers/golden.ts';

const RUN = '/run/gk-qemu-test';

/** One option and its value per line, like a hand-written shell script: easy to review in a diff. */
function render(plan: CommandPlan): string {
  const lines: string[] = [];
  for (let i = 0; i < plan.args.length; i++) {
    const a = plan.args[i]!;
    const next = plan.args[i + 1];
    if (a.startsWith('-') && next !== undefined && !next.startsWith('-')) {
      lines.push(`${a} ${shellQuote(next)}`);
      i++;
    } else lines.push(a);
  }
  return `${plan.cmd} \\\n${lines.map((l) => `  ${l}`).join(' \\\n')}\n`;
}

const base = (over: Partial<QemuOptions>): QemuOptions => ({
  arch: 'amd64',
  firmware: 'bios',
  disk: { path: `${RUN}/overlay.qcow2`, format: 'qcow2' },
  serialLog: `${RUN}/serial.log`,
  qmpSocket: `${RUN}/qmp.sock`,
  ...over,
});

test('amd64 BIOS: q35, SeaBIOS, TCG, user network restricted with 127.0.0.1 forwards', (t) => {
  const plan = qemuPlan(base({ networks: [{ kind: 'user', hostfwd: [{ hostPort: 2222, guestPort: 22 }, { hostPort: 6443, guestPort: 6443 }] }], seed: { path: `${RUN}/seed.iso` } }));
  assertGolden(t, 'qemu/amd64-bios.txt', render(plan));
  t.false(plan.args.some((a) => a.includes('pflash')));
});

test('amd64 UEFI: OVMF code read-only, a per-run VARS copy, socket and user networks', (t) => {
  const plan = qemuPlan(
    base({
      firmware: 'uefi',
      uefi: { vars: `${RUN}/efivars.fd` },
      disk: { path: '/images/node-amd64.raw', format: 'raw' },
      memoryMiB: 4096,
      cpus: 2,
      drives: [{ path: '/bundles/edge-1.1.0.upgrade.tar', serial: 'bundle' }],
      networks: [
        { kind: 'socket', listen: 40001, mac: '52:54:00:aa:00:01' },
        { kind: 'user', hostfwd: [{ hostPort: 2201, guestPort: 22 }] },
      ],
    }),
  );
  assertGolden(t, 'qemu/amd64-uefi.txt', render(plan));
});

test('arm64 UEFI: virt, cpu max, AAVMF, seed as a CD-ROM, socket connect, direct kernel boot', (t) => {
  const plan = qemuPlan({
    arch: 'arm64',
    firmware: 'uefi',
    uefi: { vars: `${RUN}/efivars.fd` },
    disk: { path: `${RUN}/overlay.qcow2`, format: 'qcow2' },
    seed: { path: `${RUN}/seed.iso`, as: 'cdrom' },
    serialLog: `${RUN}/serial.log`,
    qmpSocket: `${RUN}/qmp.sock`,
    networks: [{ kind: 'socket', connect: 40001, mac: '52:54:00:aa:00:02' }],
    kernel: { kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', append: 'console=ttyAMA0 geminik8s.slot=A' },
  });
  assertGolden(t, 'qemu/arm64-uefi.txt', render(plan));
});

test('every network listens on or connects to 127.0.0.1 only, user networks are restricted', (t) => {
  const plan = qemuPlan(
    base({
      networks: [
        { kind: 'user', hostfwd: [{ hostPort: 8080, guestPort: 80, proto: 'udp' }] },
        { kind: 'socket', listen: 40010, mac: '52:54:00:00:00:aa' },
        { kind: 'socket', connect: 40011, mac: '52:54:00:00:00:ab' },
      ],
    }),
  );
  const netdevs = plan.args.filter((_, i) => plan.args[i - 1] === '-netdev');
  t.deepEqual(netdevs, ['user,id=net0,restrict=on,hostfwd=udp:127.0.0.1:8080-:80', 'socket,id=net1,listen=127.0.0.1:40010', 'socket,id=net2,connect=127.0.0.1:40011']);
  t.true(plan.args.includes('-nodefaults') && plan.args.includes('-no-user-config'));
  t.is(plan.args[plan.args.indexOf('-display') + 1], 'none');
});

test('tap networks: QEMU runs inside the namespace that holds the taps, opens them without scripts', (t) => {
  const plan = qemuPlan(base({ netns: 'gk-lan-1', networks: [{ kind: 'tap', ifname: 'gktap1', mac: '52:54:00:77:00:11' }] }));
  assertGolden(t, 'qemu/amd64-bios-tap.txt', render(plan));
  t.is(plan.cmd, 'ip');
  t.deepEqual(plan.args.slice(0, 4), ['netns', 'exec', 'gk-lan-1', 'qemu-system-x86_64']);
  t.true(plan.args.includes('tap,id=net0,ifname=gktap1,script=no,downscript=no'));
  t.is(qemuPlan(base({})).cmd, 'qemu-system-x86_64', 'without a namespace QEMU runs as itself');
});

test('network boot: the NIC boots before the disk from QEMU\'s TFTP, guest forwards run a relay per connection, a writable extra disk with its serial', (t) => {
  const plan = qemuPlan(
    base({
      disk: { path: `${RUN}/target.raw`, format: 'raw', serial: 'GK-TARGET' },
      drives: [{ path: `${RUN}/other.raw`, serial: 'GK-OTHER', writable: true }, { path: `${RUN}/ro.raw`, serial: 'RO' }],
      networks: [{ kind: 'user', mac: '52:54:00:aa:00:11', guestfwd: [{ addr: '10.0.2.100', port: 80, cmd: 'node /r/relay.mjs 127.0.0.1 8080' }], netboot: { tftp: `${RUN}/tftp`, bootfile: 'boot.ipxe' } }],
    }),
  );
  assertGolden(t, 'qemu/amd64-bios-netboot.txt', render(plan));
  t.true(plan.args.includes('user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:node /r/relay.mjs 127.0.0.1 8080,tftp=/run/gk-qemu-test/tftp,bootfile=boot.ipxe'));
  t.true(plan.args.includes('virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:11,bootindex=0'));
  t.true(plan.args.includes('virtio-blk-pci,drive=disk0,bootindex=1,serial=GK-TARGET'));
  t.true(plan.args.includes('if=none,id=extra0,format=raw,file=/run/gk-qemu-test/other.raw'));
  t.true(plan.args.includes('if=none,id=extra1,format=raw,readonly=on,file=/run/gk-qemu-test/ro.raw'));
  const problems = qemuOptionProblems(base({ disk: { path: '/x', format: 'raw', serial: 'no spaces allowed' }, networks: [{ kind: 'user', guestfwd: [{ addr: '192.168.1.1', port: 0, cmd: ' ' }], netboot: { tftp: 'rel', bootfile: '../x' } }] }));
  t.deepEqual(problems.map((p) => p.split(':')[0]), ['disk.serial', 'networks.0.guestfwd.0.addr', 'networks.0.guestfwd.0.port', 'networks.0.guestfwd.0.cmd', 'networks.0.netboot.tftp', 'networks.0.netboot.bootfile']);
});

test('an installer ISO in a CD drive boots after the disk, beside a cidata seed CD on the same controller', (t) => {
  const plan = qemuPlan(
    base({
      disk: { path: `${RUN}/target.raw`, format: 'raw', serial: 'GK-TARGET' },
      drives: [{ path: `${RUN}/other.raw`, serial: 'GK-OTHER', writable: true }],
      cdrom: { path: '/out/test-0.1.0-amd64.iso' },
      seed: { path: `${RUN}/seed.iso`, as: 'cdrom' },
    }),
  );
  assertGolden(t, 'qemu/amd64-bios-cdrom.txt', render(plan));
  t.is(plan.args.filter((a) => a === 'virtio-scsi-pci,id=scsi0').length, 1, 'one controller for both CDs');
  t.true(plan.args.includes('scsi-cd,bus=scsi0.0,drive=cd0,bootindex=2'));
  t.true(plan.args.includes('virtio-blk-pci,drive=disk0,bootindex=1,serial=GK-TARGET'), 'the disk first');
  t.deepEqual(qemuOptionProblems(base({ cdrom: { path: '' } })), ['cdrom.path: missing']);
});

test('commas in paths are doubled, as QEMU option syntax requires', (t) => {
  const plan = qemuPlan(base({ disk: { path: '/tmp/a,b.raw', format: 'raw' } }));
  t.true(plan.args.includes('if=none,id=disk0,format=raw,file=/tmp/a,,b.raw'));
});

const invalid = (opts: QemuOptions): GeminiError => {
  const err = (() => {
    try {
      qemuPlan(opts);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  if (!(err instanceof GeminiError)) throw new Error(`expected a GeminiError, got ${String(err)}`);
  return err;
};

test('the CPU under TCG: max less ERMS and FSRM on amd64 (TCG runs rep movsb a byte at a time), max with the cheap pointer authentication on arm64; an explicit model wins', (t) => {
  const cpuOf = (plan: CommandPlan): string | undefined => plan.args[plan.args.indexOf('-cpu') + 1];
  t.is(cpuOf(qemuPlan(base({}))), 'max,-erms,-fsrm');
  t.is(cpuOf(qemuPlan(base({ arch: 'arm64', firmware: 'uefi', uefi: { vars: `${RUN}/vars.fd` } }))), 'max,pauth-impdef=on');
  t.is(cpuOf(qemuPlan(base({ cpu: 'qemu64' }))), 'qemu64');
});

test('BIOS on arm64 is refused with exit 2 and a hint', (t) => {
  const err = invalid(base({ arch: 'arm64', firmware: 'bios' }));
  t.is(err.exitCode, ExitCode.invalidInput);
  t.regex(err.message, /arm64 has no BIOS.*--uefi/);
});

test('every problem is reported at once', (t) => {
  const problems = qemuOptionProblems(
    base({
      firmware: 'uefi',
      memoryMiB: 64,
      cpus: 0,
      cpu: 'max -erms',
      drives: [{ path: '/x', serial: 'a serial with spaces' }],
      networks: [
        { kind: 'user', hostfwd: [{ hostPort: 70000, guestPort: 22 }, { hostPort: 2222, guestPort: 22 }, { hostPort: 2222, guestPort: 23 }] },
        { kind: 'socket', listen: 1, connect: 2, mac: '53:54:00:00:00:01' },
        { kind: 'socket', mac: 'nope' },
        { kind: 'wifi' } as never,
        { kind: 'tap', ifname: 'a-name-longer-than-15', mac: '52:54:00:00:00:02' },
        { kind: 'tap', ifname: 'tap0' } as never,
      ],
      netns: 'two words',
    }),
  );
  const expected = [
    /^uefi\.vars: UEFI needs a writable copy/,
    /^drives\.0\.serial: expected 1 to 20 letters/,
    /^memory: .*found 64/,
    /^cpus: expected 1 to 8, found 0/,
    /^cpu: expected a QEMU CPU model with optional ,feature flags \(as max,-erms\), found "max -erms"/,
    /^networks\.0\.hostfwd\.0\.hostPort: expected a port 1-65535, found 70000/,
    /^networks\.0\.hostfwd\.2\.hostPort: 127\.0\.0\.1:2222 is forwarded twice/,
    /^networks\.1\.mac: 53:54:00:00:00:01 is a multicast address/,
    /^networks\.1: a socket network needs exactly one of listen or connect/,
    /^networks\.2\.mac: expected six hex octets/,
    /^networks\.2: a socket network needs exactly one of listen or connect/,
    /^networks\.3\.kind: expected user, socket or tap/,
    /^networks\.4\.ifname: expected an interface name of 1 to 15/,
    /^networks\.5\.mac: a tap network needs a MAC address/,
    /^netns: expected a namespace name/,
  ];
  t.is(problems.length, expected.length, problems.join('\n'));
  expected.forEach((re, i) => t.regex(problems[i]!, re));
  const err = invalid(base({ cpus: 99 }));
  t.regex(err.message, /^invalid QEMU options:\n {2}cpus: expected 1 to 8, found 99$/);
});

test('a QMP socket path too long for a unix socket is refused', (t) => {
  const err = invalid(base({ qmpSocket: `/tmp/${'x'.repeat(120)}/qmp.sock` }));
  t.regex(err.message, /longer than 107 bytes.*TMPDIR/);
});

test('overlayPlan: a qcow2 overlay backed by the absolute image path with its format', (t) => {
  t.deepEqual(overlayPlan('/images/node-arm64.raw', 'raw', '/tmp/x/overlay.qcow2'), {
    cmd: 'qemu-img',
    args: ['create', '-q', '-f', 'qcow2', '-b', '/images/node-arm64.raw', '-F', 'raw', '/tmp/x/overlay.qcow2'],
    title: 'disk overlay',
  });
  t.throws(() => overlayPlan('node.raw', 'raw', '/tmp/o.qcow2'), { message: /absolute/ });
});

test('architecture and format come from the image file name', (t) => {
  t.is(archFromFileName('/out/geminik8s-edge-amd64.raw'), 'amd64');
  t.is(archFromFileName('edge-arm64-1.2.qcow2'), 'arm64');
  t.is(archFromFileName('/x-arm64/disk.raw'), undefined);
  t.is(archFromFileName('amd64disk.raw'), undefined);
  t.is(formatFromFileName('a.raw'), 'raw');
  t.is(formatFromFileName('a.IMG'), 'raw');
  t.is(formatFromFileName('a.qcow2'), 'qcow2');
  t.is(formatFromFileName('a.vmdk'), undefined);
});
