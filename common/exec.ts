import { execa, type Options as ExecaOptions } from 'execa';
import { ExitCode, GeminiError } from './errors.ts';

/** A tool call as data: planners return these, `runPlan` executes them, tests snapshot them. */
export interface CommandPlan {
  cmd: string;
  args: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Text or bytes written to the command's stdin. */
  input?: string | Uint8Array;
  /** A short human label for progress output; defaults to the command name. */
  title?: string;
}

/** Which Debian package provides each external tool we call. */
export const TOOL_PACKAGES: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  'mkfs.ext4': 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  resize2fs: 'e2fsprogs',
  tune2fs: 'e2fsprogs',
  mksquashfs: 'squashfs-tools',
  unsquashfs: 'squashfs-tools',
  'mkfs.erofs': 'erofs-utils',
  'mkfs.vfat': 'dosfstools',
  mcopy: 'mtools',
  mmd: 'mtools',
  mdir: 'mtools',
  mtype: 'mtools',
  sfdisk: 'fdisk',
  sgdisk: 'gdisk',
  'grub-mkimage': 'grub-common',
  'grub-editenv': 'grub-common',
  'grub-script-check': 'grub-common',
  'grub-emu': 'grub-emu',
  'qemu-img': 'qemu-utils',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-system-aarch64': 'qemu-system-arm',
  xorriso: 'xorriso',
  zstd: 'zstd',
  xz: 'xz-utils',
  gzip: 'gzip',
  bzip2: 'bzip2',
  'cloud-init': 'cloud-init',
  'systemd-analyze': 'systemd',
  systemctl: 'systemd',
  pg_ctl: 'postgresql-common',
  initdb: 'postgresql-common',
  pg_basebackup: 'postgresql-common',
  pg_rewind: 'postgresql-common',
  psql: 'postgresql-client',
  pg_verifybackup: 'postgresql-client',
  arping: 'iputils-arping',
  ping: 'iputils-ping',
  ip: 'iproute2',
  dockerd: 'docker.io',
  docker: 'docker.io',
  patroni: 'patroni',
  etcd: 'etcd-server',
  unshare: 'util-linux',
  losetup: 'mount',
  blkid: 'util-linux',
  chroot: 'coreutils',
  tar: 'tar',
  setfattr: 'attr',
  newuidmap: 'uidmap',
  openssl: 'openssl',
  dnsmasq: 'dnsmasq-base',
};

export function packageFor(tool: string): string | undefined {
  return TOOL_PACKAGES[tool.split('/').pop() ?? tool];
}

/** Quote a command line so it can be pasted into a shell. */
export function quoteCommand(plan: Pick<CommandPlan, 'cmd' | 'args'>): string {
  return [plan.cmd, ...plan.args].map(shellQuote).join(' ');
}

export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Raised when a tool is not installed: names the Debian package that provides it. */
export class ToolMissingError extends GeminiError {
  readonly tool: string;
  constructor(tool: string) {
    const pkg = packageFor(tool);
    super(
      pkg
        ? `required tool \`${tool}\` was not found: install the Debian package ${pkg} (apt-get install ${pkg}), or run scripts/install-host-deps.sh`
        : `required tool \`${tool}\` was not found on PATH`,
      ExitCode.missingTool,
    );
    this.name = 'ToolMissingError';
    this.tool = tool;
  }
}

/** Raised when a command exits non-zero: quotes it, gives the exit code and the tail of stderr. */
export class CommandFailedError extends GeminiError {
  readonly command: string;
  readonly commandExitCode: number | undefined;
  readonly stderrTail: string;
  constructor(plan: CommandPlan, exitCode: number | undefined, stderr: string, signal?: string) {
    const tail = lastLines(stderr, 15);
    const how = signal ? `was killed by ${signal}` : `exited with code ${exitCode}`;
    super(
      `command ${how}: ${quoteCommand(plan)}${tail ? `\n--- last lines of stderr ---\n${tail}` : ''}`,
      ExitCode.commandFailed,
    );
    this.name = 'CommandFailedError';
    this.command = quoteCommand(plan);
    this.commandExitCode = exitCode;
    this.stderrTail = tail;
  }
}

