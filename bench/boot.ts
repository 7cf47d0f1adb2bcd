// npm run bench:boot -- [--arch amd64|arm64|all] [--only unseeded,direct,uefi,leader,reboot,follower] [--reboots N]
//                        [--direct-runs N] [--direct-append 'ARGS'] [--image FILE] [--json FILE]
// Guest seconds to GEMINIK8S-READY (the guest's uptime on the marker line) under TCG, for the
// offline test image (built and cached like the e2e suites; --image names another definition
// under images/, such as test-erofs-amd64.yaml, for one --arch):
//   unseeded   the generic image, BIOS (amd64) or UEFI (arm64)
//   uefi       the same under UEFI (amd64)
//   direct     the same with the kernel and initrd given to QEMU: no firmware, no GRUB. Wall
//              time minus guest uptime, against the firmware boot, splits off GRUB's share.
//              --direct-runs N boots it N times; --direct-append adds kernel arguments to every
//              other run (the first run without), so two command lines compare without a rebuild.
//   leader     node1's first boot from its seed (initdb, setup)
//   reboot     node1 rebooted (`systemctl reboot`) once configured; --reboots N times (default
//              1): the same image varies by ±10 s between boots under TCG, so take the median
//   follower   node2's first boot beside the running leader (clone included)
// After each marker the guest's `systemd-analyze` time, critical chain and top of blame are
// printed. Prints figures; asserts nothing.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { bootVm, GuestShell, parseMarkerFields, READY_MARKER, type Arch, type BootOptions, type Vm, type WaitResult } from '#qemu/index.ts';
import { cli } from '#lab/cli.ts';
import { validateFiles } from '#common/config.ts';
import { partitionOffset } from '#common/install/media.ts';
import { bootFiles, testImage, type BuiltImage } from '#lab/test-image.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
};
const arches: Arch[] = arg('--arch', 'amd64') === 'all' ? ['amd64', 'arm64'] : [arg('--arch', 'amd64') as Arch];
const only = new Set(arg('--only', 'unseeded,uefi,direct,leader,reboot,follower').split(','));
const jsonFile = arg('--json', '');
const reboots = Math.max(1, Number.parseInt(arg('--reboots', '1'), 10) || 1);
const directRuns = Math.max(1, Number.parseInt(arg('--direct-runs', '1'), 10) || 1);
const directAppend = arg('--direct-append', '').trim();
const imageFile = arg('--image', '');
const BOOT_TIMEOUT = 20 * 60_000;
const NET = { node1: '192.168.77.11', node2: '192.168.77.12', vip: '192.168.77.50' };
const MAC = { node1: '52:54:00:77:00:11', node2: '52:54:00:77:00:12' };

interface Figure {
  arch: Arch;
  scenario: string;
  firmware: string;
  /** role= on the marker line: unconfigured, leader, follower (init means the agent had not set up). */
  role: string;
  wallS: number;
  guestS: number | null;
  /** Wall seconds before the kernel's clock started: QEMU, firmware, boot loader. */
  preKernelS: number | null;
  systemdAnalyze?: string;
  criticalChain?: string;
  blame?: string;
  kernelLog?: string;
  /** Guest seconds at which units began starting and became active (systemd's monotonic timestamps). */
  units?: { unit: string; startS: number | null; activeS: number | null }[];
  /** The agent's own account of its start (its `ready` log line). */
  agentReady?: string;
  /** PID 1's own phases before its first unit, guest seconds (the manager's timestamps). */
  manager?: Record<string, number | null>;
  /** Where the vCPUs' time went until the shell's first command, just after the marker. */
  cpu?: CpuAccount;
}

/** The guest's CPU accounting since boot (`/proc/stat`, `/proc/pressure`), in seconds. */
interface CpuAccount {
  uptimeS: number;
  vcpus: number;
  userS: number;
  systemS: number;
  iowaitS: number;
  idleS: number;
  /** Time in which at least one runnable task waited for a CPU (PSI `some`), when the kernel keeps it. */
  cpuWaitS: number | null;
  /** Time in which at least one task waited for I/O (PSI `some`). */
  ioWaitS: number | null;
}

