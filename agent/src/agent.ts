import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { uptime } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { runPlan } from '../../common/exec.ts';
import { bootSettings } from '../../common/schema/agent.ts';
import type { HostMeta, Role } from '../../common/schema/hostmeta.ts';
import { blessDecision, type BlessDecision } from './bootgate.ts';
import { bless, describeChanges, readBootState, rebootPlan, type BootState } from './bootslot.ts';
import type { NodeContext } from './context.ts';
import { decide, lsnToBigInt, remember, type Action, type Memory, type Observation, type Timings } from './decide.ts';
import { readHostMeta, transition, writeHostMeta } from './hostmeta.ts';
import * as pgc from './postgres.ts';
import { probeIcmp, probeK3sReady, probePeerApi, probePeerPg, probeWitness, runUserChecks } from './probes.ts';
import { dropVip, takeVip, vipHeld, type VipSpec } from './vip.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The A/B boot state and, while trying, the health gate's latest decision. */
export interface BootStatus extends BootState {
  gate?: { action: BlessDecision['action']; ok: boolean; reason: string; healthyForMs: number; blessAfterMs: number; trialTimeoutMs: number; k3s?: string };
}

/** The last observation, kept for /v1/status and /metrics. */
export interface Snapshot {
  observation?: Observation;
  userChecks: { name: string; ok: boolean }[];
  transitions: number;
  lastDecision?: string;
  /** Monotonic time the last round of the loop completed without error. */
  lastRoundOkAt?: number;
  boot?: BootStatus;
}

/** The node agent: bootstrap, then observe → decide → act every check interval. */
export class Agent {
  meta!: HostMeta;
  memory!: Memory;
  readonly snapshot: Snapshot = { userChecks: [], transitions: 0 };
  private stopped = false;
  private busy = false;
  /** A planned switchover in progress: the loop keeps its hands off. */
  switching = false;
  private leaseDeadline = 0;
  private readonly bootGate: { healthySince?: number; logged?: string; rebootAt?: number } = {};
  readonly vip: VipSpec;
  readonly timings: Timings;

  constructor(readonly ctx: NodeContext, readonly log: Logger) {
    this.vip = { address: ctx.spec.network.vip, prefix: ctx.spec.network.prefix, device: ctx.spec.network.interface };
    const f = ctx.spec.failover;
    this.timings = {
      checkInterval: f.checkInterval, checkTimeout: f.checkTimeout, fenceAfter: f.fenceAfter, promoteAfter: f.promoteAfter,
      degradeAfter: f.degradeAfter, syncPolicy: ctx.spec.postgresql.syncPolicy, leaseWitness: ctx.witness.kind === 'lease', noWitness: ctx.witness.kind === 'none',
    };
  }

  get role(): Role {
    return this.meta.role;
  }

  private get inProgressMarker(): string {
    return join(this.ctx.config.stateDir, 'bootstrap-in-progress');
  }

  /** Data is usable only when a bootstrap step finished (a marker guards initdb and clones). */
  private hasCompleteData(): boolean {
    return pgc.hasData(this.ctx) && !existsSync(this.inProgressMarker);
  }

  async setRole(to: Role, reason: string, generation = this.meta.generation, timeline?: number): Promise<void> {
    const from = this.meta.role;
    this.meta = transition(this.meta, to, reason, Math.max(generation, this.meta.generation), timeline ?? this.meta.timeline);
    await writeHostMeta(this.ctx.config.stateDir, this.meta);
    this.memory = { ...this.memory, role: to, generation: this.meta.generation };
    this.snapshot.transitions++;
    this.log.info({ event: 'transition', from, to, generation: this.meta.generation, timeline: this.meta.timeline, reason }, `role ${from} -> ${to}: ${reason}`);
  }

