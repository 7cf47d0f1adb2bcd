import type { HostMeta, Role } from '#common/schema/hostmeta.ts';
import type { ArbiterAnswer, ArbiterRequest } from '../witness/arbiter.ts';
import { formatLsn } from './lsn.ts';
import { leaveTimeoutMs, type ControllerSettings, type LeaveRequest, type PgStatus, type Ports, type PromoteRequest, type RejoinMethod, type TimerHandle } from './ports.ts';
import { decide, remember, type Action, type Memory, type Observation } from './rules.ts';

/** Guard period: fencing deadline checks and supervisor heartbeats, independent of the loop. */
export const GUARD_MS = 100;

/** The supervisor's watchdog period: half of fenceAfter (the agent sets WATCHDOG_USEC to it). */
export function watchdogMs(fenceAfter: number): number {
  return fenceAfter / 2;
}

/**
 * A planned switchover may stop the old primary: the standby has flushed its last LSN (nothing
 * acknowledged can be lost), and its replay has reached it or moved since the previous look
 * (`replayBefore`). The peer waits for its own replay (promote's lsn) while the old server stops,
 * instead of inside the write pause before the stop. A replay that stands still (a conflict with
 * a query on the standby holds it up to max_standby_streaming_delay) is waited for, so that the
 * switchover's timeout resumes writes without a stop and a start.
 */
export function switchoverCaughtUp(st: PgStatus, replayBefore: bigint | null | undefined): boolean {
  const sb = st.standby;
  if (!st.up || st.lsn === undefined || sb?.flushLsn == null || sb.flushLsn < st.lsn || sb.replayLsn == null) return false;
  return sb.replayLsn >= st.lsn || (replayBefore != null && sb.replayLsn > replayBefore);
}

/**
 * How soon a standby asked to take over asks the witness again while the lease is still the
 * requesting leader's: its release travels beside the request (a planned switchover).
 */
export const RELEASE_RETRY_MS = 20;

/** A leader stops signalling life this long before its watchdog period would outlast its lease. */
export const WATCHDOG_SLACK_MS = 500;
/** How often the guard pings the supervisor (through NotifyPipe's helper, or a systemd-notify process each). */
export const PING_EVERY_MS = 500;
/**
 * The lease keeper's period: two renewals per check interval, so that a leader loses its lease
 * (fenceAfter) only after several renewals in a row went unanswered, with fenceAfter short
 * enough for a failover within about 5 s.
 */
export function renewIntervalMs(checkInterval: number): number {
  return checkInterval / 2;
}
/** Leader: extra renewals after one went unanswered, before the next interval's. */
export const RENEW_RETRIES = 2;
/** Leader: the least time between the sending of two renewals. */
export const RENEW_RETRY_MS = 200;
/** Follower: how long after the witness's stated expiry it asks again for the lease. */
export const TAKEOVER_MARGIN_MS = 20;

/** What /v1/status and /metrics show of the controller. */
export interface ControllerSnapshot {
  observation?: Observation;
  decision?: string;
  transitions: number;
  lastRoundOkAt?: number;
  lastRejoin?: { method: RejoinMethod; at: number };
  switching: boolean;
}

type SwitchResult = { ok: boolean; reason: string; tookMs: number };

/** The outcome of an operator's forced failover onto this node. */
export interface ForceResult {
  ok: boolean;
  reason: string;
  /** The witness revoked the old lease and named us although the old leader had not. */
  forced: boolean;
  generation?: number;
}

/**
 * The node agent's control: reconcile at start, then three independent timers:
 * - the loop (observe → decide → act every checkInterval), which may block on long operations;
 * - the lease keeper (leader: renew at the witness every checkInterval);
 * - the guard (every GUARD_MS: fence once our own deadline passes, ping the supervisor).
 * No long operation delays the keeper or the guard.
 */
export class Controller {
  meta!: HostMeta;
  readonly snapshot: ControllerSnapshot = { transitions: 0, switching: false };
  private memory!: Memory;
  /** Local monotonic deadline of our lease (leader, lease mode): writable strictly before it. */
  private leaseDeadline = 0;
  /** The witness's tag of the grant or renewal we last heard of: a switchover's release names it. */
  private leaseTag: number | undefined;
  /** When the guard last pinged the supervisor (-Infinity: never). */
  private lastPingAt = -Infinity;
  /** Bumped whenever the lease is given up or lost: renewals sent before it are ignored. */
  private leaseEpoch = 0;
  private promotable: string | null | undefined;
  private fencing?: Promise<void>;
  private busy = false;
  private switching = false;
  private stopped = false;
  private timers: TimerHandle[] = [];
  private renewing = false;
  private metaDirty = false;
  /** The last hostmeta write asked for (persist chains writes so that two never overlap). */
  private persisting: Promise<void> = Promise.resolve();
  /** Until reconcile has decided, hostmeta's role is a memory, not a fact the guard may act on. */
  private reconciled = false;
  /** Called on every role change (and a restore), for the status page's recent transitions. */
  onTransition?: (t: { at: string; from: string; to: string; reason: string; generation: number }) => void;
  /** Called after every completed round (the shell keeps its status page and health gate fed). */
  onRound?: (o: Observation) => void;

  constructor(private readonly p: Ports, readonly s: ControllerSettings) {}

  get role(): Role {
    return this.meta?.role ?? 'init';
  }

  get generation(): number {
    return this.meta?.generation ?? 0;
  }

  /** Lease mode: the cluster has a witness. Without one, failover is manual. */
  get arbiter(): boolean {
    return this.p.witness !== undefined;
  }

  leaseValid(): boolean {
    return this.p.clock.now() < this.leaseDeadline;
  }

  /** A leader may make itself writable only now: under a valid lease, or in manual mode. */
  mayWrite(): boolean {
    return this.meta.role === 'leader' && (!this.arbiter || this.leaseValid());
  }

  leaseInfo(): { held: boolean; msLeft: number; promotable: string | null | undefined } {
    const left = this.leaseDeadline - this.p.clock.now();
    return { held: left > 0, msLeft: Math.max(0, Math.round(left)), promotable: this.promotable };
  }

  // ---------------------------------------------------------------- state

  private async setRole(to: Role, reason: string, generation = this.meta.generation, timeline = this.meta.timeline, from: Role = this.meta.role): Promise<void> {
    if (generation < this.meta.generation) generation = this.meta.generation;
    this.meta = { ...this.meta, role: to, generation, timeline, lastTransition: { at: new Date().toISOString(), from, to, reason } };
    this.snapshot.transitions++;
    this.onTransition?.({ ...this.meta.lastTransition!, generation });
    this.p.log.info({ event: 'transition', from, to, generation, timeline }, `role ${from} -> ${to}: ${reason}`);
    await this.persist();
  }

  /**
   * Write hostmeta; on failure (disk full) keep going and retry every round. Writes run one after
   * another, each with the meta as it was when asked for, so a caller may leave one running
   * while it goes on (a switchover's old leader with a witness, whose record is the truth after
   * a crash) and the guard's fence may write meanwhile.
   */
  private persist(): Promise<void> {
    const meta = this.meta;
    const write = async (): Promise<void> => {
      try {
        await this.p.state.write(meta);
        this.metaDirty = false;
      } catch (err) {
        this.metaDirty = true;
        this.p.log.error({ event: 'state-write', err: (err as Error).message }, 'could not write hostmeta; will retry');
      }
    };
    // Onward whatever the write before did: one failure must not stop the writes after it.
    this.persisting = this.persisting.then(write, write);
    return this.persisting;
  }

