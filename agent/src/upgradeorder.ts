import type { Role } from '#common/schema/hostmeta.ts';
import type { PeerView } from './core/ports.ts';
import type { BootState } from './bootslot.ts';

// Two-node ordering for the reboot into a staged slot (docs/upgrades.md): the pair is never
// both down, and a leader never reboots while it holds the writes. Pure, so every branch is
// tested; the agent runs what it decides.

/** What the node may do with a staged try now. */
export type RebootDecision =
  | { action: 'reboot'; reason: string }
  | { action: 'switchover'; reason: string }
  | { action: 'refuse'; reason: string; retryable: boolean };

export interface RebootInputs {
  role: Role;
  boot: Pick<BootState, 'state' | 'trySlot' | 'booted'> | undefined;
  /** The peer's view from the last round; undefined when its agent did not answer. */
  peer: PeerView | undefined;
  /** As a leader: the standby's sync_state in our pg_stat_replication. */
  standbySyncState: string | undefined;
}

/**
 * Whether this node may reboot into its staged try:
 * - it must have a try armed in this boot (staged) and be running its active slot;
 * - its peer must answer, be a healthy leader or follower, run a blessed slot (not trying),
 *   and have no try of its own armed (one node of the pair upgrades at a time);
 * - a follower reboots when the peer is a leader with a writable primary;
 * - a leader first hands over (planned switchover) when the peer is its synchronous standby.
 */
export function rebootDecision(i: RebootInputs): RebootDecision {
  const refuse = (reason: string, retryable = true): RebootDecision => ({ action: 'refuse', reason, retryable });
  if (!i.boot || i.boot.state !== 'steady' || !i.boot.trySlot) {
    return refuse(i.boot?.state === 'trying' ? `this boot is itself an unblessed try of slot ${i.boot.booted}` : 'no upgrade is staged here (no try armed): stage a bundle first', false);
  }
  const p = i.peer;
  if (!p) return refuse('the peer does not answer: rebooting now would leave no node up');
  if (p.role !== 'leader' && p.role !== 'follower') return refuse(`the peer is ${p.role}, not a healthy leader or follower`);
  if (!p.boot || p.boot.state !== 'steady') return refuse(`the peer's slot is ${p.boot ? p.boot.state : 'unknown'}, not steady: let it bless (or fall back) first`);
  if (p.boot.trySlot) return refuse(`the peer has its own upgrade staged (try of slot ${p.boot.trySlot}): one node at a time`);
  if (i.role === 'follower') {
    if (p.role !== 'leader' || !p.pgPrimary) return refuse('the peer is not a leader with a writable primary');
    return { action: 'reboot', reason: `the peer leads; rebooting into slot ${i.boot.trySlot}` };
  }
  if (i.role === 'leader') {
    if (p.role !== 'follower') return refuse(`the peer is ${p.role}, not this leader's follower`);
    if (i.standbySyncState !== 'sync') return refuse(`the peer is ${i.standbySyncState ?? 'not connected'}, not a synchronous standby: a switchover could lose writes`);
    return { action: 'switchover', reason: 'this node leads: hand over to the synchronous standby first' };
  }
  return refuse(`this node is ${i.role}, not a leader or follower`);
}
