import test from 'ava';
import { deviceHasAddress, listsAddress, waitForOwnAddress } from '#agent/netwait.ts';

const IP_OUTPUT = `2: eth0    inet 192.168.77.11/24 brd 192.168.77.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.168.77.50/24 scope global secondary eth0:gk\\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::5054:ff:fe77:11/64 scope link \\       valid_lft forever preferred_lft forever`;

test('listsAddress finds the exact address, not one it is a prefix of', (t) => {
  t.true(listsAddress(IP_OUTPUT, '192.168.77.11'));
  t.true(listsAddress(IP_OUTPUT, '192.168.77.50'));
  t.false(listsAddress(IP_OUTPUT, '192.168.77.1'));
  t.false(listsAddress(IP_OUTPUT, '192.168.77.12'));
  t.false(listsAddress('', '192.168.77.11'));
});

test('deviceHasAddress asks ip for real: loopback has 127.0.0.1, a missing device has nothing', async (t) => {
  t.true(await deviceHasAddress('lo', '127.0.0.1'));
  t.false(await deviceHasAddress('lo', '127.0.0.2'));
  t.false(await deviceHasAddress('gk-no-such-dev', '127.0.0.1'));
});

/** Virtual time: sleep advances the clock; the address appears at `appearsAtMs` (never if undefined). */
function world(appearsAtMs: number | undefined) {
  let now = 0;
  const probes: number[] = [];
  const reports: number[] = [];
  return {
    probes,
    reports,
    ports: {
      hasAddress: async () => {
        probes.push(now);
        return appearsAtMs !== undefined && now >= appearsAtMs;
      },
      clock: { now: () => now, sleep: async (ms: number) => void (now += ms) },
      waiting: (ms: number) => void reports.push(ms),
    },
  };
}
const OPTS = { timeoutMs: 120_000, pollMs: 200, reportEveryMs: 30_000 };

test('an address already there: one look, no waiting, nothing reported', async (t) => {
  const w = world(0);
  t.deepEqual(await waitForOwnAddress(w.ports, OPTS), { present: true, waitedMs: 0 });
  t.deepEqual(w.probes, [0]);
  t.deepEqual(w.reports, []);
});

test('an address that comes later: polled every pollMs, reported once at the start and then every reportEveryMs', async (t) => {
  const w = world(65_000);
  const r = await waitForOwnAddress(w.ports, OPTS);
  t.true(r.present);
  t.is(r.waitedMs, 65_000);
  t.deepEqual(w.reports, [0, 30_000, 60_000]);
  t.true(w.probes.every((p, i) => i === 0 || p - w.probes[i - 1]! === 200));
});

test('an address that never comes: gives up at the timeout exactly, and says so', async (t) => {
  const w = world(undefined);
  t.deepEqual(await waitForOwnAddress(w.ports, OPTS), { present: false, waitedMs: 120_000 });
  t.is(w.probes.at(-1), 120_000);
  t.deepEqual(w.reports, [0, 30_000, 60_000, 90_000]);
});
