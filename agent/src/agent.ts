import { uptime } from 'node:os';
import type { Logger } from 'pino';
import { runPlan } from '#common/exec.ts';
import { bootSettings, upgradeSettings } from '#common/schema/agent.ts';
import type { HostMeta, Role } from '#common/schema/hostmeta.ts';
import { createClock } from './adapters/clock.ts';
import { createKubePort } from './adapters/kube.ts';
import { createLogPort } from './adapters/log.ts';
import { createPeerPort } from './adapters/peer.ts';
import { createPgPort } from './adapters/pg.ts';
import { createStatePort } from './adapters/state.ts';
import { createVipPort } from './adapters/vip.ts';
import { blessDecision, pairCheck, type BlessDecision, type GateInputs, type GateItem, type UserCheckResult, type UserChecksRun } from './bootgate.ts';
import { bless, describeChanges, readBootState, rebootPlan, type BootState } from './bootslot.ts';
import { rebootDecision } from './upgradeorder.ts';
import { currentBootId, noteTrialFailure, reconcileUpgradeFile, slotVersions, stageRollback, type RollbackResult, type UpgradeRecord } from './upgrade.ts';
import type { NodeContext } from './context.ts';
import type { TlsMaterial } from '#common/tls.ts';
import { Controller, type ForceResult } from './core/controller.ts';
import type { ControllerSettings, LeaveRequest, Ports, PromoteRequest } from './core/ports.ts';
import type { Observation } from './core/rules.ts';
import { probeK3sReady, runUserChecks } from './probes.ts';
import { httpWitnessPort } from './witness/http.ts';
import { finishInterruptedRestore } from './restorestate.ts';
import { MAX_TRANSITIONS, type TransitionEntry } from './statuspage.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The clock-rate drift the fencing margin allows (docs/failover.md, "Timing"). */
export const MAX_CLOCK_DRIFT = 0.01;

/** The A/B boot state and, while trying, the health gate's latest decision. */
export interface BootStatus extends BootState {
  /** The last staged upgrade and the bundles that failed here (upgrade.json, reconciled). */
  upgrade?: UpgradeRecord;
  /** What each slot holds, as far as this node knows. */
  slots?: Record<'A' | 'B', string | null>;
  gate?: { action: BlessDecision['action']; ok: boolean; reason: string; healthyForMs: number; blessAfterMs: number; trialTimeoutMs: number; k3s?: string };
}

/** One item of a health report (`GET /v1/check`). */
export interface HealthItem {
  name: string;
  ok: boolean;
  detail: string;
}

export interface HealthReport {
  node: string;
  role: Role;
  ok: boolean;
  checks: HealthItem[];
}

/** What the health gate and the status page read of the last round. */
export interface Snapshot {
  observation?: GateInputs['observation'] & { now?: number; vipHeld?: boolean };
  /** The controller's own last observation. */
  round?: Observation;
  /** The last run of `checks.d`; undefined until the first run has finished. */
  userChecks?: UserCheckResult[];
  /** Monotonic time the last run of `checks.d` finished. */
  userChecksAt?: number;
  lastDecision?: string;
  /** Monotonic time the last round of the loop completed without error. */
  lastRoundOkAt?: number;
  boot?: BootStatus;
}

/** The health gate's view of a round (the gate predates the ports; it reads this shape). */
export function gateObservation(o: Observation): NonNullable<Snapshot['observation']> {
  const s = o.pg.standby;
  return {
    now: o.now,
    vipHeld: o.vipHeld,
    pg: {
      up: o.pg.up, inRecovery: o.pg.inRecovery, readOnly: o.pg.readOnly, receiverStreaming: o.pg.receiverStreaming, error: o.pg.error,
      peerReplication: s ? { state: s.state, syncState: s.syncState, replayLsn: s.replayLsn === null ? null : String(s.replayLsn), flushLsn: s.flushLsn === null ? null : String(s.flushLsn) } : undefined,
    },
    peerApi: o.peer ? { role: o.peer.role, generation: o.peer.generation, timeline: o.peer.timeline, standbySyncState: o.peer.standbySyncState } : undefined,
    peerPgOk: o.peerPg.ok,
    peerPgSaysOurSyncState: undefined,
  };
}

/** The controller's settings from the seed. */
export function controllerSettings(ctx: NodeContext): ControllerSettings {
  const f = ctx.spec.failover;
  return {
    cluster: ctx.spec.name, self: ctx.self.name, peer: ctx.peer.name, isBootstrapLeader: ctx.isBootstrapLeader,
    checkInterval: f.checkInterval, checkTimeout: f.checkTimeout, fenceAfter: f.fenceAfter, promoteAfter: f.promoteAfter, degradeAfter: f.degradeAfter,
    syncPolicy: ctx.spec.postgresql.syncPolicy, maxDrift: MAX_CLOCK_DRIFT,
  };
}

