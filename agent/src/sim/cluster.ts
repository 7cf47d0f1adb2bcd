import { LINGER_MS } from '#common/httpclient.ts';
import { ClusterSpecSchema } from '#common/schema/cluster.ts';
import type { HostMeta } from '#common/schema/hostmeta.ts';
import { AGENT_STOP_TIMEOUT_SEC } from '#common/render/paths.ts';
import { Controller, PING_EVERY_MS, watchdogMs } from '../core/controller.ts';
import type { Observation } from '../core/rules.ts';
import { PROMOTE_TIMEOUT_MS, type ControllerSettings, type LogPort, type PeerView, type Ports } from '../core/ports.ts';
import type { ArbiterRecord } from '../witness/arbiter.ts';
import { lingers } from '../witness/http.ts';
import { WitnessService } from '../witness/service.ts';
import { replicate, SimPostgres, simPgPort } from './pg.ts';
import { RpcError, Rng, settle, SimProcess, World } from './world.ts';

/** The failover timings `geminik8s init` writes (the schema's defaults), in milliseconds. */
export const INIT_TIMINGS = ClusterSpecSchema.shape.failover.parse(undefined);

/** The failover section of cluster.yaml, in milliseconds. */
export type Timings = typeof INIT_TIMINGS;

export interface SimOptions {
  seed: number;
  syncPolicy?: 'degrade' | 'strict';
  maxDrift?: number;
  /** Probability a pg_rewind fails and the node re-clones. */
  rewindFailure?: number;
  /** Keep this many trace lines for a violation report. */
  traceLines?: number;
  /** Kine and K3s cannot be restarted (their units missing or failing): the restart rejects. */
  kubeFails?: boolean;
  /** How many of a node's VIP takes fail (`ip` exiting non-zero) before they succeed again. */
  vipTakeFailures?: number;
  /** Whether a VIP drop leaves the address refusing connections (VipPort.refusesAfterDrop); by default, by seed and node. */
  refusesAfterDrop?: boolean;
  /** A stopping agent neither hands over (a leader) nor tells its leader (a follower), as agents before either: for comparison. */
  noLeave?: boolean;
  /** Failover timings other than init's (to measure a trade-off; validation's rules are not applied). */
  timings?: Partial<Timings>;
}

export interface Violation {
  at: number;
  what: string;
}

/** One simulated node: the agent process, its PostgreSQL, its durable hostmeta and its share of the VIP. */
export class SimNode {
  readonly proc: SimProcess;
  readonly pg: SimPostgres;
  hostmeta?: HostMeta;
  diskFull = false;
  vip = false;
  /** VIP takes that failed so far (SimOptions.vipTakeFailures). */
  vipTakeFailures = 0;
  controller?: Controller;
  lastHeartbeat = 0;
  /** The last watchdog check that found the agent frozen (paused). */
  lastFrozenAt = -Infinity;
  /** The unit is stopping: systemd no longer watches it. */
  watchdogOff = false;
  /** While the unit stops: when systemd kills the agent (TimeoutStopSec, pushed back by EXTEND_TIMEOUT_USEC). */
  stopDeadline?: number;
  /** The reboot after that stop, as cleanStop was asked for it. */
  stopBootAfter?: number;
  restarts = 0;
  rejoins: string[] = [];
  /** Restarts of Kine and K3s the agent asked for (after promotions), and what it logged when one failed. */
  kubeRestarts = 0;
  kubeRestartFailures: string[] = [];
  constructor(readonly name: string, world: World) {
    this.proc = new SimProcess(name);
    this.pg = new SimPostgres(name, world, this.proc);
  }
}

const quiet: LogPort = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };

/**
 * The whole system under simulation: two agents and the witness with their real code, a
 * PostgreSQL model per node, a client writing through the VIP, and the invariants checked
 * after every event.
 */
