import type { ClockPort, TimerHandle } from '../core/ports.ts';

/**
 * The production clock: performance.now() (monotonic, never stepped by NTP) and real timers.
 * Timers stay ref'd: the agent runs until it is told to stop, and a pending fence timer must
 * keep the process alive. cancel() is idempotent and safe after the timer fired.
 */
export function createClock(): ClockPort {
  return {
    now: () => performance.now(),
    setTimer(ms: number, fn: () => void): TimerHandle {
      let timer: NodeJS.Timeout | undefined = setTimeout(() => {
        timer = undefined;
        fn();
      }, Math.max(0, ms));
      return {
        cancel() {
          if (timer !== undefined) clearTimeout(timer);
          timer = undefined;
        },
      };
    },
    sleep: (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms))),
  };
}
