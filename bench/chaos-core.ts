// The pure half of `npm run bench:chaos`: which faults a seed draws, which of them fail the
// leader, and how the checker's records add up per fault type. The runner (bench/chaos.ts)
// injects what this decides.
import { Rng } from '#agent/sim/world.ts';

/** A member of the harness's network, by its role at the time of the fault. */
export type Member = 'leader' | 'follower' | 'witness' | 'client';
export type NodeRole = 'leader' | 'follower';

/** One fault, fully drawn: what, where and for how long (ms). */
export type Fault =
  | { kind: 'power-loss'; node: NodeRole; holdMs: number }
  | { kind: 'agent-freeze'; node: NodeRole; holdMs: number }
  | { kind: 'postgres-crash'; node: NodeRole; holdMs: number }
  | { kind: 'one-way-cut'; from: Member; to: Member; holdMs: number }
  | { kind: 'two-way-cut'; a: Member; b: Member; holdMs: number }
  | { kind: 'witness-restart'; holdMs: number }
  | { kind: 'link-flap'; member: Member; flaps: number; periodMs: number; holdMs: number }
  | { kind: 'packet-loss'; member: Member; percent: number; holdMs: number }
  | { kind: 'delay'; member: Member; delayMs: number; jitterMs: number; lossPercent: number; holdMs: number }
  | { kind: 'standby-disk-full'; holdMs: number };

/** A fault, or two at once. */
export type Draw = { faults: Fault[] };

export type FaultKind = Fault['kind'];

export const SINGLE_KINDS: FaultKind[] = ['power-loss', 'agent-freeze', 'postgres-crash', 'one-way-cut', 'two-way-cut', 'witness-restart', 'link-flap', 'packet-loss', 'delay', 'standby-disk-full'];

const MEMBERS: Member[] = ['leader', 'follower', 'witness', 'client'];
const NODES: NodeRole[] = ['leader', 'follower'];

function pair(rng: Rng): [Member, Member] {
  const a = rng.pick(MEMBERS);
  const b = rng.pick(MEMBERS.filter((m) => m !== a));
  return [a, b];
}

/** One single fault of `kind`, its parameters drawn from `rng`. */
export function drawSingle(rng: Rng, kind: FaultKind): Fault {
  const hold = (lo: number, hi: number): number => Math.round(rng.between(lo, hi) * 1000);
  switch (kind) {
    case 'power-loss':
      return { kind, node: rng.pick(NODES), holdMs: hold(5, 30) };
    case 'agent-freeze':
      return { kind, node: rng.pick(NODES), holdMs: hold(2, 20) };
    case 'postgres-crash':
      return { kind, node: rng.pick(NODES), holdMs: hold(5, 15) };
    case 'one-way-cut': {
      const [from, to] = pair(rng);
      return { kind, from, to, holdMs: hold(5, 30) };
    }
    case 'two-way-cut': {
      const [a, b] = pair(rng);
      return { kind, a, b, holdMs: hold(5, 30) };
    }
    case 'witness-restart':
      return { kind, holdMs: hold(2, 10) };
    case 'link-flap': {
      const flaps = rng.int(2, 6);
      const periodMs = hold(0.5, 3);
      return { kind, member: rng.pick(MEMBERS), flaps, periodMs, holdMs: flaps * periodMs };
    }
    case 'packet-loss':
      return { kind, member: rng.pick(MEMBERS), percent: rng.int(2, 20), holdMs: hold(10, 40) };
    case 'delay':
      return { kind, member: rng.pick(MEMBERS), delayMs: rng.int(50, 300), jitterMs: rng.int(10, 150), lossPercent: rng.int(0, 5), holdMs: hold(10, 40) };
    case 'standby-disk-full':
      return { kind, holdMs: hold(10, 30) };
  }
}

/**
 * The next draw: a single fault of a kind the harness can inject (`available`), or with
 * probability 1/4 two of different kinds at once. At most one of the two is a power loss or a
 * witness restart, so that the pair keeps a node and an arbiter to come back to.
 */
export function drawFaults(rng: Rng, available: FaultKind[]): Draw {
  if (available.length === 0) throw new Error('no fault kind is available');
  const first = drawSingle(rng, rng.pick(available));
  if (!rng.chance(0.25) || available.length < 2) return { faults: [first] };
  const heavy = new Set<FaultKind>(['power-loss', 'witness-restart']);
  const rest = available.filter((k) => k !== first.kind && !(heavy.has(first.kind) && heavy.has(k)));
  if (rest.length === 0) return { faults: [first] };
  return { faults: [first, drawSingle(rng, rng.pick(rest))] };
}

