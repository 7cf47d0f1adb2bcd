import test from 'ava';
import { quoteCommand } from '#common/exec.ts';
import { guestLanPlans } from '#lab/guest-lan.ts';
import { assertGolden } from '../helpers/golden.ts';

test('the guests\' LAN: one namespace, a bridge without STP holding the host address, a tap per guest on the bridge', (t) => {
  const { lan, plans } = guestLanPlans('gk-e2e-lan', { ip: '192.168.77.1', prefix: 24 }, ['node1', 'node2']);
  t.deepEqual(lan, { ns: 'gk-e2e-lan', bridge: 'br0', hostIp: '192.168.77.1', taps: { node1: 'gktap1', node2: 'gktap2' } });
  // Every command but the namespace's creation runs inside it: nothing lands on the host's links.
  t.true(plans.slice(1).every((p) => p.args[0] === '-n' && p.args[1] === 'gk-e2e-lan'));
  assertGolden(t, 'guest-lan/plans.txt', `${plans.map((p) => quoteCommand(p)).join('\n')}\n`);
});