export class SimCluster {
  readonly world: World;
  readonly rng: Rng;
  readonly nodes: [SimNode, SimNode];
  readonly witnessProc = new SimProcess('witness');
  readonly clientProc = new SimProcess('client');
  witnessRecord?: ArbiterRecord;
  witnessDiskFull = false;
  witness?: WitnessService;
  /** The witness's last lease tag (WitnessDeps.leaseTag), over restarts. */
  private leaseTags = 0;
  readonly violations: Violation[] = [];
  readonly acked: number[] = [];
  private nextWrite = 1;
  /**
   * Writes sent before an operator's forced failover was granted may be lost: the operator
   * accepted that (`failover --force --accept-data-loss`). None sent after it may be.
   */
  private forcedBelow = 0;
  private lastGeneration = 0;
  private readonly nodeGenerations = new Map<string, number>();
  private checked = { primary: '', version: -1, acked: -1 };
  readonly settings: Omit<ControllerSettings, 'self' | 'peer' | 'isBootstrapLeader'>;
  /** Writes acknowledged per second of virtual time (for stall measurements). */
  readonly ackTimes: number[] = [];
  /** Longest gap between acknowledged writes while the client kept trying. */
  writable: Record<string, number> = {};
  /** Watchdog kills of an agent that was not frozen: a liveness cost, not a safety violation. */
  readonly needlessKills: { node: string; at: number }[] = [];
  /** Called right after a node's promotion completes: used by scenarios to crash there. */
  onPromoted?: (node: SimNode) => void;
  /** Called with each round a node's controller publishes (what its /v1/status shows). */
  onRound?: (node: SimNode, o: Observation) => void;

  constructor(readonly opts: SimOptions) {
    this.rng = new Rng(opts.seed);
    this.world = new World(this.rng);
    this.world.traceLimit = opts.traceLines ?? 300;
    this.nodes = [new SimNode('n1', this.world), new SimNode('n2', this.world)];
    this.settings = { cluster: 'sim', ...INIT_TIMINGS, ...opts.timings, syncPolicy: opts.syncPolicy ?? 'degrade', maxDrift: opts.maxDrift ?? 0.01 };
    const drift = this.settings.maxDrift;
    for (const p of [this.nodes[0].proc, this.nodes[1].proc, this.witnessProc]) {
      p.rate = 1 + this.rng.between(-drift, drift);
      p.offset = this.rng.between(0, 1e6);
    }
    for (const n of this.nodes) n.pg.onViolation = (what) => this.violate(what);
  }

  node(name: string): SimNode {
    return this.nodes.find((n) => n.name === name)!;
  }

  other(n: SimNode): SimNode {
    return n === this.nodes[0] ? this.nodes[1] : this.nodes[0];
  }

  violate(what: string): void {
    this.violations.push({ at: this.world.now, what });
    this.world.log(`VIOLATION ${what}`);
  }

  // ------------------------------------------------------------------ processes

  startWitness(): void {
    const w = this.witnessProc;
    w.alive = true;
    w.epoch++;
    const service = new WitnessService({
      // Counted over the whole run, so that a restarted witness does not repeat a tag (and the
      // seed's random draws stay as they were).
      leaseTag: () => ++this.leaseTags,
      store: {
        load: () => new Promise((resolve) => this.world.inProcess(w, 5, () => resolve(this.witnessRecord ? [{ ...this.witnessRecord }] : []))),
        save: (record) =>
          new Promise((resolve, reject) =>
            this.world.inProcess(w, this.rng.between(1, 10), () => {
              if (this.witnessDiskFull) return reject(new Error('ENOSPC'));
              if (this.witnessRecord && record.generation < this.witnessRecord.generation) this.violate(`witness generation went down: ${this.witnessRecord.generation} -> ${record.generation}`);
              this.witnessRecord = { ...record };
              resolve();
            }),
          ),
      },
      now: () => this.world.localNow(w),
      audit: (_c, e) => {
        if (e.op === 'force' && e.code === 'forced') this.forcedBelow = this.nextWrite;
        this.world.log(`witness: ${e.op} ${e.node ?? ''} -> ${e.code} gen ${e.generation} holder ${e.holder} promotable ${e.promotable}`);
      },
    });
    this.witness = undefined;
    void service.load().then(() => {
      if (w.alive) this.witness = service;
    });
    this.world.log('witness: started');
  }

