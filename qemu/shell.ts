import { createConnection, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { cleanLine } from './harness.ts';

export interface ShellResult {
  code: number;
  output: string;
}

/**
 * A root shell on a guest's virtio console (test images with `boot.debugShell`), driven over
 * QEMU's unix socket: commands go in, their output and exit status come back. Guest traffic
 * never touches a network.
 */
export class GuestShell {
  private buffer = '';
  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (this.buffer += d));
  }

  /** Connect and wait (up to `timeoutMs`) until the guest's autologin shell answers. */
  static async open(path: string, timeoutMs: number): Promise<GuestShell> {
    const deadline = Date.now() + timeoutMs;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path, () => resolve(s));
      s.once('error', reject);
    });
    socket.on('error', () => {});
    const shell = new GuestShell(socket);
    const nonce = randomBytes(4).toString('hex');
    // Until getty has logged root in, input is lost or read by agetty: keep asking.
    while (Date.now() < deadline) {
      // Quoted apart so that the echo of the typed line cannot match, only the command's output.
      socket.write(`\nstty -echo; PS1=''; export TERM=dumb NO_COLOR=1; echo "READY-""${nonce}"\n`);
      for (let i = 0; i < 20; i++) {
        await sleep(250);
        if (shell.buffer.includes(`READY-${nonce}`)) {
          shell.buffer = '';
          return shell;
        }
      }
    }
    socket.destroy();
    throw new GeminiError(`no shell answered on the guest console ${path} within ${timeoutMs / 1000} s (is boot.debugShell set in the image?)`, ExitCode.timeout);
  }

  /** Run one shell command line; resolves with its output and exit status. */
  async run(command: string, timeoutMs = 120_000): Promise<ShellResult> {
    const nonce = randomBytes(6).toString('hex');
    // Output is taken between a start and an end marker, never from a cleared buffer: the tail of
    // the previous command (its marker's line end) can arrive after this command was written.
    const start = `__GKS_${nonce}__`;
    const done = new RegExp(`__GK_${nonce}_(\\d+)__`);
    this.socket.write(`echo "__GKS_""${nonce}__"; ${command}; echo "__GK_${nonce}_$?__"\n`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const m = done.exec(this.buffer);
      const from = this.buffer.indexOf(start);
      if (m && from >= 0 && from < m.index) {
        const body = this.buffer.slice(from + start.length, m.index).replace(/^\r?\n/, '');
        const output = cleanLine(body).replace(/\n$/, '');
        this.buffer = this.buffer.slice(m.index + m[0].length);
        return { code: Number(m[1]), output };
      }
      await sleep(100);
    }
    throw new GeminiError(`guest command timed out after ${timeoutMs / 1000} s: ${command}\n--- output so far ---\n${this.buffer.slice(-2000)}`, ExitCode.timeout);
  }

  /** Like `run`, but a non-zero exit status is an error quoting the command and its output. */
  async check(command: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.code !== 0) throw new GeminiError(`guest command exited with ${r.code}: ${command}\n${r.output.slice(-2000)}`, ExitCode.commandFailed);
    return r.output;
  }

  close(): void {
    this.socket.destroy();
  }
}