export function lastLines(text: string, n: number): string {
  const lines = text.replace(/\s+$/, '').split('\n');
  return lines.slice(-n).join('\n');
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

export interface RunOptions {
  /** Return the result instead of throwing when the command exits non-zero. */
  allowFailure?: boolean;
  /** Give up after this many milliseconds. */
  timeoutMs?: number;
  /** Called with each line of stderr as it arrives, e.g. for progress. */
  onStderrLine?: (line: string) => void;
  /** The same for stdout (a progress bar redrawn with carriage returns counts as lines). */
  onStdoutLine?: (line: string) => void;
  /** Keep stdout as bytes (for binary output). */
  binaryStdout?: boolean;
  signal?: AbortSignal;
}

/** The single place where geminik8s starts external processes. */
export async function runPlan(plan: CommandPlan, options: RunOptions = {}): Promise<RunResult> {
  const started = performance.now();
  const execaOptions: ExecaOptions = {
    reject: false,
    env: plan.env,
    extendEnv: true,
    cwd: plan.cwd,
    input: plan.input as string | undefined,
    timeout: options.timeoutMs,
    cancelSignal: options.signal,
    stripFinalNewline: false,
    encoding: options.binaryStdout ? 'buffer' : 'utf8',
  };
  const child = execa(plan.cmd, plan.args, execaOptions);
  const follow = (stream: NodeJS.ReadableStream | null | undefined, fn: ((line: string) => void) | undefined): void => {
    if (!fn || !stream) return;
    let pending = '';
    stream.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split(/\r?\n|\r/);
      pending = lines.pop() ?? '';
      for (const line of lines) fn(line);
    });
  };
  follow(child.stderr, options.onStderrLine);
  if (!options.binaryStdout) follow(child.stdout, options.onStdoutLine);
  const result = await child;
  return settle(plan, result, options, performance.now() - started);
}

/** runPlan's verdict on a finished process: its output, or the error that names why. */
function settle(plan: CommandPlan, result: Awaited<ReturnType<typeof execa>>, options: RunOptions, durationMs: number): RunResult {
  const stderr = String(result.stderr ?? '');
  const stdout = options.binaryStdout ? (result.stdout as unknown as string) : String(result.stdout ?? '');
  if (result.failed) {
    const code = (result as { code?: string }).code;
    if (code === 'ENOENT' && (result as { exitCode?: number }).exitCode === undefined) {
      throw new ToolMissingError(plan.cmd);
    }
    if (result.timedOut) {
      throw new GeminiError(`command timed out after ${options.timeoutMs} ms: ${quoteCommand(plan)}`, ExitCode.timeout);
    }
    if (!options.allowFailure || result.exitCode === undefined) {
      throw new CommandFailedError(plan, result.exitCode, stderr, result.signal);
    }
  }
  return { stdout, stderr, exitCode: result.exitCode ?? 0, durationMs };
}

/** A command started before it is needed, waiting for its stdin (see preparePlan). */
export interface PreparedRun {
  /** Still running and waiting: `run` will not have to start it. */
  ready(): boolean;
  /** Write `input`, end stdin, and settle as runPlan would (`timeoutMs` from now, not from the start). */
  run(input: string, options?: Pick<RunOptions, 'allowFailure' | 'timeoutMs'>): Promise<RunResult>;
  /** Not needed after all: end it without input. */
  cancel(): void;
}

/**
 * Start `plan` now, with its stdin open, for a moment when starting a program would cost too
 * much: a command that reads its work from stdin (`ip -batch -`) runs it as soon as `run`
 * writes it. Under TCG a program start costs 0.3-0.7 s, inside a switchover's write pause.
 * The error is runPlan's, and quotes the plan with the input that was written.
 */
