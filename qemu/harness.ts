import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { copyFile, rm, stat, truncate } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeSeedIso } from '#common/install/seed-iso.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { CommandFailedError, lastLines, quoteCommand, requireTools, runPlan, spawnPlan, type CommandPlan, type RunningProcess } from '#common/exec.ts';
import { overlayPlan, QEMU_BINARY, qemuPlan, UEFI_FIRMWARE, type Arch, type DiskFormat, type Firmware, type NetworkSpec, type QemuOptions } from './plan.ts';

/** The line an image prints on its console when it is up (overlays/usr/lib/geminik8s/ready.sh). */
export const READY_MARKER = /^GEMINIK8S-READY\b/;

export interface BootOptions {
  arch: Arch;
  firmware: Firmware;
  /** The disk image. Never modified unless `write` is set: QEMU runs on a qcow2 overlay. */
  image: string;
  format: DiskFormat;
  write?: boolean;
  /** The boot disk's serial, as the guest sees it (installer disk rules match on it). */
  diskSerial?: string;
  /** A NoCloud seed: an ISO file, or a directory that is made into a cidata ISO. */
  seed?: string;
  seedAs?: 'virtio' | 'cdrom';
  memoryMiB?: number;
  cpus?: number;
  /** QEMU's `-cpu` (QemuOptions.cpu). */
  cpu?: string;
  networks?: NetworkSpec[];
  /** Run QEMU in this network namespace (see QemuOptions.netns): for `tap` networks. */
  netns?: string;
  /** Extra raw disks, read-only unless `writable` (see QemuOptions.drives). */
  drives?: QemuOptions['drives'];
  /** An ISO in a CD drive, booted when the disk is not bootable (see QemuOptions.cdrom). */
  cdrom?: string;
  kernel?: QemuOptions['kernel'];
  name?: string;
  /** Attach a virtio console (guest /dev/hvc0) for `Vm.shell()`; test images run a root shell there. */
  console?: boolean;
  /** Keep the serial console in this file; by default it lives in the VM's temp dir. */
  serialLog?: string;
  /** How long `stop()` waits after SIGTERM before SIGKILL (default 5000 ms). */
  stopGraceMs?: number;
  /** Progress messages, e.g. for stderr. */
  onProgress?: (message: string) => void;
}

export interface WaitResult {
  /** The matching console line, without escape sequences and carriage returns. */
  line: string;
  match: RegExpExecArray;
  /** Wall time since QEMU started. */
  elapsedMs: number;
  /** Wall time spent in this `waitFor`. */
  waitedMs: number;
  /** `uptime=<seconds>` from the line, if it has one: the guest's own boot time. */
  guestUptimeS?: number;
  /** Offset in `log()` just after the line: pass it as `since` to wait for a later line. */
  end: number;
}

/** Raised when a wait on the serial console times out (exit code 7); the VM is stopped. */
export class VmTimeoutError extends GeminiError {
  readonly serialTail: string;
  readonly stderrTail: string;
  readonly waitedMs: number;
  constructor(message: string, serialTail: string, stderrTail: string, waitedMs: number) {
    super(message, ExitCode.timeout);
    this.name = 'VmTimeoutError';
    this.serialTail = serialTail;
    this.stderrTail = stderrTail;
    this.waitedMs = waitedMs;
  }
}

const TAIL_LINES = 30;

/**
 * How long a Linux kernel may print nothing, before it has run its init, until a wait resets
 * the VM. The kernel's own start takes seconds of guest time even under load; an amd64 guest
 * in CI once stopped for good after `i8042: PNP: PS/2 Controller`, right after a
 * `system_reset`, and the boot wait ran out 720 s later (a TCG hang, not the node's code).
 */
export const KERNEL_STALL_MS = 240_000;

const KERNEL_LINE = /^\[\s*\d+\.\d+\] /;

/**
 * The console's last line when it shows a Linux kernel still starting: its latest boot printed
 * `Linux version`, has not printed `Run ... as init process` since, and the last line is a
 * kernel message. Undefined otherwise (firmware, GRUB, the initramfs, userspace: they may be quiet).
 */