  /** First start or restart: bring PostgreSQL up in the role the node had, or bootstrap it. */
  async init(): Promise<void> {
    const { ctx } = this;
    // root:postgres 0750: PostgreSQL's tools read the pgpass file kept here.
    await mkdir(ctx.config.stateDir, { recursive: true, mode: 0o750 });
    const { uid, gid } = await pgc.osUserIds(ctx.config.postgresql.osUser);
    await chown(ctx.config.stateDir, 0, gid);
    await chmod(ctx.config.stateDir, 0o750);
    await mkdir(ctx.config.postgresql.socketDir, { recursive: true, mode: 0o2775 });
    await chown(ctx.config.postgresql.socketDir, uid, gid);
    await mkdir(pgc.pgLogDir(ctx), { recursive: true, mode: 0o750 });
    await chown(pgc.pgLogDir(ctx), uid, gid);
    await pgc.writePgpass(ctx);
    const existing = await readHostMeta(ctx.config.stateDir);
    this.meta = existing ?? {
      cluster: ctx.spec.name, node: ctx.self.name, role: 'init', peer: ctx.peer.name, generation: 0,
      lastTransition: { at: new Date().toISOString(), from: 'init', to: 'init', reason: 'first start' },
    };
    const now = performance.now();
    this.memory = { role: this.meta.role, generation: this.meta.generation, peerSeenAt: now, witnessOkAt: now, syncConfirmedAt: 0, degraded: false, pgRestarts: 0 };
    if (!existing) await writeHostMeta(ctx.config.stateDir, this.meta);

    if (!this.hasCompleteData()) return this.bootstrap();
    if (this.meta.role === 'follower' || existsSync(join(ctx.config.postgresql.dataDir, 'standby.signal'))) {
      await this.startPg();
      if (this.meta.role !== 'follower') await this.setRole('follower', 'data directory is a standby');
      return;
    }
    if (this.meta.role === 'leader') return this.restartAsLeader();
    // fenced (or unknown): stay down until the loop sees peer and witness.
    if (this.meta.role !== 'fenced') await this.setRole('fenced', `restarted in role ${this.meta.role} with data: waiting for the peer before serving writes`);
  }

  private async bootstrap(): Promise<void> {
    const { ctx } = this;
    const peer = await probePeerApi(ctx);
    if (ctx.isBootstrapLeader && peer?.role !== 'leader') {
      this.log.info({ event: 'bootstrap' }, 'bootstrap leader: initdb with data checksums');
      await writeFile(this.inProgressMarker, 'initdb\n');
      await rm(ctx.config.postgresql.dataDir, { recursive: true, force: true });
      await mkdir(ctx.config.postgresql.dataDir, { recursive: true, mode: 0o700 });
      const { uid, gid } = await pgc.osUserIds(ctx.config.postgresql.osUser);
      await chown(ctx.config.postgresql.dataDir, uid, gid);
      const pwfile = join(ctx.config.stateDir, 'initdb-pw');
      await writeFile(pwfile, `${ctx.secrets.postgresPassword}\n`, { mode: 0o600 });
      await chown(pwfile, uid, gid);
      try {
        await pgc.run(pgc.initdbPlan(ctx, pwfile));
      } finally {
        await rm(pwfile, { force: true });
      }
      await pgc.writeNodeConfig(ctx);
      await pgc.setAutoConf(ctx, { synchronous_standby_names: this.timings.syncPolicy === 'strict' ? quoteName(ctx.peer.name) : '' });
      await this.startPg();
      await pgc.bootstrapPrimaryObjects(ctx);
      await rm(this.inProgressMarker, { force: true });
      this.memory.degraded = this.timings.syncPolicy === 'degrade';
      if (ctx.config.vip.enabled) await takeVip(this.vip);
      const st = await pgc.localStatus(ctx);
      await this.setRole('leader', 'bootstrap leader initialized the database', 1, st.timeline);
      return;
    }
    this.log.info({ event: 'bootstrap' }, `waiting for leader ${ctx.peer.name} (${ctx.peer.ip}) to clone from it`);
    for (;;) {
      if (this.stopped) return;
      const p = await probePeerApi(ctx);
      const pgp = await probePeerPg(ctx);
      if (p?.role === 'leader' && pgp.ok && pgp.primary) {
        await this.cloneFromPeer('clone of the leader finished');
        await this.setRole('follower', `cloned from ${ctx.peer.name}`, p.generation);
        return;
      }
      await sleep(this.timings.checkInterval);
    }
  }

