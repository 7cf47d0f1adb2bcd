import type { HostMeta, Role } from '#common/schema/hostmeta.ts';
import type { ArbiterAnswer, ArbiterRequest } from '../witness/arbiter.ts';

/**
 * The agent's ports: everything the control loop does to the world goes through one of these.
 * Production wires real adapters (agent/src/adapters); the simulator (agent/src/sim) wires
 * virtual time, a PostgreSQL model, a lossy network and crashes.
 */

/** Monotonic time and timers. */
export interface ClockPort {
  /** Monotonic milliseconds on this node's clock. */
  now(): number;
  setTimer(ms: number, fn: () => void): TimerHandle;
  sleep(ms: number): Promise<void>;
}
export interface TimerHandle {
  cancel(): void;
}

/** What the local server says about itself. */
export interface PgStatus {
  up: boolean;
  inRecovery?: boolean;
  /** Primary: current insert LSN; standby: last replayed LSN. Bytes. */
  lsn?: bigint;
  timeline?: number;
  /** Standby: the WAL receiver is streaming. */
  receiverStreaming?: boolean;
  /** Primary: the peer as seen in pg_stat_replication. */
  standby?: { state: string; syncState: string; flushLsn: bigint | null; replayLsn: bigint | null };
  /** The setting in force (not what the agent last asked for). */
  synchronousStandbyNames?: string;
  readOnly?: boolean;
  /** Primary: backends waiting for a synchronous standby's acknowledgement. */
  syncWaiters?: number;
  error?: string;
}

/** Facts of the data directory on disk, readable whether the server runs or not. */
export interface PgDiskFacts {
  /** A complete data directory exists (PG_VERSION, and no unfinished bootstrap). */
  hasData: boolean;
  /** The server starts as a standby: standby.signal exists, or a promotion died midway (the adapter's start puts the file back). */
  standbySignal: boolean;
}

/** follow: no divergence, started as the peer's standby as it is; pg_rewind; pg_basebackup: a fresh clone. */
export type RejoinMethod = 'follow' | 'pg_rewind' | 'pg_basebackup';

/** The local PostgreSQL. Every method throws on failure. */
export interface PgPort {
  status(): Promise<PgStatus>;
  disk(): Promise<PgDiskFacts>;
  /** Start with the data directory as it is (primary or standby by standby.signal). */
  start(): Promise<void>;
  /** Clean shutdown (checkpoint), falling back to immediate. */
  stop(): Promise<void>;
  /** Stop accepting writes now: immediate shutdown. Resolves once the server no longer runs. */
  fence(): Promise<void>;
  promote(): Promise<void>;
  setSyncStandby(names: string): Promise<void>;
  setReadOnly(on: boolean): Promise<void>;
  /** A CHECKPOINT on the running server, so that a shutdown right after it has little left to write. */
  checkpoint(): Promise<void>;
  /** Bootstrap leader: initdb, settings, roles, Kine's database, the peer's slot. Leaves the server running. */
  initPrimary(syncStandbyNames: string): Promise<void>;
  /** Make the (stopped) data directory a standby of the peer. Refuses while a primary runs. */
  configureStandby(): Promise<void>;
  /** Stopped data directory onto the peer's timeline: as it is when its WAL is a prefix of the peer's, else pg_rewind, else a fresh clone. Leaves it stopped, configured as standby. */
  rejoin(): Promise<RejoinMethod>;
  /** Fresh clone of the peer (first boot of the follower). Leaves it stopped, configured as standby. */
  clone(): Promise<void>;
  ensurePeerSlot(): Promise<void>;
}

/** What the peer's agent reports about itself. */
export interface PeerView {
  role: Role;
  generation: number;
  timeline?: number;
  /** Its PostgreSQL is a primary accepting connections. */
  pgPrimary?: boolean;
  /** As a leader: our sync_state in its pg_stat_replication (for the boot health gate). */
  standbySyncState?: string;
  /** Its A/B boot state, and a try it has armed (for upgrade ordering across the pair). */
  boot?: { state: string; trySlot: string | null };
}