/** Production ports: real PostgreSQL, HTTP peer and witness, ip/arping, hostmeta on disk, systemd. */
export function productionPorts(ctx: NodeContext, log: Logger, heartbeat: () => void): Ports {
  const logPort = createLogPort(log);
  const w = ctx.witness;
  if (w.kind !== 'lease' && w.kind !== 'none') {
    throw new Error(`witness type ${ctx.spec.witness.type} cannot arbitrate a failover (a probe cannot tell a dead leader from a cut one); use a lease witness or none`);
  }
  return {
    clock: createClock(),
    pg: createPgPort(ctx, logPort),
    peer: createPeerPort(ctx),
    witness: w.kind === 'lease' ? httpWitnessPort(w.url, ctx.secrets.witnessToken, ctx.spec.name, ctx.spec.failover.checkTimeout, () => ctx.tls) : undefined,
    vip: createVipPort(ctx),
    state: createStatePort(ctx),
    kube: createKubePort(ctx),
    log: logPort,
    heartbeat,
  };
}

/** The node agent's shell: the failover controller, the A/B boot gate, user checks and the API's view. */
export class Agent {
  readonly controller: Controller;
  readonly snapshot: Snapshot = {};
  /** The role changes this agent made since it started (the status page). */
  readonly transitions: TransitionEntry[] = [];
  private stopped = false;
  private readonly bootGate: { healthySince?: number; logged?: string; rebootAt?: number } = {};
  /** Set by main: called by the controller's guard timer, never by the loop. */
  heartbeat: () => void = () => undefined;
  /** Called with this node's new TLS material after a rotation (the API servers swap their context). */
  readonly tlsListeners: ((tls: TlsMaterial) => void)[] = [];

  constructor(readonly ctx: NodeContext, readonly log: Logger, ports?: Ports) {
    this.controller = new Controller(ports ?? productionPorts(ctx, log, () => this.heartbeat()), controllerSettings(ctx));
    this.controller.onTransition = (t) => {
      this.transitions.push({ ...t, node: ctx.self.name });
      if (this.transitions.length > MAX_TRANSITIONS) this.transitions.splice(0, this.transitions.length - MAX_TRANSITIONS);
    };
    this.controller.onRound = (o) => {
      this.snapshot.round = o;
      this.snapshot.observation = gateObservation(o);
      this.snapshot.lastDecision = this.controller.snapshot.decision;
      this.snapshot.lastRoundOkAt = performance.now();
    };
  }

  get meta(): HostMeta {
    return this.controller.meta;
  }

  set meta(m: HostMeta) {
    this.controller.meta = m;
  }

  /** Whether the agent may tell systemd it lives (Controller.maySignalLife). */
  maySignalLife(): boolean {
    return this.controller.maySignalLife();
  }

  get role(): Role {
    return this.controller.meta?.role ?? 'init';
  }

  get timings(): { checkInterval: number; checkTimeout: number } {
    return { checkInterval: this.ctx.spec.failover.checkInterval, checkTimeout: this.ctx.spec.failover.checkTimeout };
  }

  /** Reconcile and start the controller's timers (bootstraps on first start). */
  async init(): Promise<void> {
    await finishInterruptedRestore(this.ctx, (msg) => this.log.warn({ event: 'restore' }, msg));
    await this.controller.start();
  }

  switchover(): Promise<{ ok: boolean; reason: string; tookMs: number }> {
    return this.controller.switchover();
  }

  /**
   * Reboot into the staged slot when the pair allows it (`rebootDecision`): a leader hands over
   * to its synchronous standby first. The reboot is asked for after the answer has gone out.
   */
  async upgradeReboot(): Promise<{ ok: boolean; reason: string; retryable?: boolean; switchedOver: boolean }> {
    // Read the boot state now: a try armed a moment ago (stage, then reboot) is not in the
    // snapshot until the next boot round, and a stale "nothing staged" would be final.
    const settings = bootSettings(this.ctx.config);
    const boot = this.snapshot.boot?.state === 'trying' ? this.snapshot.boot : await readBootState(settings, { remember: false }).catch(() => this.snapshot.boot);
    const d = rebootDecision({ role: this.role, boot, peer: this.snapshot.round?.peer, standbySyncState: this.snapshot.round?.pg.standby?.syncState });
    if (d.action === 'refuse') {
      this.log.warn({ event: 'upgrade-reboot', refused: true, reason: d.reason }, `not rebooting into the staged slot: ${d.reason}`);
      return { ok: false, reason: d.reason, retryable: d.retryable, switchedOver: false };
    }
    let switchedOver = false;
    if (d.action === 'switchover') {
      const r = await this.controller.switchover();
      if (!r.ok) return { ok: false, reason: `the switchover before the reboot failed: ${r.reason}`, retryable: true, switchedOver: false };
      switchedOver = true;
    }
    const reason = switchedOver ? `switched over to ${this.ctx.peer.name}; rebooting into slot ${boot?.trySlot}` : d.reason;
    if (this.ctx.config.serviceManager !== 'systemd') {
      this.log.warn({ event: 'upgrade-reboot', reason, skipped: true }, 'would reboot into the staged slot, but services are not managed by systemd here');
    } else {
      this.log.warn({ event: 'upgrade-reboot', reason }, `rebooting: ${reason}`);
      setTimeout(() => void runPlan({ ...rebootPlan(), title: 'reboot into the staged slot' }, { timeoutMs: 60_000 }).catch((err: Error) => this.log.error({ event: 'upgrade-reboot', err: err.message }, 'reboot failed')), 500);
    }
    return { ok: true, reason, switchedOver };
  }

