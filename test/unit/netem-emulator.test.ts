import test from 'ava';
import { runPlan } from '#common/exec.ts';
import { startEmulator } from '../../bench/netem.ts';
import { createTopology, destroyNamespaces, inNs, NET, nsOf, type Topology } from '#lab/netns.ts';

// The user-space netem that bench:false-failover uses where the kernel has no sch_netem,
// measured with ping on the harness's own namespaces. Namespaces need root (CI runs as root).
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;
const prefix = `gk${process.pid}-nq`;
let topo: Topology;

test.before(async () => {
  if (canRun) topo = await createTopology(prefix);
});
test.after.always(async () => {
  if (canRun) await destroyNamespaces(prefix);
});

/** Each reply's round trip in ms, and how many of `count` were sent. */
async function ping(from: string, to: string, count: number): Promise<{ rtts: number[]; sent: number }> {
  const r = await runPlan(inNs(nsOf(topo, from), 'ping', ['-n', '-c', String(count), '-i', '0.05', '-W', '2', to]), { allowFailure: true, timeoutMs: 60_000 });
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  const sent = Number(/(\d+) packets transmitted/.exec(r.stdout)?.[1] ?? NaN);
  return { rtts, sent };
}

serial('delay with uniform jitter on what the client sends, nothing lost, and gone again once stopped', async (t) => {
  t.timeout(120_000);
  const before = await ping('client', NET.nodes[0].ip, 10);
  t.true(before.rtts.length === 10 && Math.max(...before.rtts) < 50, `unimpaired: ${before.rtts.join(' ')}`);

  const e = await startEmulator(topo, 'client', 11, { delayMs: 200, jitterMs: 100, lossPercent: 0 }, 1);
  const during = await ping('client', NET.nodes[0].ip, 40);
  const c = await e.stop();
  t.is(during.rtts.length, 40, 'no loss asked, none seen');
  // Only the request is delayed (the node sends its reply unimpaired): 100..300 ms plus the host.
  t.true(during.rtts.every((ms) => ms >= 100 && ms < 350), during.rtts.join(' '));
  t.true(Math.min(...during.rtts) < 170 && Math.max(...during.rtts) > 230, `jitter spreads the delays: ${during.rtts.join(' ')}`);
  t.is(c.packets, 40);
  t.is(c.dropped, 0);

  const after = await ping('client', NET.nodes[0].ip, 10);
  t.true(after.rtts.length === 10 && Math.max(...after.rtts) < 50, `rule removed: ${after.rtts.join(' ')}`);
});

serial('loss on what the witness sends over the bridge: the emulator drops exactly what ping misses', async (t) => {
  t.timeout(120_000);
  const e = await startEmulator(topo, 'witness', 12, { delayMs: 0, jitterMs: 0, lossPercent: 30 }, 7);
  const r = await ping('witness', NET.client, 100);
  const c = await e.stop();
  t.is(c.packets, 100, 'every echo request went through the queue');
  t.true(c.dropped >= 15 && c.dropped <= 45, `about 30 % of 100 dropped: ${c.dropped}`);
  t.is(r.sent - r.rtts.length, c.dropped);
});