  private async cloneFromPeer(why: string): Promise<void> {
    const { ctx } = this;
    await writeFile(this.inProgressMarker, 'basebackup\n');
    await rm(ctx.config.postgresql.dataDir, { recursive: true, force: true });
    const { uid, gid } = await pgc.osUserIds(ctx.config.postgresql.osUser);
    await mkdir(ctx.config.postgresql.dataDir, { recursive: true, mode: 0o700 });
    await chown(ctx.config.postgresql.dataDir, uid, gid);
    this.log.info({ event: 'basebackup' }, `pg_basebackup from ${ctx.peer.ip}`);
    await pgc.run(pgc.basebackupPlan(ctx), 30 * 60_000);
    await pgc.writeNodeConfig(ctx);
    await pgc.configureStandby(ctx);
    await this.startPg();
    await rm(this.inProgressMarker, { force: true });
    this.log.info({ event: 'basebackup' }, why);
  }

  private async restartAsLeader(): Promise<void> {
    const { ctx } = this;
    // Never serve writes after a restart before knowing the peer has not been promoted.
    const deadline = performance.now() + this.timings.promoteAfter;
    while (performance.now() < deadline && !this.stopped) {
      const p = await probePeerApi(ctx);
      if (p) {
        if (p.role === 'leader' && p.generation > this.meta.generation) {
          await this.rejoin(`peer is leader with generation ${p.generation} > ${this.meta.generation}`);
          return;
        }
        if (p.role === 'follower' || p.role === 'init') {
          await this.startPg();
          await this.setRole('leader', 'restarted as leader; the peer is our standby');
          return;
        }
      }
      await sleep(this.timings.checkInterval);
    }
    if (this.timings.leaseWitness) {
      const w = await probeWitness(ctx, true);
      if (w.leaseHeld) {
        this.leaseDeadline = w.leaseDeadline ?? 0;
        await this.startPg();
        await this.setRole('leader', 'restarted as leader; the witness granted the lease');
        return;
      }
    }
    await this.setRole('fenced', 'restarted as leader but could not confirm the peer is not primary');
  }

  private async startPg(): Promise<void> {
    const st = await pgc.localStatus(this.ctx);
    if (st.up) return;
    await pgc.run(pgc.pgCtlStartPlan(this.ctx));
  }

