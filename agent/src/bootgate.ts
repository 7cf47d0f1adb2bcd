import type { Role } from '#common/schema/hostmeta.ts';
import type { BootStateName } from './bootslot.ts';

/** Everything the bless decision looks at. Times are milliseconds. */
/** What the gate reads of the agent's last round. */
export interface GateObservation {
  pg: { up: boolean; lsn?: string; inRecovery?: boolean; readOnly?: boolean; receiverStreaming?: boolean; error?: string; peerReplication?: { state: string; syncState: string; replayLsn: string | null; flushLsn: string | null } };
  /** The peer's agent: its role and, as leader, our sync_state in its pg_stat_replication. */
  peerApi?: { role: Role; generation: number; timeline?: number; standbySyncState?: string };
  peerPgOk: boolean;
  peerPgSaysOurSyncState?: string;
}

export interface GateInputs {
  state: BootStateName;
  /** Monotonic clock now. */
  now: number;
  /** Time since the kernel booted: how long this try has been running. */
  sinceBootMs: number;
  /** Start (monotonic) of the current run of passing rounds, from the previous decision. */
  healthySince?: number;
  blessAfterMs: number;
  /** 0: never reboot. */
  trialTimeoutMs: number;
  role: Role;
  /** Age of the agent loop's last completed round; undefined before the first one. */
  lastRoundAgeMs?: number;
  /** Older than this, the loop counts as stalled. */
  maxRoundAgeMs: number;
  observation?: GateObservation;
  kubernetes: boolean;
  k3sReady?: boolean;
  /**
   * The witness as this node sees it this round (a leader holds its lease, a follower reaches
   * it); `none` when the cluster has no witness (failover is manual).
   */
  witness: GateItem | 'none';
  /** The operator's `checks.d` scripts from their last run; undefined before they first ran. */
  userChecks: UserChecksRun | undefined;
}

/** The last finished run of `checks.d`, and how old it is. */
export interface UserChecksRun {
  results: UserCheckResult[];
  ageMs: number;
  /** Older than this, the run counts as hung: a check that never returns must not keep an old pass. */
  maxAgeMs: number;
}

/** One item of the gate beside the pair: ok, and what was seen. */
export interface GateItem {
  ok: boolean;
  detail: string;
}

/** One executable of `checks.d`: it passes when it exits 0 within the check timeout. */
export interface UserCheckResult {
  name: string;
  ok: boolean;
  /** Why it failed: the exit code and the last line it printed, or the timeout. */
  detail?: string;
}

/** The health gate right now: ok, or the first reason it fails. */
export interface GateResult {
  ok: boolean;
  reason: string;
  /** Not known yet (the agent has only just started): no verdict to reboot on. */
  pending?: boolean;
}

/** What the agent does about a try slot this round. */
export interface BlessDecision {
  action: 'bless' | 'wait' | 'reboot';
  reason: string;
  gate: GateResult;
  /** Carry into the next round's `healthySince`. */
  healthySince?: number;
}

/**
 * The pair's part of the gate (pure): agent loop running, PostgreSQL healthy in this node's
 * role, replication streaming when the peer is up and synchronous when both are healthy, K3s
 * ready when present, and the node neither fenced nor unconfigured.
 */
export function pairCheck(i: Omit<GateInputs, 'witness' | 'userChecks'>): GateResult {
  const fail = (reason: string): GateResult => ({ ok: false, reason });
  if (i.role === 'unconfigured') return fail('the node is unconfigured');
  if (i.role === 'fenced') return fail('the node is fenced');
  if (i.role === 'init') return fail('the node has not finished bootstrapping (role init)');
  if (i.lastRoundAgeMs === undefined) return { ok: false, reason: 'the agent loop has not completed a round yet', pending: true };
  if (i.lastRoundAgeMs > i.maxRoundAgeMs) return fail(`the agent loop has not completed a round for ${Math.round(i.lastRoundAgeMs)} ms`);
  const o = i.observation;
  if (!o) return { ok: false, reason: 'nothing observed yet', pending: true };
  const pg = o.pg;
  if (!pg.up) return fail(`PostgreSQL is down${pg.error ? ` (${pg.error})` : ''}`);
  const peerUp = Boolean(o.peerApi) || o.peerPgOk;
  const peerHealthy = o.peerApi?.role === 'leader' || o.peerApi?.role === 'follower';
  let ok: string;
  if (i.role === 'leader') {
    if (pg.inRecovery !== false) return fail('this node is leader but PostgreSQL is in recovery');
    if (pg.readOnly) return fail('this node is leader but PostgreSQL is read-only');
    if (peerUp) {
      const r = pg.peerReplication;
      if (r?.state !== 'streaming') return fail(`the peer is up but does not stream from us (${r ? `state ${r.state}` : 'no replication connection'})`);
      if (peerHealthy && r.syncState !== 'sync') return fail(`the standby streams but is not synchronous (sync_state ${r.syncState})`);
      ok = peerHealthy ? 'primary accepting writes, standby streaming synchronously' : 'primary accepting writes, peer streaming';
    } else {
      ok = 'primary accepting writes; the peer is down, so no replication is required';
    }
  } else {
    if (pg.inRecovery !== true) return fail('this node is follower but PostgreSQL is not in recovery');
    if (pg.receiverStreaming !== true) return fail('the standby is not streaming from the leader');
    const ours = o.peerApi?.standbySyncState ?? o.peerPgSaysOurSyncState;
    if (ours !== 'sync') return fail(`the leader does not count this standby as synchronous (${ours ?? 'no answer'})`);
    ok = 'standby streaming synchronously from the leader';
  }
  if (i.kubernetes && i.k3sReady !== true) return fail('K3s is not ready (/readyz)');
  return { ok: true, reason: i.kubernetes ? `${ok}, K3s ready` : ok };
}

