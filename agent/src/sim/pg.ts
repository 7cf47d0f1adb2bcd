import type { PgDiskFacts, PgPort, PgStatus, RejoinMethod } from '../core/ports.ts';
import { rejoinPath, settleRejoin, type HistoryEntry, type LeaderTimeline, type LocalWal, type WalStretch } from '../core/rejoin.ts';
import type { SimProcess, World } from './world.ts';

/** One WAL record: a client write (id > 0) or a timeline switch (id < 0). */
export interface Wal {
  id: number;
  tl: number;
}

interface Waiter {
  pos: number;
  ack: () => void;
  fail: () => void;
}

/**
 * A model of one node's PostgreSQL with the semantics the agent relies on: WAL positions,
 * synchronous commit that waits for the standby's flush (released when the setting is
 * cleared), asynchronous commit, promotion onto a new timeline, rewind to the common history,
 * read-only, and a server that is down, starting or running.
 */
export class SimPostgres {
  wal: Wal[] = [];
  hasData = false;
  standbySignal = false;
  running = false;
  timeline = 1;
  syncNames = '';
  readOnly = false;
  /** Primary: how far the standby flushed, and whether it streams. */
  peerFlush = 0;
  peerStreaming = false;
  /** Standby: the WAL receiver streams from the peer. */
  receiverStreaming = false;
  /** Gray fault: the receiver stays connected but stops flushing and acknowledging. */
  receiverStalled = false;
  /**
   * Standby: how many records the startup process has replayed. Replay trails the flush by one
   * replication round, and stands still while `replayStalled` (a recovery conflict, a stopped
   * startup process) although the receiver keeps flushing and acknowledging.
   */
  replayed = 0;
  replayStalled = false;
  /** Standby: its flushed length at the previous replication round (what replay reaches next). */
  flushedLastRound = 0;
  /** Primary: how far the standby replayed (pg_stat_replication.replay_lsn). */
  peerReplay = 0;
  /** Version of the WAL array's content, bumped on truncation or replacement. */
  version = 0;
  ids = new Set<number>();
  private waiters: Waiter[] = [];
  starting = false;
  /** Bumped by every halt: a start in flight when the server is stopped never completes. */
  private startEpoch = 0;
  /** The leader's timeline at the last rejoin that followed it as it was (the adapter's rejoin-followed file). */
  followedTimeline: number | undefined;
  /** Rejoins that kept WAL the leader does not hold: a follow onto a WAL ours is not a prefix of, or a pg_rewind that trusted histories the WAL disagrees with. */
  followRefused = 0;
  /**
   * The data directory holds the physical slot its peer streams through (primary_slot_name):
   * made by the bootstrap and by ensurePeerSlot; a clone has none (pg_basebackup copies no
   * slots); pg_rewind keeps the target's own; a promotion keeps what the standby had, which is
   * none unless it once led. A standby streams only from a primary that has it.
   */
  peerSlot = false;
  /** Set by the simulator: called when a standby.signal would land in a live primary. */
  onViolation: (what: string) => void = () => undefined;

  constructor(readonly node: string, readonly world: World, readonly proc: SimProcess) {}

  /** What the adapter reads off a stopped data directory (pg_controldata, pg_waldump). */
  localWal(): LocalWal {
    const n = this.wal.length;
    return { systemId: 'sim', timeline: this.wal.at(-1)?.tl ?? 1, lastRecord: n ? BigInt(n - 1) : undefined, lastRecordEnd: n ? BigInt(n) : undefined, laterTimeline: false, segmentBytes: SIM_SEGMENT };
  }

  /** What the adapter asks of a primary: its timeline and that timeline's history. */
  leaderTimeline(): LeaderTimeline {
    const history: HistoryEntry[] = [];
    this.wal.forEach((e, i) => {
      // A switch record starts the new timeline: its parent ends where it starts.
      if (e.id < 0) history.push({ parent: this.wal[i - 1]?.tl ?? e.tl - 1, switchpoint: BigInt(i) });
    });
    return { systemId: 'sim', timeline: this.timeline, history };
  }

  /** What pg_last_wal_replay_lsn() says on a standby; a primary's position otherwise. */
  get replayLsn(): number {
    return this.standbySignal ? Math.min(this.replayed, this.wal.length) : this.wal.length;
  }

  /**
   * standby.signal written: the server starts in recovery, without a standby's settings. What a
   * primary wrote it has applied; a standby's replay goes on from where it stood.
   */
  enterRecovery(): void {
    if (!this.standbySignal) this.replayed = this.flushedLastRound = this.wal.length;
    this.standbySignal = true;
    this.syncNames = '';
    this.readOnly = false;
  }

  get primary(): boolean {
    return this.running && !this.standbySignal;
  }