export function kernelInitStall(text: string): string | undefined {
  const lines = text.slice(-65_536).split('\n').map(cleanLine).filter((l) => l.trim() !== '');
  const last = lines.at(-1);
  if (last === undefined || !KERNEL_LINE.test(last)) return undefined;
  for (let i = lines.length - 1; i >= 0; i--) {
    if (/\] Run \S+ as init process/.test(lines[i]!)) return undefined;
    if (/\] Linux version /.test(lines[i]!)) return last;
  }
  return undefined;
}

/** A kernel stall that a wait answered with a reset (see KERNEL_STALL_MS). */
export interface KernelStall {
  /** The last line the kernel printed. */
  line: string;
  /** How long the console had been silent, ms. */
  quietMs: number;
  /** Each vCPU's instruction pointer at the time (QEMU's `info registers -a`), when QEMU said. */
  registers: string;
}

const ESCAPES = /\u001b(?:\[[0-9;=?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78])/g;

/** A console line as a person reads it: no terminal escape sequences, no carriage returns. */
export function cleanLine(line: string): string {
  return line.replace(ESCAPES, '').replace(/\r/g, '');
}

/** The `key=value` fields of a marker line (`slot`, `role`, `root`, `persistent`, `uptime`, ...). */
export function parseMarkerFields(line: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const m of line.matchAll(/(?:^|\s)([A-Za-z_][\w-]*)=(\S*)/g)) fields[m[1]!] = m[2]!;
  return fields;
}

function guestUptime(line: string): number | undefined {
  const m = /(?:^|\s)uptime=(\d+(?:\.\d+)?)(?:\s|$)/.exec(line);
  return m ? Number(m[1]) : undefined;
}

const live = new Set<Vm>();
let handlersInstalled = false;

/** Kill every live VM and remove its files if this process exits or is interrupted. */
function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const vm of [...live]) vm.killSync();
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const handler = (): void => {
      for (const vm of [...live]) vm.killSync();
      process.removeListener(signal, handler);
      // Nobody else handles the signal: let it end the process as it would have.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, handler);
  }
}

/** A running QEMU virtual machine: its serial console, QMP, and cleanup. */
export class Vm {
  readonly pid: number;
  /** Private temp dir (0700): overlay, UEFI VARS copy, seed ISO, QMP socket, serial log. */
  readonly dir: string;
  readonly serialLogPath: string;
  readonly qmpSocket: string;
  /** The virtio console socket, when the VM was booted with `console: true`. */
  consoleSocket?: string;
  readonly plan: CommandPlan;
  readonly image: string;
  /** Resolves with QEMU's exit code or signal name. */
  readonly exited: Promise<number | string>;
  exitStatus: number | string | undefined;

  private readonly proc: RunningProcess;
  private readonly startedAt = performance.now();
  private readonly stderrLines: string[];
  private readonly write: boolean;
  private readonly graceMs: number;
  private readonly decoder = new StringDecoder('utf8');
  private fd: number | undefined;
  private readPos = 0;
  private text = '';
  private stopping: Promise<void> | undefined;
  private qmpQueue: Promise<unknown> = Promise.resolve();

  /** @internal use bootVm() */
  constructor(init: { proc: RunningProcess; stderrLines: string[]; dir: string; serialLogPath: string; qmpSocket: string; plan: CommandPlan; image: string; write: boolean; graceMs: number }) {
    this.proc = init.proc;
    this.pid = init.proc.pid;
    this.stderrLines = init.stderrLines;
    this.dir = init.dir;
    this.serialLogPath = init.serialLogPath;
    this.qmpSocket = init.qmpSocket;
    this.plan = init.plan;
    this.image = init.image;
    this.write = init.write;
    this.graceMs = init.graceMs;
    this.fd = openSync(this.serialLogPath, 'r');
    this.exited = init.proc.exited.then((status) => (this.exitStatus = status));
    live.add(this);
  }

