import test from 'ava';
import { peerViewOf } from '#agent/adapters/peer.ts';
import { rebootDecision, type RebootInputs } from '#agent/upgradeorder.ts';

const staged = { state: 'steady' as const, trySlot: 'B' as const, booted: 'A' as const };
const steadyPeer = { state: 'steady', trySlot: null };
const follower: RebootInputs = { role: 'follower', boot: staged, peer: { role: 'leader', generation: 4, pgPrimary: true, boot: steadyPeer }, standbySyncState: undefined };
const leader: RebootInputs = { role: 'leader', boot: staged, peer: { role: 'follower', generation: 4, pgPrimary: false, boot: steadyPeer }, standbySyncState: 'sync' };

test('reboot ordering: a follower reboots beside a leader; a leader hands over to its synchronous standby first', (t) => {
  t.like(rebootDecision(follower), { action: 'reboot' });
  t.like(rebootDecision(leader), { action: 'switchover' });
});

test('reboot ordering: refusals say why and whether to retry', (t) => {
  const cases: [string, RebootInputs, RegExp, boolean][] = [
    ['nothing staged', { ...follower, boot: { state: 'steady', booted: 'A' } }, /no upgrade is staged here/, false],
    ['this boot is a try', { ...follower, boot: { state: 'trying', trySlot: 'B', booted: 'B' } }, /itself an unblessed try of slot B/, false],
    ['peer silent', { ...follower, peer: undefined }, /peer does not answer: rebooting now would leave no node up/, true],
    ['peer fenced', { ...follower, peer: { ...follower.peer!, role: 'fenced' } }, /peer is fenced/, true],
    ['peer trying', { ...follower, peer: { ...follower.peer!, boot: { state: 'trying', trySlot: 'B' } } }, /peer's slot is trying, not steady/, true],
    ['peer fell back', { ...follower, peer: { ...follower.peer!, boot: { state: 'fell-back', trySlot: null } } }, /peer's slot is fell-back/, true],
    ['peer too old to say', { ...follower, peer: { ...follower.peer!, boot: undefined } }, /peer's slot is unknown/, true],
    ['peer upgrading too', { ...follower, peer: { ...follower.peer!, boot: { state: 'steady', trySlot: 'A' } } }, /its own upgrade staged .* one node at a time/, true],
    ['leader without writes', { ...follower, peer: { ...follower.peer!, pgPrimary: false } }, /not a leader with a writable primary/, true],
    ['standby async', { ...leader, standbySyncState: 'async' }, /async, not a synchronous standby: a switchover could lose writes/, true],
    ['standby gone', { ...leader, standbySyncState: undefined }, /not connected, not a synchronous standby/, true],
    ['two leaders', { ...leader, peer: { ...leader.peer!, role: 'leader' } }, /peer is leader, not this leader's follower/, true],
    ['init', { ...follower, role: 'init' }, /this node is init/, true],
  ];
  for (const [what, inputs, re, retryable] of cases) {
    const d = rebootDecision(inputs);
    t.is(d.action, 'refuse', what);
    t.regex(d.reason, re, what);
    if (d.action === 'refuse') t.is(d.retryable, retryable, what);
  }
});

test('the peer view carries the peer\'s boot state from its /v1/status', (t) => {
  t.deepEqual(peerViewOf({ role: 'leader', generation: 3, postgres: { role: 'primary', timeline: 2 }, boot: { state: 'steady', trySlot: 'B' } })?.boot, { state: 'steady', trySlot: 'B' });
  t.deepEqual(peerViewOf({ role: 'leader', generation: 3, boot: { state: 'trying', trySlot: null } })?.boot, { state: 'trying', trySlot: null });
  t.is(peerViewOf({ role: 'leader', generation: 3, boot: null })?.boot, undefined);
});