  crashWitness(): void {
    this.witnessProc.alive = false;
    this.witnessProc.epoch++;
    this.witness = undefined;
    this.world.log('witness: crashed');
  }

  startAgent(n: SimNode): void {
    n.proc.alive = true;
    n.proc.epoch++;
    n.proc.pausedUntil = 0;
    n.lastHeartbeat = this.world.now;
    n.watchdogOff = false;
    n.stopDeadline = undefined;
    const c = new Controller(this.ports(n), { ...this.settings, self: n.name, peer: this.other(n).name, isBootstrapLeader: n === this.nodes[0] });
    n.controller = c;
    c.onRound = (o) => this.onRound?.(n, o);
    this.world.log(`${n.name} agent: started (hostmeta ${n.hostmeta ? `${n.hostmeta.role} gen ${n.hostmeta.generation}` : 'none'})`);
    const epoch = n.proc.epoch;
    c.start().catch((err: Error) => {
      if (n.proc.epoch !== epoch) return;
      // main() exits non-zero; systemd's Restart=always (RestartSec=2) starts the agent again.
      this.world.log(`${n.name} agent: start failed: ${err.message}`);
      this.crashAgent(n, 'exited after a failed start', 2000);
    });
  }

  /**
   * The agent dies; systemd stops PostgreSQL with it (BindsTo=), the unit's ExecStopPost drops
   * the VIP, and Restart= brings the agent back later.
   */
  crashAgent(n: SimNode, why: string, restartAfter?: number): void {
    if (!n.proc.alive) return;
    n.controller?.stop();
    n.proc.alive = false;
    n.proc.epoch++;
    n.controller = undefined;
    n.pg.halt(`agent ${why}`);
    n.vip = false;
    this.world.log(`${n.name} agent: ${why}`);
    if (restartAfter !== undefined) {
      n.restarts++;
      this.world.at(this.world.now + restartAfter, () => this.startAgent(n));
    }
  }

  /**
   * A clean stop (a reboot, an upgrade): systemd sends SIGTERM to the agent, whose shutdown
   * hands over (a leader) or tells its leader (a follower): Controller.shutdown. PostgreSQL's
   * unit is ordered Before= the agent's, so the server stops once the agent has exited; then
   * ExecStopPost drops the VIP, and the node boots again after `bootAfter`. `pgStopsAfter` (ms
   * after SIGTERM) stops the server on its own schedule as well, as units without that ordering
   * did (an image being upgraded from may have them).
   */
  cleanStop(n: SimNode, bootAfter?: number, pgStopsAfter?: number): void {
    const c = n.controller;
    if (!n.proc.alive || !c) return;
    const epoch = n.proc.epoch;
    this.world.log(`${n.name}: clean stop (SIGTERM)${pgStopsAfter === undefined ? '' : `, PostgreSQL stopping ${pgStopsAfter.toFixed(0)} ms later whatever the agent does`}`);
    if (pgStopsAfter !== undefined) {
      this.world.at(this.world.now + pgStopsAfter, () => {
        if (n.controller === undefined || n.controller === c) n.pg.halt('stopped beside the agent');
      });
    }
    // systemd stops the unit's watchdog once it leaves "running": not a frozen agent, a stopping one.
    // It kills the agent once TimeoutStopSec has passed instead, which the agent's SIGTERM handler
    // and its interval push back (EXTEND_TIMEOUT_USEC, agent/src/main.ts) while Controller.maySignalLife.
    n.watchdogOff = true;
    const reboot = bootAfter === undefined ? undefined : Math.max(bootAfter, (pgStopsAfter ?? 0) + 1);
    n.stopDeadline = this.world.now + AGENT_STOP_TIMEOUT_SEC * 1000;
    n.stopBootAfter = reboot;
    const extend = (): void => {
      if (n.proc.epoch !== epoch) return;
      if (c.maySignalLife()) n.stopDeadline = Math.max(n.stopDeadline ?? 0, this.world.now + watchdogMs(this.settings.fenceAfter));
      this.world.timer(n.proc, PING_EVERY_MS, extend);
    };
    this.world.timer(n.proc, 0, extend);
    const shutdown = this.opts.noLeave ? Promise.resolve(c.stop()) : c.shutdown();
    void shutdown.finally(() => {
      if (n.proc.epoch === epoch) this.crashAgent(n, 'stopped cleanly', reboot);
    });
  }