/** Parses `cat /proc/uptime; grep '^cpu' /proc/stat; cat /proc/pressure/cpu /proc/pressure/io`. */
function parseCpu(text: string): CpuAccount | undefined {
  const uptime = /^([\d.]+) [\d.]+$/m.exec(text);
  const all = /^cpu +(\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)/m.exec(text);
  if (!uptime || !all) return undefined;
  // USER_HZ is 100 on every Linux architecture the image is built for.
  const [user, nice, system, idle, iowait, irq, softirq] = all.slice(1, 8).map((v) => Number(v) / 100) as [number, number, number, number, number, number, number];
  const psi = [...text.matchAll(/^some avg10=\S+ avg60=\S+ avg300=\S+ total=(\d+)$/gm)].map((m) => Number(m[1]) / 1e6);
  return {
    uptimeS: Number(uptime[1]), vcpus: (text.match(/^cpu\d+ /gm) ?? []).length,
    userS: user + nice, systemS: system + irq + softirq, iowaitS: iowait, idleS: idle,
    cpuWaitS: psi.length === 2 ? psi[0]! : null, ioWaitS: psi.length === 2 ? psi[1]! : null,
  };
}

function cpuLine(c: CpuAccount | undefined): string {
  if (!c) return '(not read)';
  const psi = c.cpuWaitS === null ? 'no PSI' : `a task waiting for a CPU ${c.cpuWaitS.toFixed(1)} s, for I/O ${c.ioWaitS!.toFixed(1)} s`;
  return `at ${c.uptimeS.toFixed(1)} s uptime, ${c.vcpus} vCPUs: user ${c.userS.toFixed(1)} s, system ${c.systemS.toFixed(1)} s, iowait ${c.iowaitS.toFixed(1)} s, idle ${c.idleS.toFixed(1)} s (${((100 * c.idleS) / (c.uptimeS * c.vcpus)).toFixed(0)}% of the vCPUs' time); ${psi}`;
}

/** The manager's timestamps: PID 1 started (Userspace), its security setup, generators, unit loading. */
const MANAGER_PHASES = ['Userspace', 'SecurityStart', 'SecurityFinish', 'GeneratorsStart', 'GeneratorsFinish', 'UnitsLoadStart', 'UnitsLoadFinish'];

function parseManagerTimes(text: string): Record<string, number | null> {
  const kv = showBlocks(text)[0] ?? {};
  return Object.fromEntries(MANAGER_PHASES.map((p) => [p, usSeconds(kv[`${p}TimestampMonotonic`])]));
}

function managerLine(t: Record<string, number | null> | undefined): string {
  if (!t) return '(none)';
  const at = (k: string): string => t[k]?.toFixed(1) ?? '?';
  return `started ${at('Userspace')}, security ${at('SecurityStart')} -> ${at('SecurityFinish')}, generators ${at('GeneratorsStart')} -> ${at('GeneratorsFinish')}, units loaded ${at('UnitsLoadStart')} -> ${at('UnitsLoadFinish')}`;
}

/** Units on the way to the marker, in the order a configured boot reaches them. */
const PROFILED_UNITS = ['systemd-journal-flush.service', 'geminik8s-grow.service', 'systemd-networkd.service', 'network.target', 'geminik8s-agent.service', 'geminik8s-postgresql.service', 'multi-user.target', 'geminik8s-ready.service'];

/** `systemctl show` output: one key=value map per unit (blank lines between units). */
function showBlocks(text: string): Record<string, string>[] {
  return text.trim().split(/\n\s*\n/).map((block) => Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf('=')).trim(), l.slice(l.indexOf('=') + 1).trim()])));
}

/** A monotonic timestamp in µs as guest seconds; 0 (never happened) as null. */
const usSeconds = (v: string | undefined): number | null => (v && v !== '0' ? Number(v) / 1e6 : null);