/**
 * The whole health gate of a try (pure): the pair's part, then the witness, then every user
 * check in `checks.d`. The reason names the first item that fails.
 */
export function gateCheck(i: GateInputs): GateResult {
  const pair = pairCheck(i);
  if (!pair.ok) return pair;
  const reasons = [pair.reason];
  if (i.witness !== 'none') {
    if (!i.witness.ok) return { ok: false, reason: `witness: ${i.witness.detail}` };
    reasons.push(`witness: ${i.witness.detail}`);
  }
  const checks = i.userChecks;
  if (checks === undefined) return { ok: false, reason: 'the user checks in checks.d have not run yet', pending: true };
  if (checks.ageMs > checks.maxAgeMs) return { ok: false, reason: `the user checks in checks.d last finished ${Math.round(checks.ageMs)} ms ago (one hangs?)` };
  const failed = checks.results.find((c) => !c.ok);
  if (failed) return { ok: false, reason: `user check ${failed.name} failed${failed.detail ? ` (${failed.detail})` : ''}` };
  if (checks.results.length > 0) reasons.push(`user checks passed: ${checks.results.map((c) => c.name).join(', ')}`);
  return { ok: true, reason: reasons.join('; ') };
}

/**
 * Bless, wait or reboot (pure). A try slot is blessed once the gate has passed continuously
 * for `blessAfterMs`. When it has not by `trialTimeoutMs` after boot, the node reboots so GRUB
 * spends a try; a run of passing rounds already under way at the deadline may finish first.
 * Outside state `trying` nothing is ever done.
 */
export function blessDecision(i: GateInputs): BlessDecision {
  if (i.state !== 'trying') {
    return { action: 'wait', reason: `boot state ${i.state}: no try slot to bless`, gate: { ok: false, reason: 'not trying' } };
  }
  const gate = gateCheck(i);
  const healthySince = gate.ok ? (i.healthySince ?? i.now) : undefined;
  const healthyFor = healthySince === undefined ? 0 : i.now - healthySince;
  if (gate.ok && healthyFor >= i.blessAfterMs) {
    return { action: 'bless', reason: `the health gate passed for ${healthyFor} ms (settle ${i.blessAfterMs} ms): ${gate.reason}`, gate, healthySince };
  }
  const pastDeadline = i.trialTimeoutMs > 0 && i.sinceBootMs >= i.trialTimeoutMs;
  const streakMayFinish = gate.ok && i.sinceBootMs < i.trialTimeoutMs + i.blessAfterMs;
  // A verdict still pending (the agent has only just started, late in the try) is not a reason:
  // the next round, seconds away, has one.
  if (pastDeadline && !streakMayFinish && !gate.pending) {
    const why = gate.ok ? `healthy for only ${healthyFor} ms of ${i.blessAfterMs}` : gate.reason;
    return { action: 'reboot', reason: `the health gate did not pass within ${i.trialTimeoutMs} ms of boot (${why}): rebooting so GRUB spends a try or falls back`, gate, healthySince };
  }
  const reason = gate.ok ? `the health gate passes (${gate.reason}); blessing after ${i.blessAfterMs} ms of it, ${healthyFor} ms so far` : `the health gate does not pass: ${gate.reason}`;
  return { action: 'wait', reason, gate, healthySince };
}