  /**
   * Roll back to the version the other slot holds (`stageRollback`), then reboot into it under
   * the same ordering as an upgrade. A refused reboot leaves the try armed: ask again through
   * /v1/upgrade/reboot.
   */
  async upgradeRollback(reason: string): Promise<{ ok: boolean; reason: string; rollback?: RollbackResult; reboot?: Awaited<ReturnType<Agent['upgradeReboot']>> }> {
    let rollback: RollbackResult;
    try {
      rollback = await stageRollback({ upgrade: upgradeSettings(this.ctx.config), boot: bootSettings(this.ctx.config), reason });
    } catch (err) {
      this.log.warn({ event: 'upgrade-rollback', refused: true, reason: (err as Error).message }, (err as Error).message);
      return { ok: false, reason: (err as Error).message };
    }
    this.log.warn({ event: 'upgrade-rollback', slot: rollback.slot, version: rollback.version, leaving: rollback.leaving, reason }, `rolling back to ${rollback.version} on slot ${rollback.slot}: ${reason}`);
    const reboot = await this.upgradeReboot();
    return { ok: true, reason: `slot ${rollback.slot} (${rollback.version}) armed; ${reboot.ok ? reboot.reason : `the reboot waits: ${reboot.reason}`}`, rollback, reboot };
  }

  /** An operator's forced failover onto this follower (see Controller.forcePromote). */
  forcePromote(generation: number): Promise<ForceResult> {
    return this.controller.forcePromote(generation);
  }

  promoteOnRequest(req: PromoteRequest): Promise<{ ok: boolean; generation?: number; reason: string }> {
    return this.controller.promoteOnRequest(req);
  }

  /** The peer's standby stops cleanly (see Controller.standbyLeaving). */
  standbyLeaving(req: LeaveRequest): Promise<{ ok: boolean; reason: string }> {
    return this.controller.standbyLeaving(req);
  }