/** `systemctl show -p Id,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic` of several units, in guest seconds. */
function parseUnitTimes(text: string): { unit: string; startS: number | null; activeS: number | null }[] {
  return showBlocks(text).filter((kv) => kv.Id).map((kv) => ({ unit: kv.Id!, startS: usSeconds(kv.InactiveExitTimestampMonotonic), activeS: usSeconds(kv.ActiveEnterTimestampMonotonic) }));
}
const figures: Figure[] = [];

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });

/**
 * Whether the image definition gives its guests a root shell on hvc0 (boot.debugShell). The
 * profile after each marker and the reboots go through that shell; without it GuestShell.open
 * would wait out its whole timeout.
 */
async function hasDebugShell(file: string): Promise<boolean> {
  const { results, issues } = await validateFiles([file]);
  const r = results[0];
  if (!r || r.kind !== 'Image') throw new Error(`${file}: not a valid image definition: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  return r.value.boot.debugShell;
}
let debugShell = true;

async function record(arch: Arch, scenario: string, firmware: string, vm: Vm, r: WaitResult, profile = true): Promise<Figure> {
  const guestS = r.guestUptimeS ?? null;
  const wallS = r.waitedMs / 1000;
  const role = parseMarkerFields(r.line).role ?? '?';
  const f: Figure = { arch, scenario, firmware, role, wallS, guestS, preKernelS: guestS === null ? null : wallS - guestS };
  // The marker comes whatever the outcome: a node that should be leader but says "init" failed.
  console.log(`${arch} ${scenario.padEnd(9)} ${firmware.padEnd(6)} ready as ${role}: ${guestS?.toFixed(1) ?? '?'} s guest, ${wallS.toFixed(1)} s wall (${f.preKernelS?.toFixed(1) ?? '?'} s before the kernel)`);
  if (profile && vm.consoleSocket && debugShell) {
    const shell = await GuestShell.open(vm.consoleSocket, BOOT_TIMEOUT);
    try {
      // First, as close to the marker as the shell gets: what kept the vCPUs busy until then.
      f.cpu = parseCpu((await shell.run("cat /proc/uptime; grep '^cpu' /proc/stat; cat /proc/pressure/cpu /proc/pressure/io 2>/dev/null")).output);
      // systemd-analyze answers only once the boot has finished: let the last jobs end first.
      const pending = (await shell.run('timeout 300 systemctl is-system-running --wait >/dev/null 2>&1 || systemctl list-jobs --no-pager --no-legend', 330_000)).output.trim();
      if (pending) console.log(`  jobs still running 300 s after the marker:\n    ${pending.replaceAll('\n', '\n    ')}`);
      f.systemdAnalyze = (await shell.run('systemd-analyze time 2>&1 | head -n 3')).output.trim();
      f.criticalChain = (await shell.run('systemd-analyze critical-chain --no-pager geminik8s-ready.service 2>&1 | tail -n +3')).output.trim();
      f.blame = (await shell.run('systemd-analyze blame --no-pager 2>&1 | head -n 15')).output.trim();
      // The kernel's share split: its own init, then the initramfs until systemd runs from the root.
      f.units = parseUnitTimes((await shell.run(`systemctl show -p Id,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic ${PROFILED_UNITS.join(' ')}`)).output);
      f.manager = parseManagerTimes((await shell.run(`systemctl show ${MANAGER_PHASES.map((p) => `-p ${p}TimestampMonotonic`).join(' ')}`)).output);
      f.agentReady = (await shell.run(`journalctl -b -u geminik8s-agent.service -o cat --no-pager | grep -m1 '"event":"ready"' | sed 's/.*"msg":"\\([^"]*\\)".*/\\1/'`)).output.trim();
      // The wait for the watchdog's ping helper (python3) overlaps the configuration and the address; past them it is on the path.
      const helper = (await shell.run(`journalctl -b -u geminik8s-agent.service -o cat --no-pager | grep -m1 '"event":"start"' | grep -o '"helperWaitMs":[0-9]*' | cut -d: -f2`)).output.trim();
      if (f.agentReady && helper) f.agentReady += `; before its API it waited ${helper} ms for the watchdog's ping helper`;
      f.kernelLog = (await shell.run("dmesg | grep -E 'Unpacking initramfs|Freeing initrd memory|Run /init as init process|systemd\\[1\\]: systemd [0-9]+ running|geminik8s: initramfs:|Not activating Mandatory Access Control|EXT4-fs \\(vda6\\): mounted|squashfs: version' | cut -c1-110")).output.trim();
    } finally {
      shell.close();
    }
    console.log(`  ${f.systemdAnalyze?.replaceAll('\n', '\n  ')}\n  critical chain:\n    ${f.criticalChain?.replaceAll('\n', '\n    ')}\n  blame:\n    ${f.blame?.replaceAll('\n', '\n    ')}\n  kernel and initramfs:\n    ${f.kernelLog?.replaceAll('\n', '\n    ')}\n  units (guest s, start -> active):\n    ${(f.units ?? []).map((u) => `${u.unit.padEnd(30)} ${u.startS?.toFixed(1) ?? '-'} -> ${u.activeS?.toFixed(1) ?? '-'}`).join('\n    ')}\n  agent: ${f.agentReady || '(no ready line)'}\n  PID 1 (guest s): ${managerLine(f.manager)}\n  CPU: ${cpuLine(f.cpu)}`);
  }
  figures.push(f);
  return f;
}