export interface PromoteRequest {
  /** The requester's last LSN: the target must have replayed it. */
  lsn: bigint;
  /** The requester's (witness-issued) generation: the target takes the lease over from it. */
  generation: number;
}

export interface PeerPort {
  /** The peer agent's status; undefined when it does not answer in time. */
  status(): Promise<PeerView | undefined>;
  /** Query the peer's PostgreSQL directly: up, and whether it is a primary. */
  pg(): Promise<{ ok: boolean; primary?: boolean }>;
  /** Ask the peer to take over in a planned switchover. */
  promote(req: PromoteRequest): Promise<{ ok: boolean; generation?: number; reason: string }>;
  /**
   * Tell the leader that this follower stops now (a clean shutdown): it records nobody
   * promotable and turns synchronous commit off before our standby goes, so no commit waits
   * for it. Throws when no answer arrives within `timeoutMs`.
   */
  leave(req: LeaveRequest, timeoutMs: number): Promise<{ ok: boolean; reason: string }>;
}

export interface LeaveRequest {
  /** The follower's generation: a leader of an older one refuses. */
  generation: number;
}

/**
 * How long a stopping follower waits for the leader's answer to its leave: the leader may first
 * finish a round (a peer check of up to checkTimeout), then asks the witness (checkTimeout).
 * At least 3 s; 13 s with the TCG timings of the QEMU suites, where a TLS handshake of a guest
 * that is shutting down took longer than 3 s.
 */
export function leaveTimeoutMs(s: Pick<ControllerSettings, 'checkInterval' | 'checkTimeout'>): number {
  return Math.max(3_000, 2 * s.checkTimeout + s.checkInterval);
}

/** The arbiter. Resolves with its answer; throws when it cannot be reached in time. */
export interface WitnessPort {
  call(req: ArbiterRequest): Promise<ArbiterAnswer>;
}

export interface VipPort {
  held(): Promise<boolean>;
  take(): Promise<void>;
  drop(): Promise<void>;
  /**
   * A drop leaves the address refusing connections for a moment (vipRefusePlan): clients that
   * still reach this node are answered at once rather than losing their SYN, so a switchover may
   * drop the address while its server stops instead of after.
   */
  readonly refusesAfterDrop?: boolean;
}

/** hostmeta.json, written atomically and durably. */
export interface StatePort {
  read(): Promise<HostMeta | undefined>;
  write(meta: HostMeta): Promise<void>;
}

/** Kine and K3s, restarted after a promotion that may have lost data. */
export interface KubePort {
  restart(): Promise<void>;
  /** Stop Kine and K3s (before a restore puts the datastore back in time). */
  stop(): Promise<void>;
}

/** Structured log lines: `event` is machine-readable, `msg` for people. */
export interface LogPort {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  error(fields: Record<string, unknown>, msg: string): void;
  debug(fields: Record<string, unknown>, msg: string): void;
}

export interface Ports {
  clock: ClockPort;
  pg: PgPort;
  peer: PeerPort;
  /** Absent when the cluster has no witness (manual failover). */
  witness?: WitnessPort;
  vip: VipPort;
  state: StatePort;
  kube: KubePort;
  log: LogPort;
  /** Tell the supervisor we are alive (systemd watchdog); called by the guard timer only, which paces it. */
  heartbeat(): void;
}

/** The settings the controller needs, from the seed. */
export interface ControllerSettings {
  cluster: string;
  self: string;
  peer: string;
  isBootstrapLeader: boolean;
  checkInterval: number;
  checkTimeout: number;
  /** Leader: fence this long after sending the last renewal the witness granted. */
  fenceAfter: number;
  /** Lease period at the witness; the follower may take over only after it. */
  promoteAfter: number;
  degradeAfter: number;
  syncPolicy: 'degrade' | 'strict';
  /** Clock-rate drift the timing argument allows (fraction, e.g. 0.01). */
  maxDrift: number;
}

/**
 * How long the old leader waits for the peer's answer to a switchover's promote request. Past
 * it, the old leader asks the witness who holds the lease and follows that (a frozen peer cost
 * 36 s without writes at 35 s): safe whether the peer promoted, is still promoting, or never began.
 */
export const PROMOTE_TIMEOUT_MS = 10_000;
