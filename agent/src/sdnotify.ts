import { runPlan } from '#common/exec.ts';

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