export function preparePlan(plan: CommandPlan): PreparedRun {
  const child = execa(plan.cmd, plan.args, { env: plan.env, extendEnv: true, cwd: plan.cwd, reject: false, stdin: 'pipe', stripFinalNewline: false, encoding: 'utf8' });
  let exited = false;
  void child.then(() => {
    exited = true;
  });
  // A write to a process that died meanwhile fails with EPIPE: the result says how it ended.
  child.stdin?.on('error', () => undefined);
  let used = false;
  return {
    ready: () => !exited && !used && child.pid !== undefined,
    cancel() {
      used = true;
      child.kill('SIGTERM');
    },
    async run(input, options = {}) {
      if (used) throw new Error(`a prepared ${quoteCommand(plan)} runs once`);
      used = true;
      const started = performance.now();
      let timedOut = false;
      const timer = options.timeoutMs
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, options.timeoutMs)
        : undefined;
      child.stdin?.end(input);
      try {
        const result = await child;
        const shown = { ...plan, args: [...plan.args, `<<< ${input.trim()}`] };
        if (timedOut) {
          throw new GeminiError(`command timed out after ${options.timeoutMs} ms: ${quoteCommand(shown)}`, ExitCode.timeout);
        }
        return settle(shown, result, options, performance.now() - started);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Resolve a tool on PATH, or undefined. */
export async function findTool(tool: string): Promise<string | undefined> {
  const { access, constants } = await import('node:fs/promises');
  const { delimiter, join } = await import('node:path');
  const dirs = (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin']);
  for (const dir of dirs) {
    const candidate = join(dir, tool);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Fail early, listing every missing tool with its Debian package. */
export async function requireTools(tools: string[]): Promise<void> {
  const missing: string[] = [];
  for (const tool of tools) if (!(await findTool(tool))) missing.push(tool);
  if (missing.length === 1) throw new ToolMissingError(missing[0]!);
  if (missing.length > 1) {
    const pkgs = [...new Set(missing.map((t) => packageFor(t)).filter(Boolean))];
    throw new GeminiError(
      `required tools not found: ${missing.join(', ')}; install the Debian packages ${pkgs.join(' ')} (apt-get install ${pkgs.join(' ')})`,
      ExitCode.missingTool,
    );
  }
}

/** A long-running process started from a plan (daemons in test harnesses, QEMU). */
export interface RunningProcess {
  pid: number;
  /** Resolves with the exit code (or the signal name) when the process has ended and its output pipes have closed. */
  exited: Promise<number | string>;
  /**
   * Resolves when the process itself has exited (its `exit` event), even while another process
   * that inherited its stdout or stderr keeps `exited` waiting: what a supervisor (systemd: the
   * main PID's SIGCHLD) acts on.
   */
  processExited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): void;
  /** Its stdin, when started with `stdin: true` (a helper fed line by line). */
  stdin?: NodeJS.WritableStream;
}

/** Start a plan without waiting for it; each stdout/stderr line goes to the callbacks. */
export function spawnPlan(plan: CommandPlan, handlers: { stdout?: (line: string) => void; stderr?: (line: string) => void; stdin?: boolean } = {}): RunningProcess {
  const child = execa(plan.cmd, plan.args, { env: plan.env, extendEnv: true, cwd: plan.cwd, reject: false, buffer: false, stdin: handlers.stdin ? 'pipe' : 'ignore' });
  // A helper that died: the write fails with EPIPE, and its exit is what the caller watches.
  child.stdin?.on('error', () => undefined);
  const pipe = (stream: NodeJS.ReadableStream | null | undefined, fn?: (line: string) => void): void => {
    if (!stream) return;
    let pending = '';
    stream.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      if (fn) for (const l of lines) fn(l);
    });
  };
  pipe(child.stdout, handlers.stdout);
  pipe(child.stderr, handlers.stderr);
  if (child.pid === undefined) throw new ToolMissingError(plan.cmd);
  const processExited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code ?? -1)));
  return {
    pid: child.pid,
    exited: child.then((r) => r.signal ?? r.exitCode ?? -1),
    processExited,
    ...(handlers.stdin && child.stdin ? { stdin: child.stdin } : {}),
    kill: (signal = 'SIGTERM') => {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
    },
  };
}

/** A process whose stdout is read as a stream (a backup): `done` settles when it has exited. */
export interface StreamingProcess {
  stdout: NodeJS.ReadableStream;
  /** Resolves when the command exits 0; rejects with the input's error if reading it failed, else CommandFailedError (stderr tail). */
  done: Promise<void>;
  kill(signal?: NodeJS.Signals): void;
}

/** Start a plan and hand its stdout over as a stream; stderr is kept for the error. */
export function streamPlan(plan: CommandPlan, input?: AsyncIterable<Uint8Array>): StreamingProcess {
  // With `input` the command reads it on stdin (e.g. zstd decompressing a download as it arrives).
  // execa takes an async iterable as stdin; a Node stream without a file descriptor it does not.
  // When the input fails (a download cut off), that is the cause to report, not the command's
  // complaint about a truncated stdin.
  let inputError: unknown;
  const feed = input
    ? (async function* () {
        try {
          for await (const c of input) yield c;
        } catch (err) {
          inputError = err;
          throw err;
        }
      })()
    : undefined;
  const child = execa(plan.cmd, plan.args, { env: plan.env, extendEnv: true, cwd: plan.cwd, reject: false, buffer: { stdout: false, stderr: true }, stdin: feed ?? 'ignore', encoding: 'buffer' });
  if (!child.stdout) throw new GeminiError(`no stdout from ${quoteCommand(plan)}`, ExitCode.commandFailed);
  // With `buffer: false` execa resumes a stdout nobody reads yet one tick later, and what then
  // flows out is dropped: a caller that awaits anything first (flash opens the device) lost the
  // first bytes under load. Paused, the stream waits for its reader.
  child.stdout.pause();
  const done = child.then((r) => {
    if (inputError !== undefined) throw inputError;
    const code = (r as { code?: string }).code;
    if (code === 'ENOENT' && r.exitCode === undefined) throw new ToolMissingError(plan.cmd);
    if (r.failed) throw new CommandFailedError(plan, r.exitCode, Buffer.from(r.stderr as unknown as Uint8Array ?? []).toString('utf8'), r.signal);
  });
  // The caller may stop reading early; the rejection is theirs to observe through `done`.
  done.catch(() => undefined);
  return {
    stdout: child.stdout,
    done,
    kill: (signal = 'SIGTERM') => {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
    },
  };
}