  /** Power loss: agent, PostgreSQL and the address are gone; the node boots again later. */
  powerOff(n: SimNode, bootAfter?: number): void {
    this.crashAgent(n, 'power loss');
    n.vip = false;
    if (bootAfter !== undefined) this.world.at(this.world.now + bootAfter, () => this.startAgent(n));
  }

  pauseAgent(n: SimNode, ms: number): void {
    if (!n.proc.alive) return;
    n.proc.pausedUntil = this.world.now + ms;
    this.world.log(`${n.name} agent: paused for ${ms.toFixed(0)} ms`);
  }

  // ------------------------------------------------------------------ ports

  private ports(n: SimNode): Ports {
    const w = this.world;
    const peerNode = this.other(n);
    const proc = n.proc;
    const rpcTo = <T>(to: SimProcess, timeout: number, handler: () => Promise<T>, lingerMs = 0): Promise<T> => w.rpc(proc, to, timeout, handler, lingerMs);
    const timeout = this.settings.checkTimeout;
    return {
      clock: {
        now: () => w.localNow(proc),
        setTimer: (ms, fn) => w.timer(proc, ms, fn),
        sleep: (ms) => new Promise((r) => w.timer(proc, ms, r)),
      },
      pg: simPgPort(w, proc, n.pg, () => peerNode.pg, () => w.linkUp(n.name, peerNode.name) && w.linkUp(peerNode.name, n.name), { rewindFails: () => this.rng.chance(this.opts.rewindFailure ?? 0.05) }),
      peer: {
        status: () =>
          rpcTo(peerNode.proc, timeout, async (): Promise<PeerView | undefined> => {
            const c = peerNode.controller;
            if (!c?.meta) throw new RpcError('not ready');
            return { role: c.meta.role, generation: c.meta.generation, timeline: peerNode.pg.running ? peerNode.pg.timeline : undefined, pgPrimary: peerNode.pg.primary };
          }, LINGER_MS).catch(() => undefined),
        pg: async () => {
          const there = w.transit(n.name, peerNode.name);
          const back = w.transit(peerNode.name, n.name);
          await new Promise((r) => w.timer(proc, (there ?? timeout) + (back ?? 0), () => r(undefined)));
          if (there === undefined || back === undefined || !peerNode.pg.running) return { ok: false };
          return { ok: true, primary: peerNode.pg.primary };
        },
        promote: (req) =>
          rpcTo(peerNode.proc, PROMOTE_TIMEOUT_MS, async () => {
            const c = peerNode.controller;
            if (!c?.meta) return { ok: false, reason: 'agent starting' };
            const r = await c.promoteOnRequest(req);
            return r;
          }),
        leave: (req, timeoutMs) =>
          rpcTo(peerNode.proc, timeoutMs, async () => {
            const c = peerNode.controller;
            if (!c?.meta) return { ok: false, reason: 'agent starting' };
            return c.standbyLeaving(req);
          }),
      },
      witness: {
        call: (req) =>
          rpcTo(this.witnessProc, timeout, async () => {
            if (!this.witness) throw new RpcError('witness starting');
            return this.witness.handle('sim', req);
          }, lingers(req) ? LINGER_MS : 0),
      },
      vip: {
        // Both ways a switchover drops the address (with the server's stop, or after it), by
        // seed and node and without a draw, so that a seed's other draws stay as they were.
        refusesAfterDrop: this.opts.refusesAfterDrop ?? (this.opts.seed + this.nodes.indexOf(n)) % 2 === 0,
        held: () => new Promise((r) => w.inProcess(proc, 1, () => r(n.vip))),
        take: () =>
          new Promise((r, reject) =>
            w.inProcess(proc, w.rng.between(1, 20), () => {
              if (n.vipTakeFailures < (this.opts.vipTakeFailures ?? 0)) {
                n.vipTakeFailures++;
                w.log(`${n.name}: VIP take failed`);
                reject(new Error('command failed with exit code 2: ip addr replace'));
                return;
              }
              if (!n.vip) w.log(`${n.name}: VIP taken`);
              n.vip = true;
              r();
            }),
          ),
        drop: () =>
          new Promise((r) =>
            w.inProcess(proc, w.rng.between(1, 20), () => {
              if (n.vip) w.log(`${n.name}: VIP dropped`);
              n.vip = false;
              r();
            }),
          ),
      },
      state: {
        read: () => new Promise((r) => w.inProcess(proc, 1, () => r(n.hostmeta ? { ...n.hostmeta } : undefined))),
        write: (meta) =>
          new Promise((resolve, reject) =>
            w.inProcess(proc, w.rng.between(1, 10), () => {
              if (n.diskFull) return reject(new Error('ENOSPC: no space left on device'));
              const before = this.nodeGenerations.get(n.name) ?? 0;
              if (meta.generation < before) this.violate(`${n.name}: hostmeta generation went down ${before} -> ${meta.generation}`);
              this.nodeGenerations.set(n.name, meta.generation);
              if (!n.hostmeta || n.hostmeta.role !== meta.role) w.log(`${n.name} hostmeta: ${meta.role} gen ${meta.generation} (${meta.lastTransition.reason})`);
              n.hostmeta = { ...meta };
              resolve();
            }),
          ),
      },
      kube: {
        restart: () =>
          new Promise((resolve, reject) =>
            w.inProcess(proc, 10, () => {
              n.kubeRestarts++;
              if (this.opts.kubeFails) reject(new Error('Failed to restart kine.service: Unit kine.service not found.'));
              else resolve();
            }),
          ),
        stop: () => new Promise((r) => w.inProcess(proc, 10, r)),
      },
      log: {
        ...quiet,
        warn: (f, msg) => {
          if (f.event === 'rejoin' && typeof f.method === 'string') n.rejoins.push(f.method);
          if (f.event === 'kube-restart') n.kubeRestartFailures.push(msg);
          w.log(`${n.name} agent: ${msg}`);
        },
        error: (_f, msg) => w.log(`${n.name} agent: ERROR ${msg}`),
        info: (f, msg) => {
          if (f.event === 'transition' || f.event === 'promoted' || f.event === 'promotable' || f.event === 'restoreSync' || f.event === 'bootstrap') w.log(`${n.name} agent: ${msg}`);
          if (f.event === 'promoted') this.onPromoted?.(n);
        },
      },
      heartbeat: () => {
        n.lastHeartbeat = w.now;
      },
    };
  }

