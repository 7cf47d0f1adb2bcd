import test from 'ava';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { spawnPlan } from '#common/exec.ts';
import { bootVm, cleanLine, kernelInitStall, parseMarkerFields, qmpRequest, READY_MARKER, VmTimeoutError, type Vm } from '#qemu/index.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir as makeTempDir } from '../helpers/fixtures.ts';

const dirs: string[] = [];
/** Temp dirs of this file, removed when it is done (the disk images are 1 MiB each). */
function tempDir(prefix?: string): string {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  return dir;
}
test.after.always(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * 16-bit code, position independent: write the NUL-terminated string at DS:SI to COM1 (0x3f8),
 * waiting for the transmitter before each byte, then halt for good.
 */
// prettier-ignore
const PRINT_AND_HALT = [
  0xac,             // 00 next: lodsb
  0x84, 0xc0,       // 01 test al, al
  0x74, 0x12,       // 03 jz halt
  0x88, 0xc3,       // 05 mov bl, al
  0xba, 0xfd, 0x03, // 07 wait: mov dx, 0x3fd (line status)
  0xec,             // 0a in al, dx
  0xa8, 0x20,       // 0b test al, 0x20 (transmitter holding register empty)
  0x74, 0xf8,       // 0d jz wait
  0xba, 0xf8, 0x03, // 0f mov dx, 0x3f8 (data)
  0x88, 0xd8,       // 12 mov al, bl
  0xee,             // 14 out dx, al
  0xeb, 0xe9,       // 15 jmp next
  0xf4,             // 17 halt: hlt
  0xeb, 0xfd,       // 18 jmp halt
];

/**
 * A real x86 boot sector (16-bit real mode, loaded by SeaBIOS at 0x7c00): writes `message`
 * and CR LF to COM1 (0x3f8), waiting for the transmitter before each byte, then halts.
 */
function bootSector(message: string): Buffer {
  // prettier-ignore
  const code = [
    0xfc,             // 00 cld
    0x31, 0xc0,       // 01 xor ax, ax
    0x8e, 0xd8,       // 03 mov ds, ax
    0xbe, 0x22, 0x7c, // 05 mov si, 0x7c22 (the message)
    ...PRINT_AND_HALT, // 08
  ];
  const text = Buffer.from(`${message}\r\n\0`, 'latin1');
  if (code.length !== 0x22 || 0x22 + text.length > 510) throw new Error('boot sector does not fit');
  const disk = Buffer.alloc(1024 * 1024);
  Buffer.from(code).copy(disk, 0);
  text.copy(disk, 0x22);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  return disk;
}

/**
 * A boot sector that prints `first` on its first boot and `later` after a reset: it keeps a
 * flag in CMOS byte 0x7e (an unused byte; QEMU's system_reset keeps CMOS RAM).
 */
function twoBootSector(first: string, later: string): Buffer {
  // prettier-ignore
  const code = [
    0xfc,             // 00 cld
    0x31, 0xc0,       // 01 xor ax, ax
    0x8e, 0xd8,       // 03 mov ds, ax
    0xb0, 0x7e,       // 05 mov al, 0x7e
    0xe6, 0x70,       // 07 out 0x70, al (CMOS index)
    0xe4, 0x71,       // 09 in al, 0x71
    0x84, 0xc0,       // 0b test al, al
    0xbe, 0, 0,       // 0d mov si, later (flags unchanged)
    0x75, 0x0b,       // 10 jnz 1d (PRINT_AND_HALT)
    0xb0, 0x7e,       // 12 mov al, 0x7e
    0xe6, 0x70,       // 14 out 0x70, al
    0xb0, 0x01,       // 16 mov al, 1
    0xe6, 0x71,       // 18 out 0x71, al (the flag)
    0xbe, 0, 0,       // 1a mov si, first
    ...PRINT_AND_HALT, // 1d
  ];
  const a = Buffer.from(`${first}\r\n\0`, 'latin1');
  const b = Buffer.from(`${later}\r\n\0`, 'latin1');
  if (code.length !== 0x37 || 0x37 + a.length + b.length > 510) throw new Error('boot sector does not fit');
  const disk = Buffer.alloc(1024 * 1024);
  Buffer.from(code).copy(disk, 0);
  disk.writeUInt16LE(0x7c37 + a.length, 0x0e);
  disk.writeUInt16LE(0x7c37, 0x1b);
  a.copy(disk, 0x37);
  b.copy(disk, 0x37 + a.length);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  return disk;
}

function diskImage(message: string, name = 'disk-amd64.raw'): string {
  const file = join(tempDir('gk-qemu-test-'), name);
  writeFileSync(file, bootSector(message));
  return file;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The brief's definition of gone: signal 0 to the pid throws (ESRCH). */
function pidGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

const small = { arch: 'amd64', firmware: 'bios', format: 'raw', memoryMiB: 128, cpus: 1 } as const;

test('waitFor finds the boot sector line on the serial console; QMP works; reset reprints it; stop removes everything', async (t) => {
  const image = diskImage('HELLO-FROM-THE-BOOT-SECTOR uptime=1.25');
  const before = readFileSync(image);
  const port = await freePort();
  const vm = await bootVm({ ...small, image, networks: [{ kind: 'user', hostfwd: [{ hostPort: port, guestPort: 22 }] }] });
  try {
    const ready = await vm.waitFor(/^HELLO-FROM-THE-BOOT-SECTOR\b/, 30_000);
    t.is(ready.line, 'HELLO-FROM-THE-BOOT-SECTOR uptime=1.25');
    t.is(ready.guestUptimeS, 1.25);
    t.true(ready.elapsedMs > 0 && ready.waitedMs <= ready.elapsedMs);
    t.like(await vm.qmp('query-status'), { status: 'running', running: true });
    await t.throwsAsync(vm.qmp('no-such-command'), { message: /QMP no-such-command failed: CommandNotFound/ });

    // The forward listens on 127.0.0.1: the port is taken there now.
    const probe = createServer();
    await t.throwsAsync(new Promise((resolve, reject) => probe.once('error', reject).listen(port, '127.0.0.1', () => resolve(undefined))), { code: 'EADDRINUSE' });

    const mark = vm.mark();
    t.is(mark, ready.end);
    await vm.reset();
    const again = await vm.waitFor(/^HELLO-FROM-THE-BOOT-SECTOR\b/, 30_000, { since: mark });
    t.true(again.end > mark);
    t.is(vm.log().split('HELLO-FROM-THE-BOOT-SECTOR').length - 1, 2);
    await vm.powerdown(); // no ACPI OS here: QEMU accepts it and keeps running
    t.true(vm.running);
    t.true(existsSync(join(vm.dir, 'overlay.qcow2')));
  } finally {
    await vm.stop();
  }
  t.false(existsSync(vm.dir));
  t.true(pidGone(vm.pid));
  t.false(vm.running);
  await vm.stop(); // idempotent
  t.true(readFileSync(image).equals(before), 'the image is untouched: QEMU wrote to an overlay');
});

test('a timeout names the pattern and the wait, carries the serial tail, and leaves no QEMU behind', async (t) => {
  const image = diskImage('STILL-BOOTING-PLEASE-WAIT');
  const vm = await bootVm({ ...small, image });
  await vm.waitFor(/STILL-BOOTING/, 30_000);
  const err = await t.throwsAsync(vm.waitFor(/^GEMINIK8S-READY\b/, 1500));
  t.true(err instanceof VmTimeoutError);
  t.is((err as GeminiError).exitCode, ExitCode.timeout);
  t.regex(err!.message, /^timed out after \d+\.?\d* s waiting for \/\^GEMINIK8S-READY\\b\/ on the serial console of .*disk-amd64\.raw \(QEMU pid \d+\)/);
  t.regex(err!.message, /--- last 30 lines of the serial console ---\nSTILL-BOOTING-PLEASE-WAIT\n--- QEMU stderr ---/);
  t.is((err as VmTimeoutError).serialTail, 'STILL-BOOTING-PLEASE-WAIT');
  t.true(pidGone(vm.pid));
  t.false(existsSync(vm.dir));
});

test('QEMU failing to start is reported with its stderr (exit 4)', async (t) => {
  const port = await freePort();
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
  try {
    const err = await t.throwsAsync(bootVm({ ...small, image: diskImage('x'), networks: [{ kind: 'user', hostfwd: [{ hostPort: port, guestPort: 22 }] }] }));
    t.is((err as GeminiError).exitCode, ExitCode.commandFailed);
    t.regex(err!.message, /qemu-system-x86_64 .*hostfwd=tcp:127\.0\.0\.1:\d+-:22/);
    t.regex(err!.message, /host forwarding/i);
  } finally {
    blocker.close();
  }
});

test('invalid options and missing files are refused before anything starts (exit 2)', async (t) => {
  const image = diskImage('x', 'disk-arm64.raw');
  const bios = await t.throwsAsync(bootVm({ ...small, arch: 'arm64', image }));
  t.is((bios as GeminiError).exitCode, ExitCode.invalidInput);
  t.regex(bios!.message, /arm64 has no BIOS/);
  const missing = await t.throwsAsync(bootVm({ ...small, image: '/nonexistent/disk.raw' }));
  t.is((missing as GeminiError).exitCode, ExitCode.invalidInput);
  const seed = await t.throwsAsync(bootVm({ ...small, image, seed: '/nonexistent/seed' }));
  t.regex(seed!.message, /seed \/nonexistent\/seed does not exist/);
});

test('UEFI on amd64 (OVMF) and arm64 (AAVMF) reaches the firmware shell; a socket link joins them; seeds attach read-only', async (t) => {
  const port = await freePort();
  const seedDir = tempDir('gk-qemu-seed-');
  writeFileSync(join(seedDir, 'meta-data'), 'instance-id: test\n');
  writeFileSync(join(seedDir, 'user-data'), '#cloud-config\n');
  const vms: Vm[] = [];
  try {
    const amd = await bootVm({ ...small, memoryMiB: 256, firmware: 'uefi', image: diskImage('x'), seed: seedDir, networks: [{ kind: 'socket', listen: port, mac: '52:54:00:00:01:01' }] });
    vms.push(amd);
    const arm = await bootVm({ ...small, memoryMiB: 256, arch: 'arm64', firmware: 'uefi', image: diskImage('x', 'disk-arm64.raw'), seed: seedDir, seedAs: 'cdrom', networks: [{ kind: 'socket', connect: port, mac: '52:54:00:00:01:02' }] });
    vms.push(arm);
    t.is(statSync(join(arm.dir, 'efivars.fd')).size, 64 * 1024 * 1024);
    t.is(statSync(join(amd.dir, 'efivars.fd')).size, statSync('/usr/share/OVMF/OVMF_VARS_4M.fd').size);
    for (const vm of vms) {
      const blocks = (await vm.qmp('query-block')) as { device: string; inserted?: { ro: boolean; file: string } }[];
      const seed = blocks.find((b) => b.inserted?.file === join(vm.dir, 'seed.iso'));
      t.truthy(seed, JSON.stringify(blocks));
      t.true(seed!.inserted!.ro);
    }
    const [a, b] = await Promise.all(vms.map((vm) => vm.waitFor(/UEFI Interactive Shell/, 90_000)));
    t.is(a!.line, b!.line);
  } finally {
    await Promise.all(vms.map((vm) => vm.stop()));
  }
  for (const vm of vms) t.false(existsSync(vm.dir));
});

/** Gone, or a zombie waiting for a reaper that this container may not have. */
function deadOrZombie(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

test('SIGTERM to the parent process kills its VMs and removes their files', async (t) => {
  const dir = tempDir('gk-qemu-parent-');
  const script = join(dir, 'parent.mts');
  writeFileSync(
    script,
    `import { bootVm } from ${JSON.stringify(join(ROOT, 'qemu/index.ts'))};
const vm = await bootVm({ arch: 'amd64', firmware: 'bios', format: 'raw', memoryMiB: 128, cpus: 1, image: ${JSON.stringify(diskImage('PARENT-TEST'))} });
await vm.waitFor(/PARENT-TEST/, 30000);
console.log(JSON.stringify({ pid: vm.pid, dir: vm.dir }));
setInterval(() => {}, 1000);
`,
  );
  let info: { pid: number; dir: string } | undefined;
  const parent = spawnPlan({ cmd: process.execPath, args: ['--import', 'tsx', script], cwd: ROOT }, { stdout: (l) => (info ??= JSON.parse(l)) });
  const deadline = Date.now() + 30_000;
  while (!info && Date.now() < deadline) await sleep(50);
  t.truthy(info, 'the parent printed its VM');
  t.true(existsSync(info!.dir));
  parent.kill('SIGTERM');
  t.is(await parent.exited, 'SIGTERM', 'the signal still ends the parent');
  for (let i = 0; i < 40 && !deadOrZombie(info!.pid); i++) await sleep(50);
  t.true(deadOrZombie(info!.pid));
  t.false(existsSync(info!.dir));
});

test('geminik8s qemu boot: the ready line, the boot time, --json, --log', async (t) => {
  const image = diskImage('GEMINIK8S-READY slot=A role=leader root=ro persistent=/dev/vda4:1G uptime=3.5', 'edge-amd64.raw');
  const log = join(tempDir(), 'serial.log');
  const r = await cli('qemu', 'boot', image, '--json', '--memory', '128', '--cpus', '1', '--log', log, '--forward', `${await freePort()}:22`);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.like(out, { arch: 'amd64', firmware: 'bios', format: 'raw', overlay: true, marker: 'GEMINIK8S-READY slot=A role=leader root=ro persistent=/dev/vda4:1G uptime=3.5', guestUptimeSeconds: 3.5, serialLog: log });
  t.deepEqual(out.fields, { slot: 'A', role: 'leader', root: 'ro', persistent: '/dev/vda4:1G', uptime: '3.5' });
  t.true(out.bootSeconds >= 0);
  t.regex(r.stderr, /waiting up to 600 s for GEMINIK8S-READY/);
  t.regex(readFileSync(log, 'utf8'), /GEMINIK8S-READY slot=A/);

  const text = await cli('qemu', 'boot', image, '--memory', '128', '--cpus', '1');
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^GEMINIK8S-READY slot=A .*uptime=3\.5\nboot time: \d+\.\d s \(guest uptime 3\.5 s\)\n$/);
});

test('geminik8s qemu boot: timeout exits 7 with the serial tail', async (t) => {
  const image = diskImage('Loading Linux... not ready', 'slow-amd64.raw');
  const r = await cli('qemu', 'boot', image, '--timeout', '2', '--memory', '128');
  t.is(r.code, 7, r.stderr);
  t.regex(r.stderr, /error: timed out after \d+\.?\d* s waiting for \/\^GEMINIK8S-READY\\b\//);
  t.regex(r.stderr, /Loading Linux\.\.\. not ready/);
});

test('geminik8s qemu boot: bad input exits 2', async (t) => {
  const dir = tempDir();
  const noArch = join(dir, 'disk.raw');
  const badExt = join(dir, 'disk-amd64.vmdk');
  mkdirSync(join(dir, 'sub'));
  for (const f of [noArch, badExt]) writeFileSync(f, '');
  const cases: [string[], RegExp][] = [
    [[noArch], /cannot tell the architecture .* pass --arch/],
    [[badExt], /expected \.raw, \.img or \.qcow2/],
    [[join(dir, 'missing-amd64.raw')], /does not exist/],
    [[join(dir, 'sub')], /not a file/],
    [[noArch, '--arch', 'amd64', '--forward', '22'], /--forward: expected HOST:GUEST/],
    [[noArch, '--arch', 'amd64', '--timeout', 'soon'], /--timeout: expected a positive number/],
    [[noArch, '--arch', 'amd64', '--memory', '1.5'], /--memory: expected a positive whole number/],
    [[noArch, '--arch', 'amd64', '--seed', join(dir, 'nope')], /--seed: .* does not exist/],
    [[noArch, '--arch', 'riscv64'], /Allowed choices are amd64, arm64/],
  ];
  for (const [args, re] of cases) {
    const r = await cli('qemu', 'boot', ...args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
  }
});

test('marker fields and console line cleaning', (t) => {
  t.deepEqual(parseMarkerFields('GEMINIK8S-READY slot=B role=follower root=ro persistent=none uptime=12.07'), { slot: 'B', role: 'follower', root: 'ro', persistent: 'none', uptime: '12.07' });
  t.is(cleanLine('\u001b[2J\u001b[01;01H\u001b[=3hUEFI \u001b[1m\u001b[33mShell\u001b[0m\r'), 'UEFI Shell');
});

const STALLED_KERNEL = '[    0.000000] Linux version 6.1.0-fake (a boot sector)\r\n[    1.966222] i8042: PNP: PS/2 Controller [PNP0303:KBD,PNP0f13:MOU] at 0x60,0x64 irq 1,12';

test('a kernel silent before its init is a stall; firmware, GRUB, the initramfs and userspace are not', (t) => {
  const kernel = '[    0.000000] Linux version 6.1.0-28-amd64\n[    1.402647] Trying to unpack rootfs image as initramfs...\n';
  t.is(kernelInitStall(`SeaBIOS\r\n${kernel}[    1.966222] i8042: PNP: PS/2 Controller\r\n\r\n`), '[    1.966222] i8042: PNP: PS/2 Controller');
  t.is(kernelInitStall(`${kernel}[    3.1] Run /init as init process\n[    3.2] with arguments:\n`), undefined, 'the initramfs runs');
  t.is(kernelInitStall(`${kernel}[    9.0] Run /sbin/init as init process\n[   30.5] EXT4-fs (vda4): mounted\n`), undefined);
  t.is(kernelInitStall(`${kernel}Loading Linux 6.1.0-28-amd64 ...\n`), undefined, 'not a kernel line');
  t.is(kernelInitStall('[    1.0] a line without the start of its boot\n'), undefined);
  t.is(kernelInitStall(''), undefined);
  // A later boot of the same VM counts from its own Linux version line.
  t.is(kernelInitStall(`${kernel}[    3.1] Run /init as init process\nGEMINIK8S-READY\n${kernel}`), '[    1.402647] Trying to unpack rootfs image as initramfs...');
});

test('a wait resets a VM whose kernel stalls before its init, once, and records where the vCPUs were', async (t) => {
  const file = join(tempDir('gk-qemu-test-'), 'stall.raw');
  writeFileSync(file, twoBootSector(STALLED_KERNEL, 'GEMINIK8S-READY uptime=2.50'));
  const vm = await bootVm({ ...small, image: file, format: 'raw' });
  try {
    const ready = await vm.waitFor(READY_MARKER, 60_000, { kernelStallMs: 2000 });
    t.is(ready.guestUptimeS, 2.5);
    t.is(vm.kernelStalls.length, 1);
    const [stall] = vm.kernelStalls;
    t.is(stall!.line, '[    1.966222] i8042: PNP: PS/2 Controller [PNP0303:KBD,PNP0f13:MOU] at 0x60,0x64 irq 1,12');
    t.true(stall!.quietMs >= 2000);
    t.regex(stall!.registers, /^CPU#0 EIP=[0-9a-f]+ HLT=1$/, 'the vCPU was halted, waiting for an interrupt (real mode: EIP)');
    t.is(vm.log().split('i8042').length - 1, 1, 'the reset booted it again');
  } finally {
    await vm.stop();
  }
});

test('no reset once the kernel ran its init, or with kernelStallMs 0: the wait times out as before', async (t) => {
  for (const [first, stallMs] of [[`${STALLED_KERNEL}\r\n[    2.000000] Run /init as init process`, 1500], [STALLED_KERNEL, 0]] as const) {
    const file = join(tempDir('gk-qemu-test-'), 'stall.raw');
    writeFileSync(file, twoBootSector(first, 'GEMINIK8S-READY uptime=2.50'));
    const vm = await bootVm({ ...small, image: file, format: 'raw' });
    await vm.waitFor(/i8042/, 30_000);
    const err = await t.throwsAsync(vm.waitFor(READY_MARKER, 5000, { kernelStallMs: stallMs }));
    t.true(err instanceof VmTimeoutError, `${stallMs}`);
    t.deepEqual(vm.kernelStalls, []);
    t.notRegex(err!.message, /kernel stalls/);
  }
});

test('QEMU dying while waiting is reported at once (exit 4), not as a timeout', async (t) => {
  const vm = await bootVm({ ...small, image: diskImage('ABOUT-TO-DIE') });
  await vm.waitFor(/ABOUT-TO-DIE/, 30_000);
  process.kill(vm.pid, 'SIGKILL');
  const started = Date.now();
  const err = await t.throwsAsync(vm.waitFor(/^GEMINIK8S-READY\b/, 60_000));
  t.true(Date.now() - started < 10_000);
  t.is((err as GeminiError).exitCode, ExitCode.commandFailed);
  t.regex(err!.message, /^QEMU was killed by SIGKILL before \/\^GEMINIK8S-READY\\b\/ appeared on the serial console: qemu-system-x86_64 /);
  t.regex(err!.message, /--- serial console ---\nABOUT-TO-DIE/);
  t.false(existsSync(vm.dir));
});

test('QMP: a socket QEMU has not made yet is waited for while QEMU runs; a dead QEMU is not', async (t) => {
  const path = join(makeTempDir(), 'qmp.sock');
  // A stand-in QMP server that starts listening only after 1 s, as a loaded QEMU may.
  const server = createServer((c) => {
    c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    c.on('data', (d) => {
      for (const line of d.toString().split('\n').filter(Boolean)) {
        const { execute } = JSON.parse(line) as { execute: string };
        c.write(execute === 'qmp_capabilities' ? '{"return": {}}\n' : '{"return": {"status": "running"}}\n');
      }
    });
  });
  setTimeout(() => server.listen(path), 1000);
  try {
    t.deepEqual(await qmpRequest(path, 'query-status', undefined, 10_000, () => true), { status: 'running' });
    await t.throwsAsync(qmpRequest(join(makeTempDir(), 'none.sock'), 'query-status', undefined, 10_000, () => false), { message: /cannot talk to .*ENOENT/ });
  } finally {
    server.close();
  }
});