  private async stopPg(): Promise<void> {
    try {
      await pgc.run(pgc.pgCtlStopPlan(this.ctx, 'fast'), 20_000);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'fast stop failed; stopping immediately');
      await runPlan(pgc.pgCtlStopPlan(this.ctx, 'immediate'), { allowFailure: true, timeoutMs: 20_000 });
    }
  }

  /** Demote and follow the peer: pg_rewind onto its timeline, else a fresh clone. */
  async rejoin(reason: string): Promise<void> {
    const { ctx } = this;
    this.log.info({ event: 'rejoin' }, `rejoining as standby: ${reason}`);
    if (ctx.config.vip.enabled) await dropVip(this.vip);
    await this.stopPg();
    let peerGeneration = this.meta.generation;
    const p = await probePeerApi(ctx);
    if (p) peerGeneration = Math.max(peerGeneration, p.generation);
    try {
      await pgc.run(pgc.rewindPlan(ctx), 10 * 60_000);
      await pgc.writeNodeConfig(ctx);
      await pgc.configureStandby(ctx);
      await this.startPg();
      this.log.info({ event: 'rejoin', method: 'pg_rewind' }, 'rewound onto the leader timeline');
    } catch (err) {
      this.log.warn({ event: 'rejoin', err: (err as Error).message.split('\n')[0] }, 'pg_rewind failed; cloning with pg_basebackup');
      await this.stopPg().catch(() => undefined);
      await this.cloneFromPeer('re-cloned from the leader');
    }
    await this.setRole('follower', reason, peerGeneration);
  }

  /** One round: observe, decide, act. */
  async tick(): Promise<void> {
    if (this.busy || this.switching) return;
    this.busy = true;
    try {
      const o = await this.observe();
      this.memory = remember(this.memory, o);
      this.snapshot.observation = o;
      const d = decide(this.memory, o, this.timings);
      if (d.reason !== this.snapshot.lastDecision) this.log.debug({ event: 'decision', reason: d.reason, role: this.role }, d.reason);
      this.snapshot.lastDecision = d.reason;
      for (const action of d.actions) await this.execute(action, d.transition?.reason ?? d.reason);
      if (d.transition && this.role !== d.transition.to && !d.actions.some((a) => a.kind === 'promote' || a.kind === 'rejoin' || a.kind === 'fence' || a.kind === 'unfence')) {
        await this.setRole(d.transition.to, d.transition.reason);
      }
      this.snapshot.lastRoundOkAt = performance.now();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'round failed');
    } finally {
      this.busy = false;
    }
  }

  private async observe(): Promise<Observation> {
    const { ctx } = this;
    const wantLease = this.timings.leaseWitness && (this.role === 'leader' || this.role === 'fenced' || this.role === 'follower');
    // A follower asks for the lease only once the leader is silent long enough to promote.
    const followerWants = this.role === 'follower' && performance.now() - this.memory.peerSeenAt >= this.timings.promoteAfter;
    const [pg, peerApi, peerPg, peerIcmp, witness, held, checks] = await Promise.all([
      pgc.localStatus(ctx),
      probePeerApi(ctx),
      probePeerPg(ctx),
      probeIcmp(ctx.peer.ip, ctx.spec.failover.checkTimeout),
      probeWitness(ctx, wantLease && (this.role !== 'follower' || followerWants)),
      ctx.config.vip.enabled ? vipHeld(this.vip) : Promise.resolve(this.role === 'leader'),
      runUserChecks(ctx.config.checksDir, ctx.spec.failover.checkTimeout),
    ]);
    this.snapshot.userChecks = checks;
    if (witness.leaseHeld && witness.leaseDeadline) this.leaseDeadline = witness.leaseDeadline;
    const now = performance.now();
    const leaseHeld = this.timings.leaseWitness ? now < this.leaseDeadline : undefined;
    return {
      now,
      pg,
      peerApi,
      peerPgOk: peerPg.ok,
      peerIcmpOk: peerIcmp,
      peerPgIsPrimary: peerPg.primary,
      peerPgSaysOurSyncState: peerPg.ourSyncState,
      // For a lease witness the leader counts the witness as reachable only while it holds the lease.
      witnessOk: this.timings.leaseWitness && (this.role === 'leader' || followerWants) ? Boolean(leaseHeld) : witness.ok,
      leaseHeld,
      vipHeld: held,
    };
  }

  private async execute(action: Action, reason: string): Promise<void> {
    const { ctx } = this;
    this.log.info({ event: 'action', action: action.kind, role: this.role }, `${action.kind}: ${reason}`);
    switch (action.kind) {
      case 'promote': {
        await pgc.promote(ctx);
        await pgc.setSyncStandby(ctx, this.timings.syncPolicy === 'strict' ? quoteName(ctx.peer.name) : '');
        this.memory.degraded = this.timings.syncPolicy === 'degrade';
        await pgc.ensurePeerSlot(ctx).catch(() => undefined);
        if (ctx.config.vip.enabled) await takeVip(this.vip);
        const st = await pgc.localStatus(ctx);
        await this.setRole('leader', reason, this.meta.generation + 1, st.timeline);
        await this.restartKubernetes();
        return;
      }
      case 'fence':
        // Stop accepting writes first, then give up the address clients use.
        await runPlan(pgc.pgCtlStopPlan(ctx, 'immediate'), { allowFailure: true, timeoutMs: 10_000 });
        if (ctx.config.vip.enabled) await dropVip(this.vip);
        await this.setRole('fenced', reason);
        return;
      case 'unfence':
        await pgc.removeStandbySignal(ctx);
        await this.startPg();
        if (ctx.config.vip.enabled) await takeVip(this.vip);
        await this.setRole('leader', reason);
        return;
      case 'rejoin':
        await this.rejoin(reason);
        return;
      case 'degrade':
        await pgc.setSyncStandby(ctx, '');
        this.memory.degraded = true;
        this.log.warn({ event: 'degrade' }, 'synchronous replication off: the standby is lost and the witness is reachable (syncPolicy degrade)');
        return;
      case 'restoreSync':
        await pgc.ensurePeerSlot(ctx);
        await pgc.setSyncStandby(ctx, quoteName(ctx.peer.name));
        this.memory.degraded = false;
        this.log.info({ event: 'restoreSync' }, 'standby caught up: synchronous replication on');
        return;
      case 'takeVip':
        if (ctx.config.vip.enabled) await takeVip(this.vip);
        return;
      case 'dropVip':
        if (ctx.config.vip.enabled) await dropVip(this.vip);
        return;
      case 'restartPostgres':
        this.memory.pgRestarts++;
        await this.startPg();
        return;
      case 'startAsFollower':
        if (!existsSync(join(ctx.config.postgresql.dataDir, 'standby.signal'))) await pgc.configureStandby(ctx);
        await this.startPg();
        return;
    }
  }

  /** After a promotion that may have lost data, Kine and K3s must reconnect: restart them. */
  private async restartKubernetes(): Promise<void> {
    const { config } = this.ctx;
    if (!config.kubernetes.enabled || config.serviceManager !== 'systemd') return;
    await runPlan({ cmd: 'systemctl', args: ['restart', config.kubernetes.kineUnit, config.kubernetes.k3sUnit] }, { allowFailure: true, timeoutMs: 60_000 });
  }

  /**
   * Planned switchover: stop writes, wait until the standby has replayed everything, stop,
   * hand the VIP and the primary role to the peer, then follow it. Zero loss by construction.
   */
  async switchover(timeoutMs = 5000): Promise<{ ok: boolean; reason: string; tookMs: number }> {
    const started = performance.now();
    if (this.role !== 'leader') return { ok: false, reason: `this node is ${this.role}, not leader`, tookMs: 0 };
    while (this.busy) await sleep(20);
    this.switching = true;
    const { ctx } = this;
    try {
      const st0 = await pgc.localStatus(ctx);
      if (st0.peerReplication?.state !== 'streaming') return { ok: false, reason: 'the standby is not streaming', tookMs: 0 };
      await pgc.setReadOnly(ctx, true);
      // A checkpoint-free shutdown record is the last WAL; wait for the standby to replay our position.
      let st = await pgc.localStatus(ctx);
      while (!(st.peerReplication && st.lsn && st.peerReplication.replayLsn && lsnToBigInt(st.peerReplication.replayLsn) >= lsnToBigInt(st.lsn))) {
        if (performance.now() - started > timeoutMs) {
          await pgc.setReadOnly(ctx, false);
          return { ok: false, reason: 'the standby did not catch up in time; writes resumed here', tookMs: performance.now() - started };
        }
        await sleep(50);
        st = await pgc.localStatus(ctx);
      }
      const target = st.lsn!;
      await this.stopPg();
      if (ctx.config.vip.enabled) await dropVip(this.vip);
      const res = await fetch(`http://${ctx.peer.ip}:${ctx.peerApiPort}/v1/promote`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ctx.secrets.agentToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ lsn: target, generation: this.meta.generation + 1 }),
        signal: AbortSignal.timeout(15_000),
      });
      if (res.status !== 200) throw new Error(`peer refused to promote: ${res.status} ${await res.text()}`);
      await pgc.setAutoConf(ctx, { default_transaction_read_only: 'off' });
      await pgc.configureStandby(ctx);
      await this.startPg();
      await this.setRole('follower', 'planned switchover', this.meta.generation + 1);
      return { ok: true, reason: 'switched over', tookMs: performance.now() - started };
    } finally {
      this.switching = false;
    }
  }

  /** The peer asked us to take over in a switchover: promote once we replayed its last LSN. */
  async promoteOnRequest(lsn: string, generation: number): Promise<{ ok: boolean; reason: string }> {
    if (this.role !== 'follower') return { ok: false, reason: `this node is ${this.role}` };
    while (this.busy) await sleep(20);
    this.switching = true;
    try {
      const st = await pgc.localStatus(this.ctx);
      if (!st.lsn || lsnToBigInt(st.lsn) < lsnToBigInt(lsn)) return { ok: false, reason: `replayed ${st.lsn}, need ${lsn}` };
      await pgc.promote(this.ctx);
      await pgc.setSyncStandby(this.ctx, quoteName(this.ctx.peer.name));
      await pgc.ensurePeerSlot(this.ctx).catch(() => undefined);
      if (this.ctx.config.vip.enabled) await takeVip(this.vip);
      const after = await pgc.localStatus(this.ctx);
      this.memory.peerSeenAt = performance.now();
      await this.setRole('leader', 'planned switchover', Math.max(generation, this.meta.generation + 1), after.timeline);
      await this.restartKubernetes();
      return { ok: true, reason: 'promoted' };
    } finally {
      this.switching = false;
    }
  }

  /**
   * One round of A/B boot counting: read the boot state and, while this boot is a try, run
   * the health gate and bless, wait or reboot (docs/boot-slots.md).
   */
  async bootRound(): Promise<void> {
    const { config } = this.ctx;
    const settings = bootSettings(config);
    const state = await readBootState(settings);
    const previous = this.snapshot.boot;
    if (!previous || previous.state !== state.state || previous.detail !== state.detail) {
      this.log.info({ event: 'boot', state: state.state, booted: state.booted, active: state.active, trySlot: state.trySlot, tryCount: state.tryCount }, `boot ${state.state}: ${state.detail}`);
    }
    if (state.state !== 'trying') {
      this.bootGate.healthySince = undefined;
      this.snapshot.boot = state;
      return;
    }
    const now = performance.now();
    const k3s = config.kubernetes.enabled ? await probeK3sReady(Math.max(this.timings.checkTimeout, 5000)) : undefined;
    const d = blessDecision({
      state: state.state, now, sinceBootMs: uptime() * 1000, healthySince: this.bootGate.healthySince,
      blessAfterMs: settings.blessAfterMs, trialTimeoutMs: settings.trialTimeoutMs, role: this.role,
      lastRoundAgeMs: this.snapshot.lastRoundOkAt === undefined ? undefined : now - this.snapshot.lastRoundOkAt,
      maxRoundAgeMs: 3 * this.timings.checkInterval + this.timings.checkTimeout,
      observation: this.snapshot.observation, kubernetes: config.kubernetes.enabled, k3sReady: k3s?.ready,
    });
    this.bootGate.healthySince = d.healthySince;
    this.snapshot.boot = {
      ...state,
      gate: { action: d.action, ok: d.gate.ok, reason: d.gate.reason, healthyForMs: d.healthySince === undefined ? 0 : Math.round(now - d.healthySince),
        blessAfterMs: settings.blessAfterMs, trialTimeoutMs: settings.trialTimeoutMs, ...(k3s ? { k3s: k3s.detail } : {}) },
    };
    // Log when the gate's verdict changes, not every round.
    const key = `${d.action}|${d.gate.ok}|${d.gate.reason}`;
    if (key !== this.bootGate.logged) {
      this.bootGate.logged = key;
      const fields = { event: 'boot-gate', action: d.action, slot: state.booted, gateOk: d.gate.ok, reason: d.reason };
      if (d.gate.ok || d.action !== 'wait') this.log.info(fields, d.reason);
      else this.log.warn(fields, `not blessing slot ${state.booted}: ${d.reason}`);
    }
    if (d.action === 'bless') {
      const r = await bless(settings);
      this.log.info({ event: 'bless', slot: state.booted, changed: r.changed, changes: describeChanges(r.changes) }, r.reason);
      this.snapshot.boot = r.after;
      return;
    }
    if (d.action === 'reboot') await this.rebootForTry(d.reason);
  }

  private async rebootForTry(reason: string): Promise<void> {
    const now = performance.now();
    // One request is enough; ask again only if the node is still up minutes later.
    if (this.bootGate.rebootAt !== undefined && now - this.bootGate.rebootAt < 5 * 60_000) return;
    this.bootGate.rebootAt = now;
    if (this.ctx.config.serviceManager !== 'systemd') {
      this.log.warn({ event: 'boot-reboot', reason, skipped: true }, 'would reboot for the next boot try, but services are not managed by systemd here');
      return;
    }
    this.log.warn({ event: 'boot-reboot', reason }, `rebooting: ${reason}`);
    await runPlan(rebootPlan(), { timeoutMs: 60_000 });
  }

  /** The boot-counting loop, beside the failover loop so a slow K3s probe never delays failover. */
  private async bootLoop(): Promise<void> {
    const every = Math.max(this.timings.checkInterval, 5000);
    let failed: string | undefined;
    while (!this.stopped) {
      const started = performance.now();
      if (!this.switching) {
        try {
          await this.bootRound();
          failed = undefined;
        } catch (err) {
          const message = (err as Error).message;
          if (message !== failed) this.log.error({ event: 'boot', err: message }, 'boot round failed');
          failed = message;
        }
      }
      await sleep(Math.max(0, every - (performance.now() - started)));
    }
  }

  async run(onTick?: () => void): Promise<void> {
    void this.bootLoop();
    while (!this.stopped) {
      const started = performance.now();
      await this.tick();
      onTick?.();
      await sleep(Math.max(0, this.timings.checkInterval - (performance.now() - started)));
    }
  }

  stop(): void {
    this.stopped = true;
  }
}

/** synchronous_standby_names takes application names; quote them as identifiers. */
export function quoteName(name: string): string {
  return `"${name}"`;
}