async function withVm<T>(opts: BootOptions, body: (vm: Vm) => Promise<T>): Promise<T> {
  const vm = await bootVm({ console: true, ...opts });
  try {
    return await body(vm);
  } finally {
    await vm.stop();
  }
}

/** The kernel, initrd and command line GRUB would boot from slot A, for a direct-kernel boot. */
async function directKernel(img: BuiltImage, dir: string): Promise<NonNullable<BootOptions['kernel']>> {
  const { kernel, initrd } = await bootFiles(img.rootfsTar, dir);
  const esp = `${img.raw}@@${await partitionOffset(img.raw, 'ESP')}`;
  const cfg = (await runPlan({ cmd: 'mtype', args: ['-i', esp, '::grub/grub.cfg'] })).stdout;
  const line = cfg.split('\n').find((l) => /^\s*linux .*geminik8s\.slot=A/.test(l))!;
  return { kernel, initrd, append: line.trim().split(/\s+/).slice(2).join(' ') };
}

async function seeded(img: BuiltImage, clusterDir: string, node: string, dir: string): Promise<string> {
  const out = join(dir, `${node}.raw`);
  const r = await cli('seed', '--cluster', join(clusterDir, 'cluster.yaml'), '--node', node, '--into', img.raw, '--out', out);
  if (r.code !== 0) throw new Error(`seed --into for ${node} failed: ${r.stderr}`);
  return out;
}