  get writable(): boolean {
    return this.primary && !this.readOnly;
  }

  append(e: Wal): void {
    this.wal.push(e);
    if (e.id > 0) this.ids.add(e.id);
  }

  replaceWal(wal: Wal[]): void {
    this.wal = wal;
    // A cloned or rewound data directory is replayed to its end before the server is consistent.
    this.replayed = wal.length;
    this.flushedLastRound = wal.length;
    this.ids = new Set(wal.filter((e) => e.id > 0).map((e) => e.id));
    this.version++;
  }

  /** A client write: ack when committed (and, under synchronous commit, flushed by the standby). */
  write(id: number): Promise<void> {
    if (!this.writable) return Promise.reject(new Error('not writable'));
    this.append({ id, tl: this.timeline });
    const pos = this.wal.length;
    if (!this.syncNames) return Promise.resolve();
    return new Promise((ack, fail) => {
      this.waiters.push({ pos, ack, fail: () => fail(new Error('server stopped')) });
      this.releaseWaiters();
    });
  }

  releaseWaiters(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    for (const w of this.waiters) {
      if (!this.syncNames || (this.peerStreaming && this.peerFlush >= w.pos)) w.ack();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  /** The server stops: every waiting commit fails (never acknowledged). */
  halt(why: string): void {
    // A server still starting dies too (power loss, a fence, BindsTo= when its agent dies).
    this.startEpoch++;
    this.starting = false;
    if (!this.running) return;
    this.running = false;
    this.peerStreaming = false;
    this.receiverStreaming = false;
    for (const w of this.waiters) w.fail();
    this.waiters = [];
    this.world.log(`${this.node} pg: stopped (${why})`);
  }

  status(): PgStatus {
    if (!this.running) return { up: false, error: 'connection refused' };
    const s: PgStatus = { up: true, inRecovery: this.standbySignal, lsn: BigInt(this.replayLsn), timeline: this.timeline, synchronousStandbyNames: this.syncNames, readOnly: this.readOnly };
    if (this.standbySignal) s.receiverStreaming = this.receiverStreaming;
    else {
      s.syncWaiters = this.waiters.length;
      if (this.peerStreaming) {
        s.standby = { state: 'streaming', syncState: this.syncNames ? 'sync' : 'async', flushLsn: BigInt(this.peerFlush), replayLsn: BigInt(this.peerReplay) };
      }
    }
    return s;
  }

  startServer(): void {
    if (this.running || this.starting || !this.hasData) return;
    this.starting = true;
    const epoch = this.startEpoch;
    this.world.at(this.world.now + this.world.rng.between(200, 1500), () => {
      if (epoch !== this.startEpoch) return;
      this.starting = false;
      if (this.running || !this.hasData) return;
      this.running = true;
      this.world.log(`${this.node} pg: started as ${this.standbySignal ? 'standby' : `primary (tl ${this.timeline}${this.readOnly ? ', read-only' : ''})`}`);
    });
  }
}

/** Records per simulated WAL segment: the stretch a rejoin compares ends in one. */
export const SIM_SEGMENT = 8;

/** The adapter's sameWal on this model: the leader's records in the stretch are ours (a leader that has not written that far holds other bytes there). */
export function sameStretch(local: Wal[], leader: Wal[], s: WalStretch): boolean | undefined {
  const [from, to] = [Number(s.from), Number(s.to)];
  if (local.length < to) return undefined;
  if (leader.length < to) return false;
  for (let i = from; i < to; i++) if (local[i]!.id !== leader[i]!.id || local[i]!.tl !== leader[i]!.tl) return false;
  return true;
}

/**
 * Where pg_rewind takes the two WALs to part, from their timeline histories alone, as it does
 * (findCommonAncestorTimeline): the last timeline both list with the same start, up to the
 * earlier of its two ends. Undefined on the same current timeline ("no rewind required") and
 * when they share no timeline (pg_rewind fails).
 */
export function rewindPoint(local: Wal[], leader: Wal[]): number | 'same' | undefined {
  const spans = (w: Wal[]): { tl: number; begin: number; end: number }[] => {
    const out = [{ tl: w[0]?.tl ?? 1, begin: 0, end: Infinity }];
    w.forEach((e, i) => {
      if (e.id < 0) {
        out.at(-1)!.end = i;
        out.push({ tl: e.tl, begin: i, end: Infinity });
      }
    });
    return out;
  };
  const [a, b] = [spans(local), spans(leader)];
  if (a.at(-1)!.tl === b.at(-1)!.tl) return 'same';
  let i = 0;
  while (i < a.length && i < b.length && a[i]!.tl === b[i]!.tl && a[i]!.begin === b[i]!.begin) i++;
  if (i === 0) return undefined;
  return Math.min(a[i - 1]!.end, b[i - 1]!.end);
}

/** The length of the history two WALs share. */
export function commonPrefix(a: Wal[], b: Wal[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i]!.id === b[i]!.id && a[i]!.tl === b[i]!.tl) i++;
  return i;
}

/** A standby's history is a prefix of the primary's (checked at its last record). */
export function isPrefix(s: Wal[], p: Wal[]): boolean {
  if (s.length > p.length) return false;
  if (s.length === 0) return true;
  const a = s[s.length - 1]!;
  const b = p[s.length - 1]!;
  return a.id === b.id && a.tl === b.tl;
}

let timelineMarker = -1;

/** The PgPort of a simulated node: every call takes simulated time and is answered inside the agent's process. */
export function simPgPort(world: World, agent: SimProcess, self: SimPostgres, peer: () => SimPostgres, reachable: () => boolean, opts: { rewindFails: () => boolean }): PgPort {
  const op = <T>(lo: number, hi: number, fn: () => T): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      world.inProcess(agent, world.rng.between(lo, hi), () => {
        try {
          resolve(fn());
        } catch (err) {
          reject(err);
        }
      });
    });
  const waitFor = (cond: () => boolean, limitMs: number, what: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const start = world.now;
      const poll = (): void => {
        try {
          if (cond()) return resolve();
        } catch (err) {
          return reject(err);
        }
        if (world.now - start > limitMs) return reject(new Error(`${what}: timed out`));
        world.inProcess(agent, 50, poll);
      };
      poll();
    });
  /** Start the server and wait until it accepts connections; as the production port, a server stopped while starting (a crash, a fence) ends the wait. */
  const startAndWait = async (): Promise<void> => {
    self.startServer();
    await waitFor(() => {
      if (!self.running && !self.starting) throw new Error('PostgreSQL stopped while we waited for it to accept connections');
      return self.running;
    }, 60_000, 'start');
  };
  const needPrimary = (): void => {
    if (!self.primary) throw new Error('not a running primary');
  };
  return {
    status: () => op(1, 15, () => self.status()),
    disk: () => op(1, 5, (): PgDiskFacts => ({ hasData: self.hasData, standbySignal: self.standbySignal })),
    start: async () => {
      if (!self.hasData) throw new Error('no data directory');
      await startAndWait();
    },
    stop: () => op(50, 400, () => self.halt('clean shutdown')),
    fence: () => op(5, 60, () => self.halt('fenced: immediate shutdown')),
    promote: async () => {
      await op(1, 5, () => {
        if (!self.running || !self.standbySignal) throw new Error('recovery is not in progress');
      });
      await op(100, 1500, () => {
        if (!self.running || !self.standbySignal) throw new Error('server stopped during promotion');
        // pg_promote() ends recovery only after replaying all that was flushed; the adapter's
        // call gives up after 30 s. (A real server would still promote once replay resumed; the
        // model does not, so a late promotion is not explored.)
        if (self.replayStalled) throw new Error('pg_promote did not complete within 30 s');
        self.replayed = self.wal.length;
        self.standbySignal = false;
        self.receiverStreaming = false;
        self.timeline++;
        self.append({ id: timelineMarker--, tl: self.timeline });
        self.syncNames = '';
        world.log(`${self.node} pg: promoted to timeline ${self.timeline} at lsn ${self.wal.length}`);
      });
    },
    setSyncStandby: (names) =>
      op(2, 20, () => {
        needPrimary();
        self.syncNames = names;
        world.log(`${self.node} pg: synchronous_standby_names='${names}'`);
        self.releaseWaiters();
      }),
    setReadOnly: (on) =>
      op(2, 20, () => {
        if (!self.hasData) throw new Error('no data');
        self.readOnly = on;
      }),
    checkpoint: () =>
      op(5, 300, () => {
        needPrimary();
      }),
    initPrimary: async (names) => {
      await op(1000, 3000, () => {
        self.replaceWal([]);
        self.hasData = true;
        self.standbySignal = false;
        self.timeline = 1;
        self.syncNames = names;
        // The real bootstrap makes it once the server runs (bootstrapPrimaryObjects); here with
        // the data, so that a seed's random draws stay as they were.
        self.peerSlot = true;
      });
      await startAndWait();
    },
    configureStandby: () =>
      op(2, 10, () => {
        if (self.primary) {
          self.onViolation(`${self.node}: standby.signal written into a live primary`);
          throw new Error('refusing to configure a running primary as standby');
        }
        self.enterRecovery();
      }),
    rejoin: async (): Promise<RejoinMethod> => {
      await op(50, 400, () => self.halt('stopped for rejoin'));
      return op(300, 3000, () => {
        const p = peer();
        if (!reachable() || !p.primary) throw new Error('the peer is not a reachable primary');
        // The adapter's decision, on what this model's WAL says: record i starts at LSN i.
        const local = self.localWal();
        const plan = rejoinPath(local, p.leaderTimeline(), self.followedTimeline);
        const path = settleRejoin(plan, plan.check ? sameStretch(self.wal, p.wal, plan.check) : undefined);
        // What a clone and pg_rewind leave: this WAL, on the leader's timeline, as its standby.
        const standbyOn = (wal: Wal[]): void => {
          self.replaceWal(wal);
          self.timeline = p.timeline;
          self.enterRecovery();
        };
        const reclone = (why: string): RejoinMethod => {
          standbyOn(p.wal.slice());
          self.peerSlot = false;
          world.log(`${self.node} pg: ${why}; re-cloned (${p.wal.length} records)`);
          return 'pg_basebackup';
        };
        if (path.action === 'clone') return reclone(path.reason);
        if (path.action === 'follow') {
          self.followedTimeline = p.timeline;
          self.enterRecovery();
          // PostgreSQL would refuse to follow (replicate() checks the same): the decision was wrong.
          const prefix = isPrefix(self.wal, p.wal);
          world.log(`${self.node} pg: following as it is (${path.reason})${prefix ? '' : ': NOT a prefix of the leader\'s WAL'}`);
          if (!prefix) {
            self.followRefused++;
            self.onViolation(`${self.node}: rejoined by following ${p.node}, whose WAL ours is not a prefix of (${path.reason})`);
          }
          return 'follow';
        }
        if (opts.rewindFails()) return reclone('pg_rewind failed');
        // pg_rewind goes by the timeline histories, not by the WAL: it keeps ours up to where
        // they say the two parted, and trusts that stretch to be the leader's.
        const point = rewindPoint(self.wal, p.wal);
        if (point === undefined) return reclone('pg_rewind found no common timeline');
        const keep = point === 'same' ? self.wal.length : Math.min(point, self.wal.length);
        const shared = commonPrefix(self.wal, p.wal);
        if (shared < keep) {
          self.followRefused++;
          self.onViolation(`${self.node}: pg_rewind onto ${p.node} kept ${keep} records as the leader's, but only ${shared} are (${path.reason})`);
        }
        const dropped = self.wal.length - keep;
        standbyOn(self.wal.slice(0, keep));
        world.log(`${self.node} pg: pg_rewind kept ${keep} records, dropped ${dropped}${point === 'same' ? ' (same timeline: no rewind required)' : ''}`);
        return 'pg_rewind';
      });
    },
    clone: () =>
      op(1000, 3000, () => {
        const p = peer();
        if (!reachable() || !p.primary) throw new Error('the peer is not a reachable primary');
        if (!p.peerSlot) throw new Error(`pg_basebackup: replication slot of ${self.node} does not exist on ${p.node}`);
        self.replaceWal(p.wal.slice());
        self.peerSlot = false;
        self.hasData = true;
        self.timeline = p.timeline;
        self.standbySignal = true;
        self.syncNames = '';
        world.log(`${self.node} pg: cloned ${p.wal.length} records`);
      }),
    ensurePeerSlot: () =>
      op(1, 5, () => {
        if (!self.running) throw new Error('connection refused');
        self.peerSlot = true;
      }),
  };
}

/** Streaming replication, one round: every standby pulls from its peer when the links allow. */
export function replicate(world: World, a: SimPostgres, b: SimPostgres): void {
  for (const [s, p] of [[a, b], [b, a]] as const) {
    if (!s.running || !s.standbySignal) {
      p.peerStreaming = false;
      continue;
    }
    // Replay reaches what was flushed by the previous round, whether or not the receiver streams now.
    if (!s.replayStalled) s.replayed = Math.max(s.replayed, s.flushedLastRound);
    s.flushedLastRound = s.wal.length;
    const linked = world.linkUp(s.node, p.node) && world.linkUp(p.node, s.node);
    if (!p.primary || !linked || !p.peerSlot || !isPrefix(s.wal, p.wal)) {
      s.receiverStreaming = false;
      if (p.running) p.peerStreaming = false;
      continue;
    }
    s.receiverStreaming = true;
    p.peerStreaming = true;
    if (s.receiverStalled) continue;
    if (s.wal.length < p.wal.length) {
      for (let i = s.wal.length; i < p.wal.length; i++) s.append(p.wal[i]!);
      s.timeline = p.timeline;
    }
    p.peerFlush = s.wal.length;
    p.peerReplay = s.replayLsn;
    p.releaseWaiters();
  }
}