  /** True while QEMU runs. */
  get running(): boolean {
    return this.exitStatus === undefined;
  }

  /** The whole serial console output so far, as QEMU wrote it. */
  log(): string {
    this.pull();
    return this.text;
  }

  /** The end of QEMU's stderr. */
  stderr(lines = 15): string {
    return this.stderrLines.slice(-lines).join('\n');
  }

  /** The current end of the log: pass it as `since` to `waitFor` to skip what is already there. */
  mark(): number {
    this.pull();
    return this.text.length;
  }

  /**
   * Wait for a complete serial console line that matches `pattern` (tested on the line without
   * escape sequences). On timeout the VM is stopped and a VmTimeoutError (exit 7) says what was
   * awaited, for how long, with the end of the serial log and of QEMU's stderr.
   */
  async waitFor(pattern: RegExp, timeoutMs: number, options: { since?: number; kernelStallMs?: number } = {}): Promise<WaitResult> {
    const re = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    const started = performance.now();
    const stallMs = options.kernelStallMs ?? KERNEL_STALL_MS;
    const stalls: KernelStall[] = [];
    let scan = options.since ?? 0;
    let length = -1;
    let grewAt = started;
    // The log's length when it was last found not to be a stalled kernel: not looked at again until it grows.
    let notStalled = -1;
    for (;;) {
      const wasRunning = this.running;
      this.pull();
      if (this.text.length !== length) {
        length = this.text.length;
        grewAt = performance.now();
      } else if (wasRunning && stallMs > 0 && stalls.length < 2 && notStalled !== length && performance.now() - grewAt >= stallMs) {
        const line = kernelInitStall(this.text);
        if (line === undefined) notStalled = length;
        else {
          stalls.push(await this.resetStalledKernel(line, performance.now() - grewAt));
          grewAt = performance.now();
        }
      }
      const end = this.text.lastIndexOf('\n') + 1;
      while (scan < end) {
        const nl = this.text.indexOf('\n', scan);
        const line = cleanLine(this.text.slice(scan, nl));
        scan = nl + 1;
        const match = re.exec(line);
        if (match) {
          const now = performance.now();
          return { line, match, elapsedMs: now - this.startedAt, waitedMs: now - started, guestUptimeS: guestUptime(line), end: scan };
        }
      }
      if (!wasRunning) {
        const serial = this.serialTail();
        const stderr = this.stderr();
        await this.stop();
        throw new GeminiError(
          `QEMU ${this.exitStatus === undefined ? 'stopped' : typeof this.exitStatus === 'number' ? `exited with code ${this.exitStatus}` : `was killed by ${this.exitStatus}`} before ${pattern} appeared on the serial console: ${quoteCommand(this.plan)}${section('serial console', serial)}${section('QEMU stderr', stderr)}`,
          ExitCode.commandFailed,
        );
      }
      const waited = performance.now() - started;
      if (waited >= timeoutMs) {
        this.pull();
        const serial = this.serialTail();
        const stderr = this.stderr();
        await this.stop();
        throw new VmTimeoutError(
          `timed out after ${formatSeconds(waited)} waiting for ${pattern} on the serial console of ${this.image} (QEMU pid ${this.pid})` +
            section('kernel stalls answered with a reset', stalls.map(describeStall).join('\n')) +
            section(`last ${TAIL_LINES} lines of the serial console`, serial || '(nothing was printed)') +
            section('QEMU stderr', stderr || '(empty)'),
          serial,
          stderr,
          waited,
        );
      }
      await Promise.race([sleep(Math.min(100, timeoutMs - waited)), this.exited]);
    }
  }

  /** Send one QMP command (after the capabilities handshake) and return its `return` value. */
  qmp(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    const call = this.qmpQueue.then(() => qmpRequest(this.qmpSocket, command, args, timeoutMs, () => this.running));
    this.qmpQueue = call.catch(() => undefined);
    return call;
  }

  /** Every kernel stall a wait answered with a reset, in order. */
  readonly kernelStalls: KernelStall[] = [];

