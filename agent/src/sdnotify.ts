import { runPlan, spawnPlan, type RunningProcess } from '#common/exec.ts';

/**
 * Tell systemd about readiness and liveness. Node has no unix datagram sockets, so the
 * message goes through `systemd-notify` with our PID (NotifyAccess=main needs --pid).
 */
export async function sdNotify(state: string, opts: { socket?: string; timeoutMs?: number } = {}): Promise<boolean> {
  const socket = opts.socket ?? process.env.NOTIFY_SOCKET;
  if (!socket) return false;
  const args = [`--pid=${process.pid}`, ...state.split('\n').filter(Boolean)];
  // Never throws: a notification that fails (systemd-notify killed by a signal, as the stop of
  // the unit's processes did before KillMode=mixed) must not end the agent that sent it.
  const r = await runPlan({ cmd: 'systemd-notify', args, env: { NOTIFY_SOCKET: socket } }, { allowFailure: true, timeoutMs: opts.timeoutMs ?? 10_000 }).catch(() => undefined);
  return r?.exitCode === 0;
}

/** Watchdog ping interval: half of WATCHDOG_USEC, or undefined when systemd set none. */
export function watchdogIntervalMs(): number | undefined {
  const usec = Number(process.env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return undefined;
  if (process.env.WATCHDOG_PID && Number(process.env.WATCHDOG_PID) !== process.pid) return undefined;
  return Math.floor(usec / 1000 / 2);
}

/**
 * The helper behind NotifyPipe: one JSON string per line on stdin, each sent as one datagram to
 * the notification socket with the agent's PID in its credentials (what `systemd-notify --pid`
 * sends; root may name another PID), so that NotifyAccess=main accepts it. It says "ready" once.
 */
const PIPE_HELPER = `import json, os, socket, struct, sys
pid, path = int(sys.argv[1]), sys.argv[2]
if path.startswith('@'):
    path = '\\0' + path[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
cred = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack('3i', pid, os.getuid(), os.getgid()))]
print('ready', flush=True)
for line in sys.stdin:
    try:
        s.sendmsg([json.loads(line).encode()], cred, 0, path)
    except (OSError, ValueError) as e:
        print(e, file=sys.stderr, flush=True)
`;

/**
 * The watchdog's pings, twice a second, without a program start each: one `python3` (the image
 * has it for cloud-init) started once and fed a line per ping. Under TCG a `systemd-notify` start
 * costs 0.3-0.7 s, most of it CPU the guest's PostgreSQL and uploads then lack. The helper only
 * sends what the agent writes, so a frozen agent still stops pinging and its watchdog still
 * fires. Until the helper has said it is ready, and after it died, `systemd-notify` sends.
 */
export class NotifyPipe {
  private helper: RunningProcess | undefined;
  private ready = false;
  private unavailable = false;
  private deaths = 0;
  private waiters: ((ready: boolean) => void)[] = [];

  constructor(private readonly socket = process.env.NOTIFY_SOCKET, private readonly pid = process.pid) {}

  /** Send `state`; true when it went (through the helper: when it was handed over). */
  async send(state: string): Promise<boolean> {
    if (!this.socket) return false;
    this.prepare();
    if (this.helper && this.ready && this.helper.stdin) {
      this.helper.stdin.write(`${JSON.stringify(state)}\n`);
      return true;
    }
    return sdNotify(state, { socket: this.socket });
  }

  /** Start the helper ahead of the first ping: Python's start takes seconds under TCG. */
  prepare(): void {
    if (this.socket && !this.helper && !this.unavailable) this.start();
  }

  /** The helper runs and said it is ready: pings go through it. */
  isReady(): boolean {
    return this.ready;
  }

  /**
   * Start the helper if need be and wait until it is ready: true then; false at once without a
   * notification socket or python3, when it died, or after `timeoutMs`.
   */
  whenReady(timeoutMs: number): Promise<boolean> {
    this.prepare();
    if (this.ready) return Promise.resolve(true);
    if (!this.helper) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => settle(false), timeoutMs);
      const settle = (ready: boolean): void => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== settle);
        resolve(ready);
      };
      this.waiters.push(settle);
    });
  }

  private notifyWaiters(ready: boolean): void {
    for (const w of [...this.waiters]) w(ready);
  }

  /** End the helper (a test; when the agent exits, its stdin closes and it ends by itself). */
  async close(): Promise<void> {
    const h = this.helper;
    this.helper = undefined;
    this.ready = false;
    // Its stdin ends: it leaves its loop and exits.
    h?.stdin?.end();
    await h?.exited;
  }

  private start(): void {
    try {
      // -I -S: no user site, no site module, no environment; the start is what the watchdog waits for.
      const helper = spawnPlan({ cmd: 'python3', args: ['-I', '-S', '-c', PIPE_HELPER, String(this.pid), this.socket!] }, {
        stdin: true,
        stdout: (line) => {
          if (line === 'ready' && this.helper === helper) {
            this.ready = true;
            this.notifyWaiters(true);
          }
        },
      });
      this.helper = helper;
      void helper.processExited.then(() => {
        if (this.helper !== helper) return;
        // Died: systemd-notify meanwhile, and another helper at the next ping, three times at most.
        this.helper = undefined;
        this.ready = false;
        if (++this.deaths >= 3) this.unavailable = true;
        this.notifyWaiters(false);
      });
    } catch {
      // No python3: systemd-notify, as before.
      this.unavailable = true;
    }
  }
}
