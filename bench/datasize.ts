// npm run bench:datasize -- [--sizes 0.1,1,5] [--systems geminik8s,patroni:tuned,pg_auto_failover:tuned] [--checkpoint] [--keep-data] [--json FILE]
// Failover and rejoin as the data grows (issue 16): for each system and each size (GB), a fresh
// pair on the namespace harness, `pgbench -i` at the matching scale on the leader with the writer
// running through the VIP, then a leader power loss (failover: the fault to the first
// acknowledged write after the outage) and the old leader's power-on (rejoin: to a synchronous
// standby again). Every system's rejoin reports what the old leader's NIC received meanwhile and
// which of pg_rewind and pg_basebackup its log shows it ran; geminik8s also reports how its
// agent rejoined and what pg_rewind said it copied. --checkpoint: a CHECKPOINT on the leader
// after the load (a database at rest) before the fault. Each run's data directories are removed
// after it, its log kept (--keep-data keeps them). Prints figures; asserts nothing.
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HarnessCluster, type PairHarness } from '#test/harness/cluster.ts';
import { arg } from './args.ts';
import { checkSystems, harnessFor, leaderPowerLoss } from './failover-figures.ts';

/** pgbench's scale factor for about `gb` gigabytes: one scale unit is 100,000 accounts, about 15 MB with indexes. */
export function pgbenchScale(gb: number): number {
  return Math.max(1, Math.round((gb * 1024) / 15));
}

interface SizeFigures {
  sizeGB: number;
  scale: number;
  /** pg_database_size of the writer's database before the fault. */
  databaseMB: number;
  loadSeconds: number;
  failoverSeconds: number;
  rejoinSeconds: number;
  rejoinSyncSeconds: number;
  writesLost: number;
  dualPrimarySamples: number;
  /** What the old leader's NIC received while it rejoined, for every system. */
  rejoinReceivedMB: number;
  /** The tools its system ran to rejoin, from its log (`pg_rewind`, `pg_basebackup`). */
  rejoinTools: string[];
  /** geminik8s: how the old leader rejoined, and what pg_rewind said it copied. */
  rejoinMethod?: string;
  copiedMB?: number;
  sourceMB?: number;
}

async function measure(c: PairHarness, gb: number): Promise<SizeFigures> {
  await c.start();
  const leader0 = await c.waitFor(`${c.system}: leader + synchronous standby`, () => c.healthyPair(), 180_000);
  c.startTraffic(3 * 3600);
  await c.waitFor('first writes', async () => (c.acks.length > 20 ? true : undefined), 60_000);
  const scale = pgbenchScale(gb);
  const login = c.writerLogin();
  const t0 = Date.now();
  c.log(`=== ${c.system} ${gb} GB: pgbench -i -s ${scale} on ${leader0}`);
  await c.pgbenchInit(leader0, scale);
  const loadSeconds = (Date.now() - t0) / 1000;
  const leader = await c.waitFor('leader + synchronous standby after the load', () => c.healthyPair(), 1800_000);
  if (checkpoint) {
    // A database at rest: the load is behind a checkpoint, as it is minutes later in service
    // (checkpoint_timeout is 5 min); without it the fault strikes right after a bulk write.
    await c.sql(leader, 'CHECKPOINT', 'postgres');
    await new Promise((r) => setTimeout(r, 5000));
  }
  const databaseMB = Math.round(Number(await c.sql(leader, `SELECT pg_database_size('${login.database}')`)) / 1024 ** 2);
  const p = await leaderPowerLoss(c, leader, `${c.system} ${gb} GB (${databaseMB} MB)`, 10);
  const figures: SizeFigures = { sizeGB: gb, scale, databaseMB, loadSeconds, failoverSeconds: p.failoverSeconds, rejoinSeconds: p.rejoinSeconds, rejoinSyncSeconds: p.rejoinSyncSeconds, rejoinReceivedMB: p.rejoinReceivedMB, rejoinTools: p.rejoinTools, writesLost: p.writesLost, dualPrimarySamples: p.dualPrimarySamples };
  if (c instanceof HarnessCluster) {
    const rejoin = c.rejoinOf(leader, p.tOn);
    if (rejoin) Object.assign(figures, { rejoinMethod: rejoin.method as string }, typeof rejoin.copiedMB === 'number' ? { copiedMB: rejoin.copiedMB as number, sourceMB: rejoin.sourceMB as number } : {});
  }
  return figures;
}

const sizes = arg('--sizes', '0.1,1,5').split(',').map(Number);
const systems = arg('--systems', 'geminik8s').split(',');
const jsonFile = arg('--json', 'datasize-bench.json');
const checkpoint = process.argv.includes('--checkpoint');
const keepData = process.argv.includes('--keep-data');
if (sizes.some((s) => !Number.isFinite(s) || s <= 0 || s > 100)) {
  console.error(`--sizes: expected sizes in GB between 0 and 100, comma-separated (found ${arg('--sizes', '')})`);
  process.exit(2);
}
checkSystems('--systems', systems);
if (process.getuid?.() !== 0) {
  console.error('bench:datasize needs root (network namespaces)');
  process.exit(2);
}

const result: Record<string, SizeFigures[]> = {};
for (const system of systems) {
  for (const gb of sizes) {
    const dir = mkdtempSync(join(tmpdir(), `gk-bench-size-${system.replace(':', '-')}-`));
    const c = harnessFor(system, dir, 'gkd');
    try {
      const f = await measure(c, gb);
      (result[system] ??= []).push(f);
      console.log(`${system} ${gb} GB (scale ${f.scale}, database ${f.databaseMB} MB, loaded in ${f.loadSeconds.toFixed(0)} s): failover ${f.failoverSeconds.toFixed(2)} s, rejoin ${f.rejoinSeconds.toFixed(1)} s (synchronous standby after ${f.rejoinSyncSeconds.toFixed(1)} s)${f.rejoinMethod ? ` through ${f.rejoinMethod}${f.copiedMB !== undefined ? `, copying ${f.copiedMB} MB of ${f.sourceMB} MB` : ''}` : ''} (ran ${f.rejoinTools.join(' then ') || 'neither pg_rewind nor pg_basebackup'}, received ${f.rejoinReceivedMB} MB), lost ${f.writesLost}, dual-primary samples ${f.dualPrimarySamples}`);
    } finally {
      await c.stop();
      // Two copies of the database and the WAL per run (about 13 GB at 5 GB): keep the log only.
      if (!keepData) for (const entry of readdirSync(dir)) if (join(dir, entry) !== c.logFile) rmSync(join(dir, entry), { recursive: true, force: true });
      console.log(`${system} ${gb} GB: log in ${c.logFile}${keepData ? `, data kept in ${dir}` : ''}`);
    }
    // After each size: a long run cut short still leaves the sizes it finished.
    writeFileSync(jsonFile, `${JSON.stringify({ sizesGB: sizes, checkpointAfterLoad: checkpoint, systems: result }, null, 2)}\n`);
  }
}
console.log(`wrote ${jsonFile}`);
