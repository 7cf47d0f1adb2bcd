import test from 'ava';
import { Rng } from '#agent/sim/world.ts';
import { drawFaults, drawType, failsLeader, renderTimeline, secondsWithout, SINGLE_KINDS, stalls, summarize, type DrawRecord, type Fault } from '../../bench/chaos-core.ts';

test('chaos draws: the same seed draws the same faults; every kind is drawn; combinations never pair two heavy faults', (t) => {
  const draw = (seed: number) => Array.from({ length: 400 }, ((rng) => () => drawFaults(rng, SINGLE_KINDS))(new Rng(seed)));
  t.deepEqual(draw(7), draw(7));
  t.notDeepEqual(draw(7), draw(8));
  const all = draw(7);
  t.deepEqual([...new Set(all.flatMap((d) => d.faults.map((f) => f.kind)))].sort(), [...SINGLE_KINDS].sort());
  const combos = all.filter((d) => d.faults.length === 2);
  t.true(combos.length > 50 && combos.length < 150, `about a quarter are combinations: ${combos.length}`);
  for (const d of combos) {
    t.not(d.faults[0]!.kind, d.faults[1]!.kind);
    t.false(d.faults.every((f) => f.kind === 'power-loss' || f.kind === 'witness-restart'), drawType(d));
  }
  for (const d of all) for (const f of d.faults) {
    t.true(f.holdMs > 0 && f.holdMs <= 40_000, `${f.kind} holds ${f.holdMs} ms`);
    if (f.kind === 'one-way-cut') t.not(f.from, f.to);
  }
  // Only the kinds the harness can inject.
  t.true(draw(3).length > 0 && Array.from({ length: 100 }, ((rng) => () => drawFaults(rng, ['postgres-crash']))(new Rng(3))).every((d) => d.faults.length === 1 && d.faults[0]!.kind === 'postgres-crash'));
});

test('a promotion is a false failover unless a fault failed the leader: its box, agent, PostgreSQL or its reach to the witness', (t) => {
  const yes: Fault[] = [
    { kind: 'power-loss', node: 'leader', holdMs: 1 },
    { kind: 'agent-freeze', node: 'leader', holdMs: 1 },
    { kind: 'postgres-crash', node: 'leader', holdMs: 1 },
    { kind: 'one-way-cut', from: 'witness', to: 'leader', holdMs: 1 },
    { kind: 'one-way-cut', from: 'leader', to: 'witness', holdMs: 1 },
    { kind: 'two-way-cut', a: 'witness', b: 'leader', holdMs: 1 },
    { kind: 'link-flap', member: 'leader', flaps: 2, periodMs: 1, holdMs: 1 },
  ];
  const no: Fault[] = [
    { kind: 'power-loss', node: 'follower', holdMs: 1 },
    { kind: 'one-way-cut', from: 'leader', to: 'follower', holdMs: 1 },
    { kind: 'two-way-cut', a: 'leader', b: 'client', holdMs: 1 },
    { kind: 'packet-loss', member: 'leader', percent: 20, holdMs: 1 },
    { kind: 'delay', member: 'leader', delayMs: 300, jitterMs: 100, lossPercent: 5, holdMs: 1 },
    { kind: 'witness-restart', holdMs: 1 },
    { kind: 'standby-disk-full', holdMs: 1 },
  ];
  for (const f of yes) t.true(failsLeader(f), JSON.stringify(f));
  for (const f of no) t.false(failsLeader(f), JSON.stringify(f));
});

test('the checker\'s records add up per fault type; seconds without writes count whole empty seconds', (t) => {
  t.is(secondsWithout([100, 1500, 4200], 0, 5000), 2, 'seconds 2 and 3 are empty');
  t.is(secondsWithout([], 0, 2500), 3);
  t.deepEqual(stalls([0, 500, 2000, 2100, 3500]), [1500, 1400]);
  const rec = (type: string, over: Partial<DrawRecord> = {}): DrawRecord => ({ type, labels: [type], leaderFault: false, start: 0, healed: 1000, end: 2000, leaderBefore: 'node1', leaderAfter: 'node1', recovered: true, acknowledged: 10, lost: [], dualWritableSamples: 0, dualVipSamples: 0, secondsWithoutWrites: 1, promotions: 0, falseFailover: false, ...over });
  const rows = summarize([rec('packet-loss', { promotions: 1, falseFailover: true }), rec('power-loss', { lost: [4, 5], leaderFault: true, promotions: 1 }), rec('packet-loss', { dualVipSamples: 2, recovered: false })]);
  t.deepEqual(rows.map((r) => [r.type, r.count, r.acknowledged, r.lost, r.falseFailovers, r.dualVipSamples, r.unrecovered]), [
    ['packet-loss', 2, 20, 0, 1, 2, 1],
    ['power-loss', 1, 10, 2, 0, 0, 0],
    ['total', 3, 30, 2, 1, 2, 1],
  ]);
  const svg = renderTimeline([10, 20, 1500], [rec('power-loss', { lost: [1] }), rec('packet-loss', { start: 3000, healed: 4000, end: 5000 })], 'seed 1 <x>');
  t.regex(svg, /^<svg /);
  t.regex(svg, /seed 1 &lt;x&gt;/);
  t.is((svg.match(/fill="#f4a6a6"/g) ?? []).length, 1, 'one red window: the one that lost a write');
});