  /** Record where the vCPUs are, say so on stderr (CI logs keep it), and reset the VM. */
  private async resetStalledKernel(line: string, quietMs: number): Promise<KernelStall> {
    let registers = '';
    try {
      const out = String(await this.qmp('human-monitor-command', { 'command-line': 'info registers -a' }));
      // x86 prints `CPU#0`, then `RIP=...` (`EIP=` below long mode) and `HLT=1` (HLT: the vCPU waits for an interrupt); arm64 `PC=...`.
      registers = out.split(/\s+/).filter((w) => /^(CPU#\d+|[RE]IP=|PC=|HLT=)/.test(w)).join(' ');
    } catch (err) {
      registers = `(not read: ${(err as Error).message})`;
    }
    const stall = { line, quietMs, registers };
    this.kernelStalls.push(stall);
    process.stderr.write(`${this.image} (QEMU pid ${this.pid}): ${describeStall(stall)}; resetting the VM\n`);
    await this.reset();
    return stall;
  }

  /** Hard reset, like the reset button. */
  async reset(): Promise<void> {
    await this.qmp('system_reset');
  }

  /** ACPI power button: the guest shuts down if it listens. */
  async powerdown(): Promise<void> {
    await this.qmp('system_powerdown');
  }

  /** Stop QEMU (SIGTERM, SIGKILL after the grace period) and remove the temp dir. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.running) {
        this.proc.kill('SIGTERM');
        const gone = await Promise.race([this.exited.then(() => true), sleep(this.graceMs, undefined, { ref: false }).then(() => false)]);
        if (!gone) {
          this.proc.kill('SIGKILL');
          await this.exited;
        }
      }
      this.pull();
      this.closeLog();
      await rm(this.dir, { recursive: true, force: true });
      live.delete(this);
    })();
    return this.stopping;
  }

  /** @internal synchronous last-resort cleanup, for process exit and signals. */
  killSync(): void {
    if (this.running) {
      try {
        // With --write, let QEMU flush the image; a throwaway overlay can die at once.
        process.kill(this.pid, this.write ? 'SIGTERM' : 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.closeLog();
    rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  private serialTail(): string {
    return lastLines(this.text.split('\n').map(cleanLine).join('\n'), TAIL_LINES);
  }

  private closeLog(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }

  /** Read what QEMU appended to the serial log since the last call. */
  private pull(): void {
    if (this.fd === undefined) return;
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = readSync(this.fd, buf, 0, buf.length, this.readPos);
      if (n <= 0) break;
      this.readPos += n;
      this.text += this.decoder.write(buf.subarray(0, n));
    }
  }
}

function section(title: string, body: string): string {
  return body ? `\n--- ${title} ---\n${body}` : '';
}

function describeStall(s: KernelStall): string {
  return `the kernel printed nothing for ${formatSeconds(s.quietMs)} before running its init, after "${s.line}"${s.registers ? ` (${s.registers})` : ''}`;
}

function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
}

/**
 * One QMP command on `socketPath`, within `timeoutMs`. QEMU makes its QMP socket while it
 * starts, so on a loaded machine a call can come before it listens: while `alive()` says QEMU
 * runs, a socket that is missing or refuses the connection is tried again.
 */
export async function qmpRequest(socketPath: string, command: string, args: Record<string, unknown> | undefined, timeoutMs: number, alive: () => boolean): Promise<unknown> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await qmpCall(socketPath, command, args, Math.max(1, deadline - performance.now()));
    } catch (err) {
      const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if ((code === 'ENOENT' || code === 'ECONNREFUSED') && alive() && performance.now() < deadline - 200) {
        await sleep(200);
        continue;
      }
      throw err;
    }
  }
}

/** One QMP exchange on a fresh connection: greeting, qmp_capabilities, then the command. */
function qmpCall(socketPath: string, command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const sock = createConnection(socketPath);
    let buffer = '';
    let stage: 'greeting' | 'capabilities' | 'command' = 'greeting';
    let settled = false;
    const finish = (err: Error | undefined, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolvePromise(value);
    };
    const timer = setTimeout(() => finish(new GeminiError(`QMP ${command}: no answer from ${socketPath} within ${timeoutMs} ms`, ExitCode.timeout)), timeoutMs);
    const send = (execute: string, a?: Record<string, unknown>): void => {
      sock.write(`${JSON.stringify(a ? { execute, arguments: a } : { execute })}\n`);
    };
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        let msg: { QMP?: unknown; event?: string; return?: unknown; error?: { class?: string; desc?: string } };
        try {
          msg = JSON.parse(line);
        } catch {
          return finish(new GeminiError(`QMP ${command}: not JSON: ${line}`, ExitCode.commandFailed));
        }
        if (msg.event) continue;
        if (msg.error) return finish(new GeminiError(`QMP ${stage === 'command' ? command : 'qmp_capabilities'} failed: ${msg.error.class ?? 'Error'}: ${msg.error.desc ?? ''}`, ExitCode.commandFailed));
        if (stage === 'greeting' && msg.QMP) {
          stage = 'capabilities';
          send('qmp_capabilities');
        } else if (stage === 'capabilities' && 'return' in msg) {
          stage = 'command';
          send(command, args);
        } else if (stage === 'command' && 'return' in msg) {
          return finish(undefined, msg.return);
        }
      }
    });
    sock.on('error', (err) => finish(new GeminiError(`QMP ${command}: cannot talk to ${socketPath}: ${err.message}`, ExitCode.commandFailed, { cause: err })));
    sock.on('close', () => finish(new GeminiError(`QMP ${command}: ${socketPath} closed the connection before answering`, ExitCode.commandFailed)));
  });
}