  /**
   * One round of A/B boot counting: read the boot state and, while this boot is a try, run
   * the health gate and bless, wait or reboot (docs/boot-slots.md).
   */
  async bootRound(): Promise<void> {
    const { config } = this.ctx;
    const settings = bootSettings(config);
    const state: BootStatus = await readBootState(settings);
    const upgrade = await reconcileUpgradeFile(upgradeSettings(config).recordFile, state, await currentBootId(settings)).catch(() => undefined);
    if (upgrade) Object.assign(state, { upgrade, slots: slotVersions(state.booted, config.image.version, upgrade) });
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
    const witness = await this.witnessItem();
    const d = blessDecision({
      state: state.state, now, sinceBootMs: uptime() * 1000, healthySince: this.bootGate.healthySince,
      blessAfterMs: settings.blessAfterMs, trialTimeoutMs: settings.trialTimeoutMs, role: this.role,
      lastRoundAgeMs: this.snapshot.lastRoundOkAt === undefined ? undefined : now - this.snapshot.lastRoundOkAt,
      maxRoundAgeMs: 3 * this.timings.checkInterval + this.timings.checkTimeout,
      observation: this.snapshot.observation as GateInputs['observation'], kubernetes: config.kubernetes.enabled, k3sReady: k3s?.ready,
      witness: witness ?? 'none', userChecks: this.userChecksRun(now),
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
    if (d.action === 'reboot') await this.rebootForTry(d.reason, state.booted);
  }

  /**
   * The health gate of an upgrade's bless, run now whatever the boot state, with the witness and
   * each user check as their own items: what `geminik8s check` reports after a deployment.
   */
  async healthReport(): Promise<HealthReport> {
    const { config } = this.ctx;
    const now = performance.now();
    const checks: HealthItem[] = [];
    const gate = pairCheck({
      state: 'steady', now, sinceBootMs: uptime() * 1000, blessAfterMs: 0, trialTimeoutMs: 0, role: this.role,
      lastRoundAgeMs: this.snapshot.lastRoundOkAt === undefined ? undefined : now - this.snapshot.lastRoundOkAt,
      maxRoundAgeMs: 3 * this.timings.checkInterval + this.timings.checkTimeout,
      observation: this.snapshot.observation as GateInputs['observation'], kubernetes: false,
    });
    checks.push({ name: 'pair', ok: gate.ok, detail: gate.reason });
    checks.push({ name: 'witness', ...((await this.witnessItem()) ?? { ok: true, detail: 'none configured: failover is manual' }) });
    if (config.kubernetes.enabled) {
      const k3s = await probeK3sReady(Math.max(this.timings.checkTimeout, 5000));
      checks.push({ name: 'k3s', ok: k3s.ready, detail: k3s.ready ? 'K3s is ready (/readyz)' : `K3s is not ready: ${k3s.detail}` });
    }
    if (this.snapshot.userChecks === undefined) checks.push({ name: 'checks.d', ok: false, detail: 'the user checks have not run yet' });
    for (const c of this.snapshot.userChecks ?? []) checks.push({ name: `check:${c.name}`, ok: c.ok, detail: c.ok ? 'exited 0' : `failed${c.detail ? ` (${c.detail})` : ''}` });
    return { node: this.ctx.self.name, role: this.role, ok: checks.every((c) => c.ok), checks };
  }

  /**
   * The last run of `checks.d` for the gate. A run takes at most one timeout per check, and runs
   * start every checkInterval: older than three intervals and one more timeout, one hangs.
   */
  private userChecksRun(now: number): UserChecksRun | undefined {
    const { userChecks, userChecksAt } = this.snapshot;
    if (userChecks === undefined || userChecksAt === undefined) return undefined;
    return { results: userChecks, ageMs: now - userChecksAt, maxAgeMs: 3 * this.timings.checkInterval + (userChecks.length + 1) * this.timings.checkTimeout };
  }

  /**
   * The witness as the gate sees it: a leader must hold its lease, a follower must reach the
   * witness. Undefined when the cluster has none (failover is manual).
   */
  private async witnessItem(): Promise<GateItem | undefined> {
    const w = this.controller.ports.witness;
    if (!w) return undefined;
    const answer = await w.call({ op: 'read' }).catch((err: Error) => err);
    if (answer instanceof Error) return { ok: false, detail: `the witness does not answer: ${answer.message}` };
    if (this.role !== 'leader') return { ok: true, detail: `reachable; lease holder ${answer.holder ?? 'nobody'}` };
    const lease = this.controller.leaseInfo();
    if (!lease.held) return { ok: false, detail: 'this node is leader without a valid lease' };
    if (answer.holder !== this.ctx.self.name) return { ok: false, detail: `this node counts a lease of ${lease.msLeft} ms, but the witness names ${answer.holder ?? 'nobody'} as holder` };
    return { ok: true, detail: `this node holds the lease (${lease.msLeft} ms left); promotable ${answer.promotable ?? 'nobody'}` };
  }

  private async rebootForTry(reason: string, slot: BootState['booted']): Promise<void> {
    const now = performance.now();
    // One request is enough; ask again only if the node is still up minutes later.
    if (this.bootGate.rebootAt !== undefined && now - this.bootGate.rebootAt < 5 * 60_000) return;
    this.bootGate.rebootAt = now;
    // Why the try failed outlives the reboot: the fall-back is reported with it (upgrade status).
    await noteTrialFailure(upgradeSettings(this.ctx.config).recordFile, slot, reason).catch((err: Error) => this.log.warn({ event: 'upgrade', err: err.message }, 'could not record why the try failed'));
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
      if (!this.controller.snapshot.switching) {
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

  /** User checks and the boot gate; the controller runs on its own timers. Resolves on stop. */
  async run(): Promise<void> {
    void this.bootLoop();
    while (!this.stopped) {
      const started = performance.now();
      const results = await runUserChecks(this.ctx.config.checksDir, this.ctx.spec.failover.checkTimeout).catch(() => undefined);
      if (results) Object.assign(this.snapshot, { userChecks: results, userChecksAt: performance.now() });
      await sleep(Math.max(0, this.timings.checkInterval - (performance.now() - started)));
    }
  }

  stop(): void {
    this.stopped = true;
    this.controller.stop();
  }

  /**
   * A clean stop (SIGTERM: a reboot, an upgrade, `systemctl stop`): a leader hands over, a
   * follower tells its leader that its standby goes (Controller.shutdown); then the loops end.
   */
  async shutdown(): Promise<void> {
    // The agent's own loops (boot assessment, user checks) end at once, as before; the
    // controller's timers (the lease keeper above all) run until its shutdown, which stops them.
    this.stopped = true;
    await this.controller.shutdown();
  }
}

/** synchronous_standby_names takes application names; quote them as identifiers. */
export function quoteName(name: string): string {
  return `"${name}"`;
}