  private async witness(req: ArbiterRequest): Promise<ArbiterAnswer | undefined> {
    try {
      return await this.p.witness!.call(req);
    } catch (err) {
      this.p.log.debug({ event: 'witness', op: req.op, err: (err as Error).message }, 'witness unreachable');
      return undefined;
    }
  }

  /** Start holding a lease the witness just granted, counted from when we sent the request. */
  private holdLease(sentAt: number, a: ArbiterAnswer): void {
    this.leaseDeadline = Math.max(this.leaseDeadline, sentAt + this.s.fenceAfter);
    this.leaseTag = a.lease;
    this.promotable = a.promotable;
  }

  private dropLease(): void {
    this.leaseDeadline = 0;
    this.leaseEpoch++;
  }

  private async acquire(generation: number, bootstrap = false): Promise<{ sentAt: number; answer?: ArbiterAnswer }> {
    const sentAt = this.p.clock.now();
    const answer = await this.witness({ op: 'acquire', node: this.s.self, generation, ttlMs: this.s.promoteAfter, bootstrap });
    if (answer && !answer.ok && answer.code === 'stale' && answer.holder === this.s.self && answer.generation > generation) {
      // The witness handed us a newer generation and we crashed (or could not write) before recording it.
      this.p.log.warn({ event: 'lease', generation: answer.generation }, `the witness says we hold generation ${answer.generation}, we had recorded ${generation}`);
      return this.acquire(answer.generation);
    }
    return { sentAt, answer };
  }

  // ---------------------------------------------------------------- start