async function prepareFirmware(arch: Arch, dir: string): Promise<{ code: string; vars: string }> {
  const fw = UEFI_FIRMWARE[arch];
  for (const file of [fw.code, fw.vars]) {
    if (!existsSync(file)) {
      throw new GeminiError(`UEFI firmware ${file} was not found: install the Debian package ${fw.package} (apt-get install ${fw.package}), or run scripts/install-host-deps.sh`, ExitCode.missingTool);
    }
  }
  const vars = join(dir, 'efivars.fd');
  await copyFile(fw.vars, vars);
  let code = fw.code;
  if (fw.padTo) {
    if ((await stat(vars)).size < fw.padTo) await truncate(vars, fw.padTo);
    if ((await stat(code)).size < fw.padTo) {
      code = join(dir, 'efi-code.fd');
      await copyFile(fw.code, code);
      await truncate(code, fw.padTo);
    }
  }
  return { code, vars };
}

/**
 * Boot a VM: a private temp dir, a qcow2 overlay over the image (unless `write`), a writable
 * UEFI VARS copy, the seed ISO, then QEMU in the background. Resolves once QEMU's QMP socket
 * is up; QEMU failing to start is a CommandFailedError (exit 4) with its stderr. Always call
 * `stop()`; VMs still running when this process exits or is interrupted are killed.
 */
