import test from 'ava';
import { quoteCommand } from '#common/exec.ts';
import { guestLanPlans, outageEnd } from '#lab/guest-lan.ts';
import { assertGolden } from '../helpers/golden.ts';

test('the guests\' LAN: one namespace, a bridge without STP holding the host address, a tap per guest on the bridge', (t) => {
  const { lan, plans } = guestLanPlans('gk-e2e-lan', { ip: '192.168.77.1', prefix: 24 }, ['node1', 'node2']);
  t.deepEqual(lan, { ns: 'gk-e2e-lan', bridge: 'br0', hostIp: '192.168.77.1', taps: { node1: 'gktap1', node2: 'gktap2' } });
  // Every command but the namespace's creation runs inside it: nothing lands on the host's links.
  t.true(plans.slice(1).every((p) => p.args[0] === '-n' && p.args[1] === 'gk-e2e-lan'));
  assertGolden(t, 'guest-lan/plans.txt', `${plans.map((p) => quoteCommand(p)).join('\n')}\n`);
});

test('outageEnd: the writes resumed where the longest gap after the cut ends, not at a write the old leader acknowledged as it went down', (t) => {
  const cut = 100_000;
  const acks = [{ id: 1, t: cut - 400 }, { id: 2, t: cut - 200 }, { id: 3, t: cut + 40 }, { id: 4, t: cut + 29_900 }, { id: 5, t: cut + 30_100 }];
  t.is(outageEnd(acks, cut)?.id, 4);
  // The first acknowledgement after the cut is the resumption when nothing was in flight.
  t.is(outageEnd([acks[0]!, acks[1]!, acks[3]!, acks[4]!], cut)?.id, 4);
  t.is(outageEnd(acks.slice(0, 2), cut), undefined, 'nothing acknowledged after the cut');
});