/** A fault's name in reports: its kind and where. */
export function faultLabel(f: Fault): string {
  switch (f.kind) {
    case 'power-loss':
    case 'agent-freeze':
    case 'postgres-crash':
      return `${f.kind} ${f.node}`;
    case 'one-way-cut':
      return `${f.kind} ${f.from}->${f.to}`;
    case 'two-way-cut':
      return `${f.kind} ${f.a}<->${f.b}`;
    case 'link-flap':
      return `${f.kind} ${f.member} x${f.flaps}`;
    case 'packet-loss':
      return `${f.kind} ${f.member} ${f.percent}%`;
    case 'delay':
      return `${f.kind} ${f.member} ${f.delayMs}±${f.jitterMs}ms`;
    default:
      return f.kind;
  }
}

/** The report's type of a draw: the kind, or both kinds of a combination. */
export function drawType(d: Draw): string {
  return d.faults.length === 1 ? d.faults[0]!.kind : `combo ${d.faults.map((f) => f.kind).sort().join(' + ')}`;
}

/**
 * Whether a fault fails the leader: its box, agent or PostgreSQL, or its reach to the witness
 * (the arbiter it must renew with). A promotion during a draw where none of its faults does is
 * a false failover. Loss and delay on a link degrade it but fail nothing.
 */
export function failsLeader(f: Fault): boolean {
  switch (f.kind) {
    case 'power-loss':
    case 'agent-freeze':
    case 'postgres-crash':
      return f.node === 'leader';
    case 'one-way-cut':
      return (f.from === 'leader' && f.to === 'witness') || (f.from === 'witness' && f.to === 'leader');
    case 'two-way-cut':
      return new Set([f.a, f.b]).has('leader') && new Set([f.a, f.b]).has('witness');
    case 'link-flap':
      return f.member === 'leader';
    default:
      return false;
  }
}

/** What the checker recorded for one draw, from injection to recovery. */
export interface DrawRecord {
  type: string;
  labels: string[];
  leaderFault: boolean;
  /** ms since the campaign started. */
  start: number;
  healed: number;
  end: number;
  leaderBefore: string;
  leaderAfter: string;
  recovered: boolean;
  acknowledged: number;
  lost: number[];
  dualWritableSamples: number;
  dualVipSamples: number;
  /** Whole seconds in [start, end] with no acknowledged write. */
  secondsWithoutWrites: number;
  promotions: number;
  falseFailover: boolean;
}

export interface TypeSummary {
  type: string;
  count: number;
  acknowledged: number;
  lost: number;
  dualWritableSamples: number;
  dualVipSamples: number;
  secondsWithoutWrites: number;
  falseFailovers: number;
  promotions: number;
  unrecovered: number;
}

/** Whole seconds of [start, end) (ms) in which no write was acknowledged (pure). */
export function secondsWithout(acks: number[], start: number, end: number): number {
  const seconds = Math.max(0, Math.ceil((end - start) / 1000));
  const hit = new Array<boolean>(seconds).fill(false);
  for (const t of acks) if (t >= start && t < end) hit[Math.floor((t - start) / 1000)] = true;
  return hit.filter((h) => !h).length;
}

/** Write stalls: gaps between consecutive acknowledged writes longer than `overMs` (pure). */
export function stalls(acks: number[], overMs = 1000): number[] {
  const out: number[] = [];
  for (let i = 1; i < acks.length; i++) if (acks[i]! - acks[i - 1]! > overMs) out.push(acks[i]! - acks[i - 1]!);
  return out;
}