export async function bootVm(opts: BootOptions): Promise<Vm> {
  const image = resolve(opts.image);
  if (!existsSync(image) || !statSync(image).isFile()) throw new GeminiError(`image ${opts.image} does not exist or is not a file`, ExitCode.invalidInput);
  const seedIsDir = opts.seed !== undefined && existsSync(opts.seed) && statSync(opts.seed).isDirectory();
  if (opts.seed !== undefined && !existsSync(opts.seed)) throw new GeminiError(`seed ${opts.seed} does not exist`, ExitCode.invalidInput);
  const progress = opts.onProgress ?? (() => {});

  const dir = mkdtempSync(join(tmpdir(), 'gk-qemu-'));
  try {
    const serialLog = opts.serialLog ? resolve(opts.serialLog) : join(dir, 'serial.log');
    const qemuOpts: QemuOptions = {
      arch: opts.arch,
      firmware: opts.firmware,
      disk: { ...(opts.write ? { path: image, format: opts.format } : { path: join(dir, 'overlay.qcow2'), format: 'qcow2' as const }), serial: opts.diskSerial },
      seed: opts.seed === undefined ? undefined : { path: seedIsDir ? join(dir, 'seed.iso') : resolve(opts.seed), as: opts.seedAs },
      uefi: opts.firmware === 'uefi' ? { vars: join(dir, 'efivars.fd') } : undefined,
      memoryMiB: opts.memoryMiB,
      cpus: opts.cpus,
      cpu: opts.cpu,
      serialLog,
      qmpSocket: join(dir, 'qmp.sock'),
      consoleSocket: opts.console ? join(dir, 'console.sock') : undefined,
      networks: opts.networks,
      drives: opts.drives?.map((d) => ({ ...d, path: resolve(d.path) })),
      cdrom: opts.cdrom === undefined ? undefined : { path: resolve(opts.cdrom) },
      kernel: opts.kernel,
      name: opts.name,
      netns: opts.netns,
    };
    qemuPlan(qemuOpts); // validate before doing any work
    await requireTools([QEMU_BINARY[opts.arch], ...(opts.netns ? ['ip'] : []), ...(opts.write ? [] : ['qemu-img']), ...(seedIsDir ? ['xorriso'] : [])]);

    if (!opts.write) {
      progress(`creating a throwaway overlay over ${opts.image} (the image is not modified)`);
      await runPlan(overlayPlan(image, opts.format, qemuOpts.disk.path));
    }
    if (opts.firmware === 'uefi') qemuOpts.uefi = await prepareFirmware(opts.arch, dir);
    if (seedIsDir) {
      progress(`making a cidata seed ISO from ${opts.seed}`);
      await makeSeedIso(opts.seed!, qemuOpts.seed!.path, process.env.SOURCE_DATE_EPOCH);
    }
    try {
      writeFileSync(serialLog, '', { mode: 0o600 });
    } catch (err) {
      throw new GeminiError(`cannot write the serial log ${serialLog}: ${(err as Error).message}`, ExitCode.invalidInput, { cause: err });
    }

    const plan = qemuPlan(qemuOpts);
    const stderrLines: string[] = [];
    installExitHandlers();
    progress(`starting ${plan.cmd} (${opts.arch}, ${opts.firmware === 'uefi' ? 'UEFI' : 'BIOS'}, TCG)`);
    const proc = spawnPlan(plan, {
      stderr: (line) => {
        stderrLines.push(line);
        if (stderrLines.length > 200) stderrLines.shift();
      },
    });
    const vm = new Vm({ proc, stderrLines, dir, serialLogPath: serialLog, qmpSocket: qemuOpts.qmpSocket, plan, image: opts.image, write: Boolean(opts.write), graceMs: opts.stopGraceMs ?? 5000 });
    vm.consoleSocket = qemuOpts.consoleSocket;
    const deadline = performance.now() + 30_000;
    while (!existsSync(vm.qmpSocket)) {
      if (!vm.running || performance.now() > deadline) {
        const status = vm.exitStatus;
        await vm.stop();
        const stderr = vm.stderr(30);
        if (status === undefined) throw new GeminiError(`QEMU did not open its QMP socket within 30 s: ${quoteCommand(plan)}${section('QEMU stderr', stderr)}`, ExitCode.timeout);
        throw new CommandFailedError(plan, typeof status === 'number' ? status : undefined, stderr, typeof status === 'string' ? status : undefined);
      }
      await Promise.race([sleep(50), vm.exited]);
    }
    // The QMP socket opens early; QEMU answers only once every device is set up.
    try {
      await vm.qmp('query-status', undefined, 30_000);
    } catch (err) {
      await Promise.race([vm.exited, sleep(2000, undefined, { ref: false })]);
      const status = vm.exitStatus;
      await vm.stop();
      if (status === undefined) throw err;
      throw new CommandFailedError(plan, typeof status === 'number' ? status : undefined, vm.stderr(30), typeof status === 'string' ? status : undefined);
    }
    return vm;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
