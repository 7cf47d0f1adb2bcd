/**
 * The simulator's world: one thread, virtual time, a seeded random source, processes that
 * crash, restart and pause, and a network whose links can drop, delay or be cut per direction.
 * Nothing here touches real time or real I/O, so a seed replays exactly.
 */

/** A small, fast, seedable PRNG (mulberry32). */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  between(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  int(lo: number, hi: number): number {
    return Math.floor(this.between(lo, hi + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
}

/** A process of the simulated system: its callbacks run only while it is alive and not paused. */
export class SimProcess {
  epoch = 0;
  alive = true;
  pausedUntil = 0;
  /** Clock rate relative to virtual time, within the drift bound. */
  rate = 1;
  offset = 0;
  constructor(readonly name: string) {}
}

interface Event {
  t: number;
  seq: number;
  fn: () => void;
}

/** A binary heap of events ordered by (time, sequence). */
class Queue {
  private h: Event[] = [];
  get size(): number {
    return this.h.length;
  }
  push(e: Event): void {
    const h = this.h;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): Event | undefined {
    const h = this.h;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}
const less = (a: Event, b: Event): boolean => a.t < b.t || (a.t === b.t && a.seq < b.seq);

export class RpcError extends Error {}

/** Per-direction link state. */
interface Link {
  up: boolean;
  loss: number;
  delayLo: number;
  delayHi: number;
}

export class World {
  now = 0;
  private seq = 0;
  private readonly q = new Queue();
  private readonly links = new Map<string, Link>();
  readonly trace: string[] = [];
  traceLimit = 400;
  events = 0;

  constructor(readonly rng: Rng) {}

  log(line: string): void {
    this.trace.push(`${(this.now / 1000).toFixed(3).padStart(9)}s ${line}`);
    if (this.trace.length > this.traceLimit * 2) this.trace.splice(0, this.trace.length - this.traceLimit);
  }

  /** Run fn at virtual time t, in no process (the world itself: faults, clients, checks). */
  at(t: number, fn: () => void): void {
    this.q.push({ t: Math.max(t, this.now), seq: this.seq++, fn });
  }

  /** Run fn after ms of virtual time inside process p: dropped if p crashed, deferred while paused. */
  inProcess(p: SimProcess, delayMs: number, fn: () => void): void {
    const epoch = p.epoch;
    const run = (): void => {
      if (!p.alive || p.epoch !== epoch) return;
      if (p.pausedUntil > this.now) {
        // Looked at again every 100 ms: a pause lifted early (healAll) resumes the process then,
        // not at the end the pause first had (the watchdog would kill it as if still frozen).
        this.at(Math.min(p.pausedUntil, this.now + 100), run);
        return;
      }
      fn();
    };
    this.at(this.now + delayMs, run);
  }

  /** Local clock reading of process p. */
  localNow(p: SimProcess): number {
    return p.offset + this.now * p.rate;
  }

  /** A timer of ms on p's clock. */
  timer(p: SimProcess, ms: number, fn: () => void): { cancel(): void } {
    let cancelled = false;
    this.inProcess(p, Math.max(0, ms) / p.rate, () => {
      if (!cancelled) fn();
    });
    return { cancel: () => void (cancelled = true) };
  }

  private link(from: string, to: string): Link {
    const k = `${from}>${to}`;
    let l = this.links.get(k);
    if (!l) {
      l = { up: true, loss: 0, delayLo: 0.5, delayHi: 5 };
      this.links.set(k, l);
    }
    return l;
  }

  setLink(from: string, to: string, up: boolean): void {
    this.link(from, to).up = up;
  }

  setLinkQuality(from: string, to: string, loss: number, delayLo: number, delayHi: number): void {
    Object.assign(this.link(from, to), { loss, delayLo, delayHi });
  }

  linkUp(from: string, to: string): boolean {
    return this.link(from, to).up;
  }

  /** A message crosses from → to now: undefined when dropped, else its delay. */
  transit(from: string, to: string): number | undefined {
    const l = this.link(from, to);
    if (!l.up || (l.loss > 0 && this.rng.chance(l.loss))) return undefined;
    return this.rng.between(l.delayLo, l.delayHi);
  }

  /**
   * A request from process `from` to process `to`, answered by `handler` inside `to`. Rejects
   * when the caller's timeout (on its own clock) passes first; never settles if the caller crashes.
   * With `lingerMs` (the agent's WarmPool), a request or answer the link loses is not gone: TCP
   * sends it again, and it arrives at any time until `lingerMs` after the caller's timeout, after
   * the caller has given up on it and possibly after its later requests.
   */
  rpc<T>(from: SimProcess, to: SimProcess, timeoutMs: number, handler: () => Promise<T>, lingerMs = 0): Promise<T> {
    const late = (a: string, b: string): number | undefined => (lingerMs > 0 && this.linkUp(a, b) ? this.rng.between(timeoutMs / 2, timeoutMs + lingerMs) : undefined);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      this.timer(from, timeoutMs, () => {
        if (settled) return;
        settled = true;
        reject(new RpcError(`${to.name} did not answer within ${timeoutMs} ms`));
      });
      const there = this.transit(from.name, to.name) ?? late(from.name, to.name);
      if (there === undefined) return;
      this.inProcess(to, there, () => {
        handler().then(
          (v) => {
            const back = this.transit(to.name, from.name) ?? late(to.name, from.name);
            if (back === undefined) return;
            this.inProcess(from, back, () => {
              if (settled) return;
              settled = true;
              resolve(v);
            });
          },
          () => undefined,
        );
      });
    });
  }

  /** Pop and run the next event at or before `until`. False when none is left. */
  step(until: number): boolean {
    const e = this.q.pop();
    if (!e) return false;
    if (e.t > until) {
      this.q.push(e);
      return false;
    }
    this.now = e.t;
    this.events++;
    e.fn();
    return true;
  }
}

/** Let every promise continuation that the last event released run, before the next event. */
export const settle = (): Promise<void> => new Promise((r) => setImmediate(r));