  // ------------------------------------------------------------------ client and background

  /** The client writes sequential ids through the VIP; with no VIP holder it tries each node (multi-host DSN). */
  private clientWrite(): void {
    const holders = this.nodes.filter((n) => n.vip);
    const target = holders.length > 0 ? this.rng.pick(holders) : this.rng.pick(this.nodes);
    const id = this.nextWrite++;
    const there = this.world.transit('client', target.name);
    if (there === undefined) return;
    this.world.inProcess(this.clientProc, there, () => {
      target.pg.write(id).then(
        () => {
          const back = this.world.transit(target.name, 'client');
          if (back === undefined) return;
          this.world.inProcess(this.clientProc, back, () => {
            this.acked.push(id);
            this.ackTimes.push(this.world.now);
          });
        },
        () => undefined,
      );
    });
  }

  private background(until: number): void {
    const w = this.world;
    const tick = (): void => {
      if (w.now > until) return;
      replicate(w, this.nodes[0].pg, this.nodes[1].pg);
      w.at(w.now + 20, tick);
    };
    tick();
    const client = (): void => {
      if (w.now > until) return;
      this.clientWrite();
      w.at(w.now + this.rng.between(30, 150), client);
    };
    w.at(3000, client);
    // systemd's watchdog (WATCHDOG_USEC = fenceAfter / 2): a silent agent is killed, PostgreSQL with it.
    const watchdog = (): void => {
      if (w.now > until) return;
      for (const n of this.nodes) {
        if (n.proc.pausedUntil > w.now) n.lastFrozenAt = w.now;
        if (n.proc.alive && n.stopDeadline !== undefined && w.now > n.stopDeadline) {
          this.crashAgent(n, 'killed at its stop timeout (TimeoutStopSec, no EXTEND_TIMEOUT_USEC in time)', n.stopBootAfter);
          continue;
        }
        if (n.proc.alive && !n.watchdogOff && w.now - n.lastHeartbeat > watchdogMs(this.settings.fenceAfter)) {
          // A frozen agent is what the watchdog is for; one whose timers ran all through its
          // silence was killed for nothing.
          const needless = n.lastFrozenAt < n.lastHeartbeat;
          if (needless) this.needlessKills.push({ node: n.name, at: w.now });
          this.crashAgent(n, `killed by the watchdog${needless ? ' (it was not frozen)' : ''}`, this.rng.between(500, 3000));
        }
      }
      w.at(w.now + 100, watchdog);
    };
    w.at(100, watchdog);
  }