  /** Reconcile what hostmeta says with what PostgreSQL and the witness say, then start the timers. */
  async start(): Promise<void> {
    const now = this.p.clock.now();
    this.memory = { peerSeenAt: now, leaderSeenAt: now, flushAdvancedAt: now, syncRounds: 0, pgRestarts: 0 };
    const existing = await this.p.state.read();
    this.meta = existing ?? {
      cluster: this.s.cluster, node: this.s.self, role: 'init', peer: this.s.peer, generation: 0,
      lastTransition: { at: new Date().toISOString(), from: 'init', to: 'init', reason: 'first start' },
    };
    if (!existing) await this.persist();
    if (this.arbiter && this.meta.role === 'leader') {
      // The lease died with the previous process. Claiming "leader" until the witness confirms it
      // would keep the follower from ever asking for the lease: a restart while the witness is
      // out of reach (found by the harness's watchdog: one-way cut leader -> witness) would
      // then stall the pair for as long as the cut lasts.
      await this.setRole('fenced', 'restarted: the lease died with the previous process; leader again once the witness confirms it');
    }
    this.timers.push(this.every(GUARD_MS, () => this.guard()));
    if (this.arbiter) this.timers.push(this.every(renewIntervalMs(this.s.checkInterval), () => void this.renew()));
    await this.reconcile();
    this.reconciled = true;
    this.timers.push(this.every(this.s.checkInterval, () => void this.tick()));
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) t.cancel();
  }

  /**
   * Start PostgreSQL; whether it started. A failure is logged, not thrown: it is the loop's to
   * handle (restarts, then a handover), not a failed agent or switchover.
   */
  private startOrWarn(event: string, message: string): Promise<boolean> {
    return this.p.pg.start().then(
      () => true,
      (err: Error) => {
        this.p.log.warn({ event, err: err.message }, message);
        return false;
      },
    );
  }

  private every(ms: number, fn: () => void): TimerHandle {
    let handle: TimerHandle;
    const loop = (): void => {
      if (this.stopped) return;
      fn();
      handle = this.p.clock.setTimer(ms, loop);
    };
    handle = this.p.clock.setTimer(ms, loop);
    return { cancel: () => handle.cancel() };
  }

  private async reconcile(): Promise<void> {
    let disk = await this.p.pg.disk();
    if (!disk.hasData) return this.bootstrap();
    const pg = await this.p.pg.status();
    if (!this.arbiter) return this.reconcileManual(disk.standbySignal, pg.up && !pg.inRecovery);
    // Lease mode: the witness's record is the truth about who may be primary. A primary left
    // running by a previous agent runs without a lease we know of (its deadline died with that
    // process): stop it before anything else. Under systemd it is already stopped (BindsTo).
    if (pg.up && !pg.inRecovery) await this.fenceNow('restarted with a running primary: stopped until the witness confirms our lease');
    let record: ArbiterAnswer | undefined;
    for (;;) {
      record = await this.witness({ op: 'read' });
      if (record || this.stopped) break;
      await this.p.clock.sleep(this.s.checkInterval);
    }
    if (!record) return;
    if (record.holder === this.s.self) {
      const { sentAt, answer } = await this.acquire(record.generation);
      if (answer?.ok) {
        this.holdLease(sentAt, answer);
        disk = await this.p.pg.disk();
        // The witness issued this generation to us: we are (or were becoming) the leader.
        await this.setRole('leader', record.generation > this.meta.generation ? `the witness handed us generation ${record.generation}: finishing the promotion` : 'restarted as the lease holder', record.generation);
        if (disk.standbySignal) return this.finishPromotion('restart');
        const started = await this.startOrWarn('start', 'PostgreSQL did not start; the loop retries');
        // A primary's directory may be one whose promotion completed after the last agent died,
        // before it did what follows: without the peer's slot the old leader cannot stream, and
        // rewound every 30 s (failover suite, "peer dies mid-switchover", 2026-12-06).
        if (started) await this.afterPromotion('restart', false);
        return;
      }
    }
    if (disk.standbySignal) {
      await this.p.pg.start().catch((err) => this.p.log.warn({ err: (err as Error).message }, 'could not start the standby'));
      await this.setRole('follower', 'data directory is a standby', Math.max(this.meta.generation, record.holder === this.s.peer ? record.generation : 0));
      return;
    }
    if (this.meta.role !== 'fenced') await this.setRole('fenced', `restarted with a primary data directory without the lease (holder ${record.holder ?? 'nobody'}, generation ${record.generation})`);
  }

  private async reconcileManual(standby: boolean, runningPrimary: boolean): Promise<void> {
    if (standby) {
      await this.p.pg.start().catch(() => undefined);
      if (this.meta.role !== 'follower') await this.setRole('follower', 'data directory is a standby');
      return;
    }
    if (this.meta.role === 'leader') {
      // Without a witness nobody is promoted automatically: our data is the primary's.
      if (!runningPrimary) await this.p.pg.start();
      return;
    }
    if (runningPrimary) await this.fenceNow(`restarted as ${this.meta.role} with a running primary`);
    if (this.meta.role !== 'fenced') await this.setRole('fenced', `restarted in role ${this.meta.role} with a primary data directory: waiting for the peer`);
  }

  private async bootstrap(): Promise<void> {
    const syncNames = this.s.syncPolicy === 'strict' ? quoteName(this.s.peer) : '';
    while (!this.stopped) {
      if (this.s.isBootstrapLeader) {
        const peer = await this.p.peer.status();
        if (peer?.role !== 'leader') {
          let generation = 1;
          if (this.arbiter) {
            const { sentAt, answer } = await this.acquire(this.meta.generation, true);
            if (answer?.ok) {
              this.holdLease(sentAt, answer);
              generation = answer.generation;
            } else if (answer && answer.holder !== this.s.self) {
              this.p.log.warn({ event: 'bootstrap', holder: answer.holder }, `the witness says ${answer.holder} leads: cloning instead of initdb`);
            } else {
              await this.p.clock.sleep(this.s.checkInterval);
              continue;
            }
          }
          if (!this.arbiter || this.leaseValid()) {
            const from = this.meta.role;
            // In memory first, so the lease keeper renews while initdb runs.
            this.meta = { ...this.meta, role: 'leader', generation };
            this.p.log.info({ event: 'bootstrap' }, 'bootstrap leader: initdb');
            await this.p.pg.initPrimary(syncNames);
            const st = await this.p.pg.status();
            await this.setRole('leader', 'bootstrap leader initialized the database', generation, st.timeline, from);
            if (this.mayWrite()) await this.p.vip.take();
            return;
          }
        }
      }
      const peer = await this.p.peer.status();
      const peerPg = await this.p.peer.pg();
      if (peer?.role === 'leader' && peerPg.ok && peerPg.primary) {
        this.p.log.info({ event: 'bootstrap' }, `cloning ${this.s.peer}`);
        try {
          await this.p.pg.clone();
        } catch (err) {
          // The leader reports its role while it still creates its roles: the first try may be early.
          // The first line names the command; the last is the tool's own last word (its stderr).
          const lines = (err as Error).message.split('\n');
          this.p.log.warn({ event: 'bootstrap', err: lines.length > 1 ? `${lines[0]} (${lines.at(-1)})` : lines[0] }, 'clone failed; retrying');
          await this.p.clock.sleep(this.s.checkInterval);
          continue;
        }
        await this.p.pg.start();
        await this.setRole('follower', `cloned from ${this.s.peer}`, peer.generation);
        return;
      }
      await this.p.clock.sleep(this.s.checkInterval);
    }
  }

  // ---------------------------------------------------------------- timers

  /** The guard: fence by our own deadline, whatever the loop is doing; and tell the supervisor we live. */
  private guard(): void {
    // A leader signals life only while its lease outlasts the watchdog period: a frozen leader is
    // then killed (and its PostgreSQL stopped with it) by about its own deadline, whatever froze it.
    // Before reconcile no lease is held and a primary left running is stopped first: ping, or a
    // restart while the witness is unreachable would be killed over and over.
    const now = this.p.clock.now();
    const leading = this.leadingWithLease();
    const beforeSilence = this.beforeSilence(now);
    if (!leading || beforeSilence > 0) {
      // Every PING_EVERY_MS, and once more within the last two guard periods before a leader
      // falls silent: the silence until the fence lets it ping again is then about
      // WATCHDOG_SLACK_MS shorter than the period. With pings only every 500 ms, a leader that
      // fenced itself on time (a lossy link to the witness) was killed by the watchdog too,
      // seen once in four fences in bench:false-failover.
      const lastChance = leading && beforeSilence <= 2 * GUARD_MS;
      if (now - this.lastPingAt >= PING_EVERY_MS || (lastChance && now - this.lastPingAt >= GUARD_MS)) {
        this.lastPingAt = now;
        this.p.heartbeat();
      }
    }
    if (leading && !this.leaseValid()) {
      void this.fence('our lease deadline passed without a granted renewal');
    }
  }

  private leadingWithLease(): boolean {
    return this.reconciled && this.arbiter && this.meta?.role === 'leader';
  }

  /** How long a leader may still signal life: until its lease outlasts the watchdog period by less than the slack. */
  private beforeSilence(now: number): number {
    return this.leaseDeadline - now - (watchdogMs(this.s.fenceAfter) - WATCHDOG_SLACK_MS);
  }

  /**
   * Whether this agent may tell systemd it lives now: the guard's rule for its pings, for the
   * EXTEND_TIMEOUT_USEC a stopping agent sends instead (systemd runs no watchdog during a stop).
   */
  maySignalLife(): boolean {
    return !this.leadingWithLease() || this.beforeSilence(this.p.clock.now()) > 0;
  }

  /** The lease keeper: a leader renews every interval, independent of the loop. */
  private async renew(): Promise<void> {
    if (this.renewing || this.meta?.role !== 'leader') return;
    this.renewing = true;
    const epoch = this.leaseEpoch;
    const generation = this.meta.generation;
    try {
      for (let attempt = 0; ; attempt++) {
        const { sentAt, answer } = await this.acquire(generation);
        if (epoch !== this.leaseEpoch || this.meta.role !== 'leader' || this.meta.generation !== generation) {
          // No lease for us any more (a switchover dropped it while this renewal was in flight),
          // but the witness's lease is now the one this answer names: the release the switchover
          // sends next must name it, or the witness refuses it as stale and the peer waits out
          // the lease (a clean stop's handover took 4.2 s in the failover suite, 2026-12-06).
          if (answer?.ok && answer.generation === generation) this.leaseTag = answer.lease;
          return;
        }
        if (answer) {
          if (answer.ok) this.holdLease(sentAt, answer);
          else if (answer.code !== 'invalid') void this.fence(`the witness refused our renewal: ${answer.reason}`);
          return;
        }
        // Unanswered (a lost packet, a timeout): ask again now rather than at the next interval, so
        // that one loss costs one timeout, not a whole interval of the deadline. Spaced by
        // RENEW_RETRY_MS so a witness that refuses connections at once is not flooded.
        if (attempt >= RENEW_RETRIES || this.stopped || !this.leaseValid()) return;
        const wait = sentAt + RENEW_RETRY_MS - this.p.clock.now();
        if (wait > 0) await this.p.clock.sleep(wait);
        if (this.stopped || !this.leaseValid()) return;
      }
    } finally {
      this.renewing = false;
    }
  }

  /** Stop being writable now: role first (so no path makes us writable again), then PostgreSQL, then the VIP. */
  fence(reason: string): Promise<void> {
    if (this.fencing) return this.fencing;
    this.fencing = (async () => {
      this.dropLease();
      const from = this.meta.role;
      if (from === 'leader') {
        this.meta = { ...this.meta, role: 'fenced' };
        this.p.log.warn({ event: 'fence', reason }, `fencing: ${reason}`);
      }
      await this.fenceNow(reason);
      await this.setRole('fenced', reason, this.meta.generation, this.meta.timeline, from);
    })().finally(() => {
      this.fencing = undefined;
    });
    return this.fencing;
  }

  /** PostgreSQL stopped (retrying until it is), VIP dropped. */
  private async fenceNow(reason: string): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        await this.p.pg.fence();
        break;
      } catch (err) {
        this.p.log.error({ event: 'fence', err: (err as Error).message, attempt: i + 1 }, `could not stop PostgreSQL (${reason}); retrying`);
        if (this.stopped) return;
        await this.p.clock.sleep(200);
      }
    }
    await this.p.vip.drop().catch((err) => this.p.log.error({ event: 'fence', err: (err as Error).message }, 'could not drop the VIP'));
  }

  // ---------------------------------------------------------------- loop

  async tick(): Promise<void> {
    if (this.busy || this.switching || this.stopped || this.fencing) return;
    this.busy = true;
    try {
      if (this.metaDirty) await this.persist();
      const roleBefore = this.meta.role;
      const o = await this.observe();
      this.memory = remember(this.memory, o, this.meta.role);
      this.snapshot.observation = o;
      // A leader holding its lease is never left read-only outside a switchover.
      if (this.meta.role === 'leader' && o.pg.up && !o.pg.inRecovery && o.pg.readOnly && this.mayWrite()) await this.p.pg.setReadOnly(false);
      const d = decide(this.meta.role, this.memory, o, { arbiter: this.arbiter, valid: this.leaseValid(), promotable: this.promotable }, this.s);
      if (d.reason !== this.snapshot.decision) this.p.log.debug({ event: 'decision', role: this.meta.role, reason: d.reason }, d.reason);
      this.snapshot.decision = d.reason;
      for (const a of d.actions) {
        if (this.fencing || this.switching) break;
        await this.act(a, o);
      }
      this.snapshot.lastRoundOkAt = this.p.clock.now();
      // What /v1/status shows: after a change of role (a promotion) this round's observation
      // predates it, and would show a leader over a read-only standby until the next round.
      this.onRound?.(this.meta.role !== roleBefore ? await this.observe().catch(() => o) : o);
    } catch (err) {
      this.p.log.error({ event: 'round', err: (err as Error).message }, 'round failed');
    } finally {
      this.busy = false;
    }
  }

  private async observe(): Promise<Observation> {
    const [pg, peer, peerPg, vipHeld] = await Promise.all([
      this.p.pg.status(),
      this.p.peer.status(),
      this.p.peer.pg().catch(() => ({ ok: false })),
      this.p.vip.held().catch(() => false),
    ]);
    return { now: this.p.clock.now(), pg, peer, peerPg, vipHeld };
  }

  private async act(a: Action, o: Observation): Promise<void> {
    const { pg, vip, log } = this.p;
    log.debug({ event: 'action', action: a.kind, role: this.meta.role }, a.kind);
    switch (a.kind) {
      case 'startPg':
        this.memory.pgRestarts++;
        if (this.mayWrite()) await pg.start();
        return;
      case 'startStandby': {
        const disk = await pg.disk();
        if (!disk.standbySignal) {
          // A follower whose data is not a standby: never start it as a primary.
          await this.setRole('fenced', 'follower with a primary data directory');
          return;
        }
        await pg.start();
        return;
      }
      case 'handOver':
        await this.fence(`PostgreSQL failed to start ${this.memory.pgRestarts} times; handing over to the peer`);
        if (this.arbiter) await this.witness({ op: 'release', node: this.s.self, generation: this.meta.generation });
        return;
      case 'fence':
        await this.fenceNow('fenced node with a running server');
        return;
      case 'takeVip':
        if (this.mayWrite()) await vip.take();
        return;
      case 'dropVip':
        await vip.drop();
        return;
      case 'degrade': {
        // Patroni's /sync rule: nobody may be promoted BEFORE commits stop waiting for the standby.
        const f = await this.forbidPromotion();
        if (!f.ok) {
          log.warn({ event: 'degrade', answer: f.reason }, 'cannot degrade: the witness did not record that nobody may be promoted; commits keep waiting');
          return;
        }
        if (!this.mayWrite()) return;
        await pg.setSyncStandby('');
        log.warn({ event: 'degrade', reason: a.why }, `synchronous replication off: ${a.why}`);
        return;
      }
      case 'restoreSync':
        await pg.ensurePeerSlot().catch(() => undefined);
        await pg.setSyncStandby(quoteName(this.s.peer));
        this.memory.syncRounds = 0;
        this.memory.syncBaseline = undefined;
        log.info({ event: 'restoreSync' }, 'standby caught up: synchronous replication on');
        return;
      case 'setPromotable': {
        const r = await this.witness({ op: 'promotable', node: this.s.self, generation: this.meta.generation, promotable: a.to });
        if (r?.ok) {
          this.promotable = r.promotable;
          log.info({ event: 'promotable', promotable: a.to, generation: this.meta.generation }, a.to ? `${a.to} is synchronous: recorded as promotable` : 'recorded that nobody may be promoted');
        }
        return;
      }
      case 'takeOver':
        return this.takeOver();
      case 'reacquire':
        return this.reacquire(o);
      case 'rejoin':
        return this.rejoin('the peer leads on a newer timeline');
      case 'unfence':
        if (this.arbiter) return;
        await pg.start();
        await this.setRole('leader', 'the peer is our standby (manual failover mode)');
        if (this.mayWrite()) await vip.take();
        return;
      case 'adoptPrimary':
        return this.adoptPrimary();
    }
  }

  /** Our server is a primary, or a leader's server still a standby: only the lease holder keeps it. */
  private async adoptPrimary(): Promise<void> {
    if (!this.arbiter) {
      if (this.meta.role === 'follower') await this.fenceNow('follower whose server is a primary');
      return;
    }
    const rec = await this.witness({ op: 'read' });
    if (rec?.holder === this.s.self) {
      const { sentAt, answer } = await this.acquire(rec.generation);
      if (answer?.ok) {
        this.holdLease(sentAt, answer);
        await this.setRole('leader', 'the witness says we hold the lease', rec.generation);
        return this.finishPromotion('adopt');
      }
    }
    if (this.meta.role === 'follower') {
      await this.fenceNow(`our server is a primary but the witness says ${rec?.holder ?? '(unreachable)'} holds the lease`);
      await this.setRole('fenced', 'follower whose server was a primary without the lease');
    }
  }

  /** Follower: ask the witness for the lease; it hands it over only to the recorded synchronous standby after expiry. */
  private async takeOver(): Promise<void> {
    let { sentAt, answer } = await this.acquire(this.meta.generation);
    // The witness says how long the lease has left. When that is soon, ask again right after it
    // ends instead of at a later round: a round waits out the dead leader's check timeout first,
    // which made failover up to one interval longer. A leader still renewing answers 'held' with
    // nearly a whole lease left, and the rounds go on as usual.
    for (let i = 0; answer && !answer.ok && answer.code === 'held' && answer.remainingMs <= 2 * this.s.checkInterval && i < 2 && !this.stopped; i++) {
      await this.p.clock.sleep(Math.ceil(answer.remainingMs * (1 + 2 * this.s.maxDrift)) + TAKEOVER_MARGIN_MS);
      if (this.stopped || this.meta.role !== 'follower') return;
      ({ sentAt, answer } = await this.acquire(this.meta.generation));
    }
    if (!answer) return;
    if (!answer.ok) {
      this.p.log.debug({ event: 'takeover', code: answer.code }, answer.reason);
      return;
    }
    this.holdLease(sentAt, answer);
    this.p.log.warn({ event: 'takeover', generation: answer.generation }, `the witness handed us the lease at generation ${answer.generation}: promoting`);
    // The witness's record names us at this generation: a crash from here on finishes the
    // promotion on restart (reconcile), so hostmeta's write goes on while the server promotes.
    const persisted = this.setRole('leader', `leader lost; the witness handed over the lease (generation ${answer.generation}) to its synchronous standby`, answer.generation);
    await this.finishPromotion('failover');
    await persisted;
  }

  /**
   * Promote our server (if it still is a standby), record the timeline, take the VIP, restart
   * Kubernetes. `seen`: the server's status as the caller just read it (a switchover's replay
   * wait), instead of another look inside the write pause.
   */
  private async finishPromotion(why: string, steps?: Steps, seen?: PgStatus): Promise<void> {
    const { pg } = this.p;
    const st0 = seen?.up ? seen : await pg.status();
    if (!st0.up) {
      const disk = await pg.disk();
      if (!this.mayWrite()) return;
      await pg.start();
      steps?.mark('started');
      if (!disk.standbySignal) return this.afterPromotion(why, false, steps);
    }
    // One look when the server ran: under TCG each is tens of milliseconds of the write pause.
    const st = st0.up ? st0 : await pg.status();
    if (st.up && st.inRecovery) {
      if (!this.mayWrite()) return;
      // The address comes up while the server promotes (we hold the lease; the old leader
      // dropped the address before it gave the lease up): for that moment clients are refused at
      // once and retry, where at an address nobody held their connection attempt would be lost
      // (a SYN retried after a second). Strict mode names its standby before any client comes.
      const early = this.s.syncPolicy === 'strict' ? undefined : this.takeVipPromoting(steps);
      await pg.promote();
      steps?.mark('promoted');
      return this.afterPromotion(why, true, steps, (await early) === true);
    }
    return this.afterPromotion(why, false, steps);
  }

  /**
   * Take the VIP on the way to (or right after) a promotion. A failure is logged, not thrown: the
   * timeline's record and the rest still follow, and the loop's takeVip rule tries again.
   */
  private async takeVipPromoting(steps?: Steps): Promise<boolean> {
    const { vip, log } = this.p;
    try {
      await vip.take();
      steps?.mark('address taken');
      // The lease ran out meanwhile: the fence may have dropped the address before it came up.
      if (!this.mayWrite()) await vip.drop();
      return true;
    } catch (err) {
      log.warn({ event: 'vip', err: (err as Error).message }, `could not take the VIP while promoting: ${(err as Error).message}; the control loop tries again`);
      return false;
    }
  }

  private async afterPromotion(why: string, promoted: boolean, steps?: Steps, addressTaken = false): Promise<void> {
    const { pg, log } = this.p;
    const st = await pg.status();
    if (this.meta.role !== 'leader') return;
    // A data directory from before configureStandby cleared it may still say read-only.
    if (st.readOnly && this.mayWrite()) await pg.setReadOnly(false);
    steps?.mark('writable');
    // Strict: the standby is named before clients reach us through the address, so that no
    // commit is acknowledged on this node alone. Degrade: a promoted standby has '' already.
    const names = this.s.syncPolicy === 'strict' ? quoteName(this.s.peer) : '';
    if (promoted && st.synchronousStandbyNames !== names) {
      await pg.setSyncStandby(names).catch((err) => log.warn({ err: (err as Error).message }, 'could not set synchronous_standby_names'));
    }
    // The address first: what follows is bookkeeping (the timeline is an audit record at the
    // witness), and every write waits for the address.
    if (!addressTaken && this.mayWrite()) await this.takeVipPromoting(steps);
    if (promoted || st.timeline !== this.meta.timeline) {
      this.meta = { ...this.meta, timeline: st.timeline };
      await this.persist();
    }
    if (this.arbiter && st.timeline !== undefined) await this.witness({ op: 'timeline', node: this.s.self, generation: this.meta.generation, timeline: st.timeline });
    if (promoted) log.info({ event: 'promoted', generation: this.meta.generation, timeline: st.timeline, why }, `promoted: generation ${this.meta.generation}, timeline ${st.timeline}`);
    steps?.mark('recorded');
    await pg.ensurePeerSlot().catch(() => undefined);
    // Not fatal: the promotion stands without Kubernetes, but an operator must see why K3s
    // did not come back (a unit missing from the image, a failed start).
    if (promoted) {
      await this.p.kube.restart().catch((err) => log.warn({ event: 'kube-restart', err: (err as Error).message }, `could not restart Kine and K3s after the promotion: ${(err as Error).message}`));
      steps?.mark('kube restarted');
    }
  }

  /** Fenced (lease mode): regain the lease we hold, or follow the peer that holds a newer one. */
  private async reacquire(o: Observation): Promise<void> {
    const disk = await this.p.pg.disk();
    if (disk.standbySignal) {
      await this.setRole('follower', 'fenced node whose data directory is a standby');
      return;
    }
    const { sentAt, answer } = await this.acquire(this.meta.generation);
    if (!answer) return;
    if (answer.ok) {
      this.holdLease(sentAt, answer);
      await this.setRole('leader', 'the witness renewed our lease: unfencing', answer.generation);
      await this.p.pg.start();
      // Writable, the address, and what else follows a promotion: this node may have crashed
      // right after its own, before the peer's slot existed (the simulator's seed 3 once its
      // model had slots: the old leader never streamed again).
      await this.afterPromotion('unfence', false);
      return;
    }
    const peerLeads = o.peer?.role === 'leader' || o.peerPg.primary === true;
    // >=: a node may have recorded the peer's generation as a follower before it was fenced.
    if (answer.holder === this.s.peer && answer.generation >= this.meta.generation && peerLeads) {
      await this.rejoin(`${this.s.peer} holds generation ${answer.generation}`, answer.generation);
    }
  }

  /** Follow the peer: stop, pg_rewind (else a fresh clone), start as standby. */
  async rejoin(reason: string, generation = this.meta.generation): Promise<void> {
    const { pg, vip, log } = this.p;
    if (this.meta.role === 'leader') this.dropLease();
    if (this.meta.role !== 'fenced') await this.setRole('fenced', `rejoining: ${reason}`);
    await vip.drop().catch(() => undefined);
    log.info({ event: 'rejoin' }, `rejoining as standby: ${reason}`);
    let method: RejoinMethod;
    try {
      method = await pg.rejoin();
    } catch (err) {
      log.error({ event: 'rejoin', err: (err as Error).message }, 'rejoin failed; staying fenced');
      return;
    }
    this.snapshot.lastRejoin = { method, at: this.p.clock.now() };
    log.warn({ event: 'rejoin', method }, `rejoined through ${method}`);
    await pg.start().catch((err) => log.warn({ err: (err as Error).message }, 'standby did not start yet'));
    this.memory.leaderSeenAt = this.p.clock.now();
    // A new server: its receiver's history starts now, with time to cross the timeline switch.
    this.memory.receiverDownSince = undefined;
    this.memory.rejoinedAt = this.p.clock.now();
    await this.setRole('follower', `${reason} (rejoined through ${method})`, generation);
  }

  // ---------------------------------------------------------------- switchover

  /**
   * Planned switchover: stop writes, wait until the standby has everything, stop, give up the
   * lease, ask the peer to take it over. Every failure path ends with one writable primary,
   * except when `stopping` (the agent's own clean stop): then this node starts no server again,
   * neither as the new standby nor to take writes back, since its units are on their way down
   * (a start would wait for the agent's own stop); a peer that did not take over finds the
   * lease released and takes it once it may.
   */
  async switchover(timeoutMs = 5000, stopping = false): Promise<SwitchResult> {
    const { pg, vip, clock, log } = this.p;
    const started = clock.now();
    const took = (): number => Math.round(clock.now() - started);
    if (this.meta.role !== 'leader' || !this.mayWrite()) return { ok: false, reason: `this node is ${this.meta.role}, not a leader holding its lease`, tookMs: 0 };
    if (this.switching) return { ok: false, reason: 'a switchover is in progress', tookMs: 0 };
    // Claimed before the first await: a second request arriving meanwhile is refused above.
    this.switching = true;
    this.snapshot.switching = true;
    try {
      while (this.busy) await clock.sleep(20);
      if (this.meta.role !== 'leader' || !this.mayWrite()) return { ok: false, reason: `this node is ${this.meta.role}, not a leader holding its lease`, tookMs: took() };
      const st0 = await pg.status();
      if (st0.standby?.state !== 'streaming') return { ok: false, reason: 'the standby is not streaming', tookMs: took() };
      if (this.arbiter && this.promotable !== this.s.peer) return { ok: false, reason: 'the standby is not recorded as synchronous at the witness', tookMs: took() };
      const generation = this.meta.generation;
      const steps = new Steps(() => clock.now());
      // While writes still go on (as Patroni does before its shutdown): the shutdown checkpoint,
      // inside the write pause, then has little left to write.
      await pg.checkpoint().catch((err: Error) => log.warn({ event: 'switchover', err: err.message }, `CHECKPOINT before the switchover failed: ${err.message}`));
      steps.mark('checkpoint');
      await pg.setReadOnly(true);
      steps.mark('read-only');
      let st = await pg.status();
      let replayBefore: bigint | null | undefined;
      while (!switchoverCaughtUp(st, replayBefore)) {
        // The lease keeper renews meanwhile; if the lease is lost anyway, the guard has fenced us.
        if (!this.mayWrite()) return { ok: false, reason: 'the lease was lost while the standby caught up: fenced', tookMs: took() };
        if (clock.now() - started > timeoutMs) {
          await pg.setReadOnly(false);
          return { ok: false, reason: 'the standby did not catch up in time; writes resumed here', tookMs: took() };
        }
        replayBefore = st.standby?.replayLsn;
        // Writes are paused: a poll on the adapter's kept connection costs less than a sleep.
        await clock.sleep(20);
        st = await pg.status();
      }
      const target = st.lsn!;
      steps.mark('caught up');
      // From here this node is not writable: role and lease, then server and address (together
      // where a drop refuses connections, else in that order), then the lease at the witness.
      this.dropLease();
      this.meta = { ...this.meta, role: 'fenced' };
      if (vip.refusesAfterDrop) {
        // The address goes while the server stops: clients that still reach this node are
        // refused at once either way (by the stopping server, or by the route the drop leaves
        // until the peer has taken the address), and the drop is off the write pause.
        const [stopped, dropped] = await Promise.allSettled([
          pg.stop().then(() => steps.mark('stopped')),
          vip.drop().then(() => steps.mark('address dropped')),
        ]);
        for (const r of [stopped, dropped]) if (r.status === 'rejected') throw r.reason;
      } else {
        await pg.stop();
        steps.mark('stopped');
        // Only now: while the server stops, clients reaching it through the address are refused
        // at once and retry, where at an address nobody holds their connection attempt is lost
        // for a second (the SYN's first retransmission).
        await vip.drop();
        steps.mark('address dropped');
      }
      // With a witness its record, not hostmeta, says after a crash that this node does not lead
      // (reconcile): the write goes on beside the handover, off the write pause. Without one,
      // hostmeta is all a restart has, and it must say "fenced" before the peer may promote.
      const persisted = this.persist();
      if (!this.arbiter) await persisted;
      // A renewal already in flight must reach the witness before our release, never after it.
      // Waited for here, not before the stop: its answer changes nothing now (dropLease), and
      // there its round trip to the witness held the stop back inside the write pause.
      while (this.renewing) await clock.sleep(10);
      // The promote request goes out with the release, not after its answer: the peer asks the
      // witness again while it still finds the lease ours (promoteOnRequest), and one round trip
      // to the witness is off the write pause.
      // The release names the lease it gives up: if it reaches the witness only after this node
      // has taken its lease back (the peer refused or did not answer: recoverSwitchover), the
      // witness refuses it instead of ending the newer lease while the peer still asks.
      const lease = this.leaseTag;
      const released = this.arbiter ? this.witness({ op: 'release', node: this.s.self, generation, ...(lease === undefined ? {} : { lease }) }).then(() => steps.mark('lease released')) : undefined;
      const res = await this.p.peer.promote({ lsn: target, generation }).catch((err: Error) => ({ ok: false, generation: undefined, reason: err.message }));
      steps.mark('peer promoted');
      await released;
      await persisted;
      if (res.ok) {
        await this.becomeStandby('planned switchover', res.generation ?? generation + 1, !stopping);
        steps.mark('standby');
        log.info({ event: 'switchover', ok: true, steps: steps.ms }, `switched over to ${this.s.peer} (${steps.text()})`);
        return { ok: true, reason: 'switched over', tookMs: took() };
      }
      log.warn({ event: 'switchover', reason: res.reason }, `the peer did not take over: ${res.reason}`);
      if (stopping) {
        await this.setRole('fenced', `switchover at stop failed (${res.reason}); stopping without a primary here`);
        return { ok: false, reason: `the peer did not take over (${res.reason}); the lease is released for it`, tookMs: took() };
      }
      return { ...(await this.recoverSwitchover(generation, res.reason)), tookMs: took() };
    } finally {
      this.switching = false;
      this.snapshot.switching = false;
    }
  }

  /** The peer refused or did not answer: whoever the witness says holds the lease is the primary. */
  private async recoverSwitchover(generation: number, why: string): Promise<{ ok: boolean; reason: string }> {
    if (!this.arbiter) {
      await this.p.pg.start();
      await this.p.pg.setReadOnly(false);
      await this.setRole('leader', `switchover failed (${why}); writes resumed here`);
      if (this.mayWrite()) await this.p.vip.take();
      return { ok: false, reason: `the peer did not take over (${why}); writes resumed here` };
    }
    for (let i = 0; i < 3; i++) {
      const { sentAt, answer } = await this.acquire(generation);
      if (answer?.ok) {
        this.holdLease(sentAt, answer);
        await this.setRole('leader', `switchover failed (${why}); the lease is ours again`, answer.generation);
        const started = await this.startOrWarn('switchover', 'PostgreSQL did not start after the failed switchover; the loop retries');
        if (started && this.mayWrite()) {
          await this.p.pg.setReadOnly(false);
          await this.p.vip.take();
        }
        return { ok: false, reason: `the peer did not take over (${why}); ${started ? 'writes resumed here' : 'the lease is ours again, PostgreSQL restarts'}` };
      }
      if (answer && answer.holder === this.s.peer) {
        await this.becomeStandby(`switchover: ${this.s.peer} took the lease (generation ${answer.generation})`, answer.generation);
        return { ok: true, reason: `the peer took over although its answer was lost (${why})` };
      }
      await this.p.clock.sleep(this.s.checkInterval);
    }
    await this.setRole('fenced', `switchover failed (${why}) and the witness did not answer`);
    return { ok: false, reason: `the peer did not take over (${why}) and the witness did not answer: fenced until it does` };
  }

  private async becomeStandby(reason: string, generation: number, start = true): Promise<void> {
    await this.p.pg.setReadOnly(false).catch(() => undefined);
    await this.p.pg.configureStandby();
    if (start) await this.p.pg.start().catch(() => undefined);
    this.memory.leaderSeenAt = this.p.clock.now();
    await this.setRole('follower', reason, generation);
  }

  // ---------------------------------------------------------------- operator maintenance

  /**
   * Run `fn` with the control loop held off, as a switchover holds it (the lease keeper and the
   * guard go on, so a leader that loses its lease is still fenced): a restore or a re-clone an
   * operator asked for. Refused unless this node's role is one of `roles`, and while a
   * switchover, a fence or another such operation runs.
   */
  async exclusive<T>(what: string, roles: Role[], fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; reason: string }> {
    const wrongRole = (): string | undefined => (roles.includes(this.meta.role) ? undefined : `this node is the ${this.meta.role}; a ${what} runs on the ${roles.join(' or ')}`);
    if (wrongRole()) return { ok: false, reason: wrongRole()! };
    if (this.switching || this.fencing) return { ok: false, reason: 'busy: a switchover, a fence or another operation runs' };
    this.switching = true;
    this.snapshot.switching = true;
    try {
      while (this.busy) await this.p.clock.sleep(20);
      if (wrongRole()) return { ok: false, reason: wrongRole()! };
      this.p.log.warn({ event: what }, `${what}: the control loop waits until it is done`);
      return { ok: true, value: await fn() };
    } finally {
      this.switching = false;
      this.snapshot.switching = false;
    }
  }

  /**
   * Record at the witness that nobody may be promoted (Patroni's /sync rule: before commits stop
   * waiting for the standby): a degrade, a standby's leave, and a restore that discards the
   * history the standby holds. Not ok, with the witness's reason, when it did not record it.
   */
  async forbidPromotion(): Promise<{ ok: boolean; reason?: string }> {
    if (!this.arbiter) return { ok: true };
    const r = await this.witness({ op: 'promotable', node: this.s.self, generation: this.meta.generation, promotable: null });
    if (!r?.ok) return { ok: false, reason: r?.reason ?? 'unreachable' };
    this.promotable = null;
    return { ok: true };
  }

  /** After a restore: the timeline the restored primary runs on, in hostmeta and at the witness. */
  async recordRestore(timeline: number, reason: string): Promise<void> {
    const role = this.meta.role;
    this.meta = { ...this.meta, timeline, lastTransition: { at: new Date().toISOString(), from: role, to: role, reason } };
    this.onTransition?.({ ...this.meta.lastTransition!, generation: this.meta.generation });
    await this.persist();
    if (this.arbiter) await this.witness({ op: 'timeline', node: this.s.self, generation: this.meta.generation, timeline });
  }

  /** The ports, for operator operations that run under `exclusive`. */
  get ports(): Ports {
    return this.p;
  }

  /**
   * An operator's forced failover onto this follower, the leader being gone: the witness revokes
   * the old lease once it has expired there (so the old leader has fenced itself by then) and
   * names us promotable, then we take the lease as in any failover. `generation` is the witness
   * generation the operator decided on: if the witness has moved on since, it refuses. When the
   * witness already names us, nothing is forced: we only ask for the lease now.
   */
  async forcePromote(generation: number): Promise<ForceResult> {
    const refuse = (reason: string, forced = false): ForceResult => ({ ok: false, forced, reason });
    if (!this.arbiter) return refuse('this cluster has no witness: nothing can prove that the old leader stopped writing');
    const r = await this.exclusive('forced failover', ['follower'], async (): Promise<ForceResult> => {
      const o = await this.observe();
      if (!o.pg.up || !o.pg.inRecovery) return refuse(`our PostgreSQL is ${o.pg.up ? 'a primary' : 'down'}: only a running standby can take over`);
      if (o.peer?.role === 'leader' || o.peerPg.primary) return refuse(`${this.s.peer} answers as the leader: use a planned switchover (failover without --force)`);
      const rec = await this.witness({ op: 'read' });
      if (!rec) return refuse('the witness does not answer: without it nothing can prove that the old leader stopped writing');
      let forced = false;
      if (rec.promotable !== this.s.self) {
        const f = await this.witness({ op: 'force', node: this.s.self, generation });
        if (!f?.ok) return refuse(`the witness refused: ${f?.reason ?? 'it did not answer'}`);
        forced = true;
        this.p.log.warn({ event: 'force', generation: f.generation, previousHolder: rec.holder }, `forced failover: ${f.reason}`);
      }
      const { sentAt, answer } = await this.acquire(this.meta.generation);
      if (!answer?.ok) return refuse(`the witness did not hand us the lease: ${answer?.reason ?? 'it did not answer'}${forced ? ' (it names us promotable now: the loop keeps asking)' : ''}`, forced);
      this.holdLease(sentAt, answer);
      // Recorded before the promotion, as in any failover: a crash from here finishes it on restart.
      await this.setRole('leader', `forced failover by an operator: the witness handed us generation ${answer.generation}${forced ? `, revoking the lease of ${rec.holder ?? 'nobody'}` : ''}`, answer.generation);
      await this.finishPromotion('forced failover');
      return { ok: true, forced, generation: answer.generation, reason: 'promoted' };
    });
    return r.ok ? r.value : refuse(r.reason);
  }

  /**
   * The standby says it stops now (its clean shutdown: a reboot, an upgrade, a stop). As a
   * degrade does, and for the same reason (rule 1): the witness records nobody promotable first,
   * then synchronous commit goes off, so no commit waits for a standby that is going away. It
   * stays off until the standby has gone (then the usual catch-up rule turns it on again when
   * it is back), or LEAVE_HOLD_MS. Refused under `syncPolicy: strict`, where commits wait.
   */
  async standbyLeaving(req: LeaveRequest): Promise<{ ok: boolean; reason: string }> {
    const { pg, clock, log } = this.p;
    const notLeader = (): string | undefined => (this.meta.role === 'leader' && this.mayWrite() ? undefined : `this node is ${this.meta.role}, not a leader holding its lease`);
    if (notLeader()) return { ok: false, reason: notLeader()! };
    if (req.generation > this.meta.generation) return { ok: false, reason: `the standby is at generation ${req.generation}, newer than ours (${this.meta.generation})` };
    if (this.s.syncPolicy !== 'degrade') return { ok: false, reason: 'syncPolicy is strict: commits wait for the standby until it is back' };
    if (this.switching || this.fencing) return { ok: false, reason: 'busy: a switchover, a fence or another operation runs' };
    this.switching = true;
    try {
      while (this.busy) await clock.sleep(20);
      if (notLeader()) return { ok: false, reason: notLeader()! };
      if (this.promotable !== null) {
        const f = await this.forbidPromotion();
        if (!f.ok) return { ok: false, reason: `the witness did not record that nobody may be promoted (${f.reason}): commits keep waiting for the standby` };
      }
      if (!this.mayWrite()) return { ok: false, reason: 'the lease was lost' };
      const st = await pg.status();
      if (st.synchronousStandbyNames) await pg.setSyncStandby('');
      this.memory = { ...this.memory, standbyLeavingSince: clock.now(), syncRounds: 0, syncBaseline: undefined };
      log.warn({ event: 'standby-leaving', peer: this.s.peer }, `${this.s.peer} stops (clean shutdown): synchronous replication off until it is back`);
      return { ok: true, reason: st.synchronousStandbyNames ? 'synchronous replication off' : 'synchronous replication was already off' };
    } finally {
      this.switching = false;
    }
  }

  /**
   * A clean stop (SIGTERM: a reboot, an upgrade's, `systemctl stop`). A leader first hands over
   * to its synchronous standby (the planned switchover, refused at once when the standby is not
   * streaming and recorded promotable), so that its reboot costs the pair a switchover instead
   * of a lease expiry and a failover. Then the loop stops, and a follower (the old leader too,
   * once it handed over) tells its leader that its standby goes (`leave`). PostgreSQL stops
   * only after this returns (geminik8s-postgresql is ordered Before= the agent's unit).
   */
  async shutdown(): Promise<void> {
    if (this.meta?.role === 'leader' && !this.stopped) {
      const handover = await this.switchover(5000, true).catch((err: Error) => ({ ok: false, reason: `threw: ${err.message}`, tookMs: 0 }));
      this.p.log.info({ event: 'stop-handover', ok: handover.ok, reason: handover.reason, tookMs: handover.tookMs }, `stopping as leader: ${handover.ok ? `handed over to ${this.s.peer} in ${handover.tookMs} ms` : `no handover (${handover.reason}); ${this.s.peer} takes over when the lease runs out`}`);
    }
    this.stop();
    if (this.meta?.role === 'follower') await this.leave();
  }

  /**
   * A follower's clean stop: tell the leader first (standbyLeaving), so its commits do not wait
   * for our standby while it shuts down. Bounded by leaveTimeoutMs; whatever the answer, the
   * stop goes on (without it, the leader degrades after degradeAfter as for a lost standby).
   */
  async leave(): Promise<{ sent: boolean; ok: boolean; reason: string }> {
    if (this.meta?.role !== 'follower') return { sent: false, ok: false, reason: `this node is ${this.meta?.role ?? 'starting'}, not a follower` };
    // The port gives up after the timeout (PeerPort.leave): no timer of our own.
    const r = await this.p.peer.leave({ generation: this.meta.generation }, leaveTimeoutMs(this.s)).catch((err: Error) => ({ ok: false, reason: `no answer: ${err.message}` }));
    this.p.log.info({ event: 'leave', ok: r.ok, reason: r.reason }, `told ${this.s.peer} that this standby stops: ${r.ok ? r.reason : `not taken (${r.reason})`}`);
    return { sent: true, ...r };
  }

  /** The peer asks us to take over in a planned switchover. */
  async promoteOnRequest(req: PromoteRequest): Promise<{ ok: boolean; generation?: number; reason: string }> {
    const { pg, clock } = this.p;
    if (this.meta.role !== 'follower') return { ok: false, reason: `this node is ${this.meta.role}` };
    // A leader asks with the generation both nodes agree on; an older one is a replay or a
    // leader that missed a handover. With a witness it would refuse too; without one this is
    // the only check.
    if (req.generation < this.meta.generation) return { ok: false, reason: `stale generation ${req.generation}: this node is at generation ${this.meta.generation}` };
    if (this.switching) return { ok: false, reason: 'busy' };
    this.switching = true;
    try {
      while (this.busy) await clock.sleep(20);
      if (this.meta.role !== 'follower') return { ok: false, reason: `this node is ${this.meta.role}` };
      const steps = new Steps(() => clock.now());
      const until = clock.now() + 5000;
      let st = await pg.status();
      while (!(st.up && st.lsn !== undefined && st.lsn >= req.lsn)) {
        if (clock.now() > until) return { ok: false, reason: `replayed ${st.lsn === undefined ? 'nothing' : formatLsn(st.lsn)}, need ${formatLsn(req.lsn)}` };
        await clock.sleep(20);
        st = await pg.status();
      }
      steps.mark('replayed');
      let generation: number;
      // The replay wait's status, unless the lease took more than one ask (then it is looked at again).
      let stale = false;
      if (this.arbiter) {
        let { sentAt, answer } = await this.acquire(req.generation);
        // The leader sends this request with its release (switchover): until the release has
        // reached the witness, the lease is still the leader's at the generation it sent.
        while (answer && !answer.ok && answer.code === 'held' && answer.holder === this.s.peer && answer.generation === req.generation && clock.now() < until && !this.stopped) {
          await clock.sleep(RELEASE_RETRY_MS);
          ({ sentAt, answer } = await this.acquire(req.generation));
          stale = true;
        }
        if (!answer?.ok) return { ok: false, reason: `the witness did not hand us the lease: ${answer?.reason ?? 'unreachable'}` };
        this.holdLease(sentAt, answer);
        generation = answer.generation;
      } else {
        generation = Math.max(req.generation, this.meta.generation) + 1;
      }
      steps.mark('lease');
      // With a witness, hostmeta's "leader" goes on disk while the server promotes: after a crash
      // (one inside PostgreSQL's promotion too: the adapter's start makes that a standby again)
      // the witness's record, which names us at this generation, finishes the promotion
      // (reconcile). Without one, hostmeta is the only record, and it comes first.
      const persisted = this.setRole('leader', 'planned switchover', generation);
      if (!this.arbiter) await persisted;
      steps.mark('role');
      await this.finishPromotion('switchover', steps, stale ? undefined : st);
      await persisted;
      this.p.log.info({ event: 'switchover-promoted', generation, steps: steps.ms }, `took over from ${this.s.peer} in a switchover (${steps.text()})`);
      return { ok: true, generation, reason: 'promoted' };
    } finally {
      this.switching = false;
    }
  }
}

/** Where a long operation's time went: milliseconds from its start at each named step, in order. */
export class Steps {
  readonly ms: Record<string, number> = {};
  private readonly t0: number;
  constructor(private readonly now: () => number) {
    this.t0 = now();
  }

  mark(step: string): void {
    this.ms[step] = Math.round(this.now() - this.t0);
  }

  /** "a 12, b 340 ms": each step's time from the start. */
  text(): string {
    return `${Object.entries(this.ms).map(([k, v]) => `${k} ${v}`).join(', ')} ms`;
  }
}

/** synchronous_standby_names takes application names; quote them as identifiers. */
export function quoteName(name: string): string {
  return `"${name}"`;
}
