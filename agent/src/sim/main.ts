import { INIT_TIMINGS, type Timings } from './cluster.ts';
import { runSeed } from './run.ts';

/**
 * `npm run sim -- [--seeds N] [--seed S] [--minutes M] [--first F] [--trace] [--timings fenceAfter=4000,promoteAfter=6000]`:
 * deterministic simulation of the agent, with init's failover timings unless --timings says otherwise.
 */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('--minutes') ?? 3);
const one = arg('--seed');
const seeds = Number(arg('--seeds') ?? 100);
const first = Number(arg('--first') ?? 1);
const showTrace = process.argv.includes('--trace');
const timings = parseTimings(arg('--timings'));

function parseTimings(text: string | undefined): Partial<Timings> {
  const out: Partial<Timings> = {};
  for (const part of text ? text.split(',') : []) {
    const [key, value] = part.split('=');
    if (!key || !(key in INIT_TIMINGS) || !/^\d+$/.test(value ?? '')) {
      process.stderr.write(`--timings: expected KEY=MILLISECONDS[,...] with KEY one of ${Object.keys(INIT_TIMINGS).join(', ')}; got ${JSON.stringify(part)}\n`);
      process.exit(2);
    }
    out[key as keyof Timings] = Number(value);
  }
  return out;
}

const started = performance.now();
let violations = 0;
let acked = 0;
let events = 0;
let faults = 0;
let needlessKills = 0;
const recoveries: number[] = [];
const list = one !== undefined ? [Number(one)] : Array.from({ length: seeds }, (_, i) => first + i);
for (const seed of list) {
  const r = await runSeed(seed, minutes, { timings });
  acked += r.acked;
  events += r.events;
  faults += r.faults;
  needlessKills += r.needlessKills;
  if (r.recoveryMs !== undefined) recoveries.push(r.recoveryMs);
  if (r.violations.length > 0 || (showTrace && one !== undefined)) {
    if (r.violations.length > 0) violations++;
    process.stdout.write(`\nseed ${seed}: ${r.violations.map((v) => `${(v.at / 1000).toFixed(3)}s ${v.what}`).join('; ') || 'no violation'}\n`);
    process.stdout.write(`${r.trace.join('\n')}\n`);
    process.stdout.write(`replay: npm run sim -- --seed ${seed} --minutes ${minutes} --trace\n`);
  }
  if (list.length >= 50 && (seed - first + 1) % Math.ceil(list.length / 10) === 0) {
    process.stderr.write(`${seed - first + 1}/${list.length} seeds, ${violations} with violations, ${((seed - first + 1) / ((performance.now() - started) / 1000)).toFixed(1)} seeds/s\n`);
  }
}
const secs = (performance.now() - started) / 1000;
recoveries.sort((a, b) => a - b);
const p = (q: number): string => (recoveries.length ? (recoveries[Math.min(recoveries.length - 1, Math.floor(q * recoveries.length))]! / 1000).toFixed(1) : '-');
process.stdout.write(`timings (ms): ${Object.entries({ ...INIT_TIMINGS, ...timings }).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
process.stdout.write(`${list.length} seeds × ${minutes} virtual min in ${secs.toFixed(1)} s: ${(list.length / secs).toFixed(1)} seeds/s, ${events} events, ${faults} faults, ${acked} acknowledged writes; recovery after heal p50 ${p(0.5)} s, max ${p(1)} s; watchdog kills of agents that were not frozen: ${needlessKills}\n`);
process.stdout.write(`violations: ${violations}\n`);
process.exit(violations > 0 ? 1 : 0);