  // ------------------------------------------------------------------ invariants

  check(): void {
    const writable = this.nodes.filter((n) => n.pg.writable);
    if (writable.length > 1) this.violate('two nodes accept writes at the same instant');
    if (this.nodes.filter((n) => n.vip).length > 1) this.violate('the VIP is on two nodes');
    const rec = this.witnessRecord;
    if (rec) {
      if (rec.generation < this.lastGeneration) this.violate(`generation went down ${this.lastGeneration} -> ${rec.generation}`);
      this.lastGeneration = rec.generation;
    }
    const p = writable[0];
    if (p && (p.name !== this.checked.primary || p.pg.version !== this.checked.version || this.acked.length !== this.checked.acked)) {
      const missing = this.acked.filter((id) => id >= this.forcedBelow && !p.pg.ids.has(id));
      if (missing.length > 0) this.violate(`${missing.length} acknowledged write(s) missing from primary ${p.name} (first ${missing.slice(0, 5).join(', ')})`);
      this.checked = { primary: p.name, version: p.pg.version, acked: this.acked.length };
    }
  }

  /** The pair is healthy: one writable leader under its lease, the other streaming synchronously. */
  healthy(): boolean {
    const [a, b] = this.nodes;
    const leader = a.pg.writable ? a : b.pg.writable ? b : undefined;
    if (!leader) return false;
    const f = this.other(leader);
    const st = leader.pg.status();
    return Boolean(leader.vip && f.pg.running && f.pg.standbySignal && st.standby?.syncState === 'sync' && leader.controller?.role === 'leader' && f.controller?.role === 'follower'
      && this.witnessRecord?.holder === leader.name && this.witnessRecord.promotable === f.name);
  }

  // ------------------------------------------------------------------ run

  /** Boot everything and run until `untilMs` of virtual time, checking invariants after every event. */
  async run(untilMs: number, stopWhen?: () => boolean): Promise<void> {
    const w = this.world;
    if (w.now === 0) {
      this.startWitness();
      for (const n of this.nodes) this.startAgent(n);
      this.background(Number.POSITIVE_INFINITY);
    }
    while (w.step(untilMs)) {
      await settle();
      this.check();
      if (this.violations.length > 0) return;
      if (stopWhen?.()) return;
    }
    w.now = Math.max(w.now, untilMs);
  }
}