for (const arch of arches) {
  const file = imageFile || `test-${arch}.yaml`;
  const img = await testImage(file, (m) => console.log(m));
  debugShell = await hasDebugShell(join('images', file));
  if (!debugShell) console.log(`${arch}: images/${file} has no boot.debugShell: times to the marker only, no profile and no reboots`);
  const dir = mkdtempSync(join(tmpdir(), 'gk-bench-boot-'));
  const fw = arch === 'arm64' ? 'uefi' : 'bios';
  try {
    if (only.has('unseeded')) {
      await withVm({ arch, firmware: fw, image: img.qcow2, format: 'qcow2', name: 'unseeded' }, async (vm) => record(arch, 'unseeded', fw, vm, await vm.waitFor(READY_MARKER, BOOT_TIMEOUT)));
    }
    if (only.has('uefi') && arch === 'amd64') {
      await withVm({ arch, firmware: 'uefi', image: img.qcow2, format: 'qcow2', name: 'unseeded-uefi' }, async (vm) => record(arch, 'unseeded', 'uefi', vm, await vm.waitFor(READY_MARKER, BOOT_TIMEOUT), false));
    }
    if (only.has('direct')) {
      const kernel = await directKernel(img, dir);
      // Alternated rather than in two blocks, so that a change in the machine's load falls on both.
      for (let i = 0; i < directRuns; i++) {
        const extra = directAppend && i % 2 === 1;
        // Recorded as the "firmware" column, as the single direct boot always was.
        const how = extra ? `direct+${directAppend}` : 'direct';
        const k = extra ? { ...kernel, append: `${kernel.append} ${directAppend}` } : kernel;
        await withVm({ arch, firmware: fw, image: img.qcow2, format: 'qcow2', kernel: k, name: 'direct' }, async (vm) => record(arch, 'unseeded', how, vm, await vm.waitFor(READY_MARKER, BOOT_TIMEOUT), directRuns > 1));
      }
    }
    if (only.has('leader') || only.has('reboot') || only.has('follower')) {
      const clusterDir = join(dir, 'cluster');
      const r = await cli('init', '--name', 'bench', '--node1-ip', NET.node1, '--node2-ip', NET.node2, '--node1-mac', MAC.node1, '--node2-mac', MAC.node2, '--vip', NET.vip, '--witness', 'none', '--config-dir', clusterDir);
      if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
      const port = await freePort();
      const node1 = await bootVm({ arch, firmware: fw, image: await seeded(img, clusterDir, 'node1', dir), format: 'raw', write: true, console: true, name: 'node1', networks: [{ kind: 'socket', listen: port, mac: MAC.node1 }] });
      try {
        await record(arch, 'leader', fw, node1, await node1.waitFor(READY_MARKER, BOOT_TIMEOUT), only.has('leader'));
        for (let i = 0; only.has('reboot') && debugShell && i < reboots; i++) {
          const shell = await GuestShell.open(node1.consoleSocket!, BOOT_TIMEOUT);
          const mark = node1.mark();
          await shell.run('systemctl reboot', 10_000).catch(() => undefined);
          shell.close();
          const again = await node1.waitFor(READY_MARKER, BOOT_TIMEOUT, { since: mark });
          // waitedMs counts from the reboot request, shutdown included: the guest figure is the one that counts.
          // record() waits for the boot to finish before it profiles, so the next reboot starts from a settled system.
          await record(arch, 'reboot', fw, node1, again);
        }
        if (only.has('follower')) {
          const disk2 = await seeded(img, clusterDir, 'node2', dir);
          await withVm({ arch, firmware: fw, image: disk2, format: 'raw', write: true, name: 'node2', networks: [{ kind: 'socket', connect: port, mac: MAC.node2 }] }, async (vm) =>
            record(arch, 'follower', fw, vm, await vm.waitFor(READY_MARKER, BOOT_TIMEOUT)),
          );
        }
      } finally {
        await node1.stop();
      }
    }
  } finally {
    await runPlan({ cmd: 'rm', args: ['-rf', dir] });
  }
}

console.log('\narch   scenario  firmware  role          guest s  wall s  before kernel s');
for (const f of figures) console.log(`${f.arch.padEnd(6)} ${f.scenario.padEnd(9)} ${f.firmware.padEnd(9)} ${f.role.padEnd(12)} ${(f.guestS?.toFixed(1) ?? '?').padStart(7)} ${f.wallS.toFixed(1).padStart(7)} ${(f.preKernelS?.toFixed(1) ?? '?').padStart(15)}`);
/** Min, median and max guest seconds of the boots that match, when there are at least two. */
function spread(label: string, match: (f: Figure) => boolean): void {
  const sorted = figures.filter((f) => match(f) && f.guestS !== null).map((f) => f.guestS!).sort((a, b) => a - b);
  if (sorted.length < 2) return;
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  console.log(`${label}: ${sorted.length}, guest s min ${sorted[0]!.toFixed(1)}, median ${median.toFixed(1)}, max ${sorted.at(-1)!.toFixed(1)}`);
}
for (const arch of arches) {
  spread(`${arch} reboots`, (f) => f.arch === arch && f.scenario === 'reboot');
  for (const fw of new Set(figures.filter((f) => f.arch === arch && f.firmware.startsWith('direct')).map((f) => f.firmware))) spread(`${arch} ${fw} boots`, (f) => f.arch === arch && f.firmware === fw);
}
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify(figures, null, 2)}\n`);