/** Per fault type, sorted by type, and a total row (pure). */
export function summarize(records: DrawRecord[]): TypeSummary[] {
  const by = new Map<string, TypeSummary>();
  const add = (key: string, r: DrawRecord): void => {
    const s = by.get(key) ?? { type: key, count: 0, acknowledged: 0, lost: 0, dualWritableSamples: 0, dualVipSamples: 0, secondsWithoutWrites: 0, falseFailovers: 0, promotions: 0, unrecovered: 0 };
    s.count++;
    s.acknowledged += r.acknowledged;
    s.lost += r.lost.length;
    s.dualWritableSamples += r.dualWritableSamples;
    s.dualVipSamples += r.dualVipSamples;
    s.secondsWithoutWrites += r.secondsWithoutWrites;
    s.falseFailovers += r.falseFailover ? 1 : 0;
    s.promotions += r.promotions;
    s.unrecovered += r.recovered ? 0 : 1;
    by.set(key, s);
  };
  for (const r of records) add(r.type, r);
  const rows = [...by.values()].sort((a, b) => a.type.localeCompare(b.type));
  const total = { type: 'total', count: 0, acknowledged: 0, lost: 0, dualWritableSamples: 0, dualVipSamples: 0, secondsWithoutWrites: 0, falseFailovers: 0, promotions: 0, unrecovered: 0 };
  for (const r of rows) for (const k of Object.keys(total) as (keyof TypeSummary)[]) if (k !== 'type') (total[k] as number) += r[k] as number;
  return [...rows, total];
}

export function summaryTable(rows: TypeSummary[]): string {
  const head = ['FAULT TYPE', 'COUNT', 'ACKED', 'LOST', 'DUAL-WRITABLE', 'DUAL-VIP', 'S WITHOUT WRITES', 'FALSE FAILOVERS', 'PROMOTIONS', 'UNRECOVERED'];
  const body = rows.map((r) => [r.type, r.count, r.acknowledged, r.lost, r.dualWritableSamples, r.dualVipSamples, r.secondsWithoutWrites, r.falseFailovers, r.promotions, r.unrecovered].map(String));
  const all = [head, ...body];
  const w = head.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  return all.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')).join('\n');
}

const esc = (s: string): string => s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');

/** A timeline: acknowledged writes per second, each draw's window shaded (red: a write lost or two writable). */
export function renderTimeline(acks: number[], records: DrawRecord[], title: string): string {
  const width = 1200;
  const left = 60;
  const top = 40;
  const plot = 220;
  const end = Math.max(1000, ...acks, ...records.map((r) => r.end));
  const buckets = new Array<number>(Math.ceil(end / 1000) + 1).fill(0);
  for (const t of acks) buckets[Math.floor(t / 1000)]!++;
  const max = Math.max(1, ...buckets);
  const x = (ms: number): number => left + (ms / end) * (width - left - 20);
  const y = (v: number): number => top + plot - (v / max) * plot;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${top + plot + 40 + records.length * 0}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="18" font-size="14">${esc(title)}</text>`,
  ];
  for (const r of records) {
    const bad = r.lost.length > 0 || r.dualWritableSamples > 0 || r.dualVipSamples > 0 || r.falseFailover;
    parts.push(`<rect x="${x(r.start).toFixed(1)}" y="${top}" width="${Math.max(1, x(r.healed) - x(r.start)).toFixed(1)}" height="${plot}" fill="${bad ? '#f4a6a6' : '#dde6f3'}"><title>${esc(`${r.labels.join(' + ')}: acked ${r.acknowledged}, lost ${r.lost.length}, dual-writable ${r.dualWritableSamples}, dual-VIP ${r.dualVipSamples}, promotions ${r.promotions}${r.falseFailover ? ' (false failover)' : ''}`)}</title></rect>`);
    if (r.promotions > 0) parts.push(`<line x1="${x(r.start).toFixed(1)}" y1="${top}" x2="${x(r.start).toFixed(1)}" y2="${top + plot}" stroke="${r.falseFailover ? '#d62728' : '#2ca02c'}" stroke-width="2"/>`);
  }
  const path = buckets.map((v, k) => `${k === 0 ? 'M' : 'L'}${x(k * 1000).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  parts.push(
    `<line x1="${left}" y1="${top + plot}" x2="${width - 20}" y2="${top + plot}" stroke="#999"/>`,
    `<text x="${left - 6}" y="${top + 10}" text-anchor="end">${max}/s</text>`,
    `<text x="${left - 6}" y="${top + plot}" text-anchor="end">0</text>`,
    `<text x="${width - 20}" y="${top + plot + 14}" text-anchor="end">${Math.round(end / 1000)} s</text>`,
    `<text x="${left}" y="${top + plot + 30}">blue: a fault window; red: one that lost a write, saw two writable nodes or two VIP holders, or promoted without a leader fault; green/red line: a promotion</text>`,
    `<path d="${path}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>`,
    '</svg>',
  );
  return `${parts.join('\n')}\n`;
}
