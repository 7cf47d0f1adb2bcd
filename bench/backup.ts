// npm run bench:backup -- [--mb N] [--runs N] [--json FILE]
// Backup and restore throughput on the namespace pair (real PostgreSQL, the real agent, the
// configuration init writes), against plain pg_basebackup of the same data on the leader.
// Prints figures; asserts nothing (these machines are noisy).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { HarnessCluster, PG_BIN } from '#test/harness/cluster.ts';
import { inNs } from '#lab/netns.ts';
import { ROOT } from '#test/helpers/fixtures.ts';
import { arg } from './args.ts';


const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor((v.length - 1) / 2)]!;

const mb = Number(arg('--mb', '300'));
const runs = Number(arg('--runs', '3'));
const json = arg('--json', '');
const dir = mkdtempSync(join(tmpdir(), 'gk-bench-backup-'));
const cluster = new HarnessCluster(mkdtempSync(join(tmpdir(), 'gk-failover-')));
try {
  await cluster.start();
  const leader = await cluster.waitFor('leader + synchronous standby', () => cluster.healthyPair(), 180_000);
  const rows = Math.ceil((mb * 1e6) / 1100);
  const loaded = await runPlan(inNs(cluster.topology.nodeNs[leader]!, 'psql', ['-h', '127.0.0.1', '-U', 'postgres', '-d', 'postgres', '-XAtq', '-c',
    `CREATE TABLE IF NOT EXISTS bench_data (id int, v text); INSERT INTO bench_data SELECT g, string_agg(md5(random()::text), '') FROM generate_series(1, ${rows}) g, generate_series(1, 32) k GROUP BY g; CHECKPOINT; SELECT pg_database_size('postgres')`],
  { PGPASSWORD: cluster.superuserPassword() }), { timeoutMs: 3_600_000 });
  const dbBytes = Number(loaded.stdout.trim().split('\n').pop());
  await cluster.waitFor('a healthy pair after loading', () => cluster.healthyPair(), 600_000);
  const key = join(dir, 'backup.key');
  writeFileSync(key, randomBytes(32).toString('hex'), { mode: 0o600 });
  const clusterFile = join(cluster.configDir, 'cluster.yaml');
  const cli = (...args: string[]) => runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), ...args]), { timeoutMs: 3_600_000 });
  const plain: number[] = [];
  const ours: number[] = [];
  const oursEnc: number[] = [];
  const restore: number[] = [];
  let fileBytes = 0;
  for (let i = 0; i < runs; i++) {
    // Plain pg_basebackup of the same server, tar to a file, as the agent runs it (local socket, WAL fetched).
    const out = join(dir, `plain-${i}.tar`);
    const t0 = performance.now();
    await runPlan(inNs(cluster.topology.nodeNs[leader]!, 'sh', ['-c', `runuser -u postgres -- ${PG_BIN}/pg_basebackup -h ${join(cluster.nodeDir(leader), 'run')} -U postgres -D - -F tar -X fetch -c fast --manifest-checksums=SHA256 > ${out}`]), { timeoutMs: 3_600_000 });
    plain.push((performance.now() - t0) / 1000);
    rmSync(out);
    for (const [series, extra] of [[ours, []], [oursEnc, ['--encryption-key', key]]] as const) {
      const file = join(dir, `ours-${i}-${series === ours ? 'plain' : 'enc'}.gkbackup`);
      const t1 = performance.now();
      await cli('backup', '--cluster', clusterFile, '--output', file, ...extra);
      series.push((performance.now() - t1) / 1000);
      fileBytes = statSync(file).size;
      if (series === oursEnc && i === runs - 1) {
        const t2 = performance.now();
        await cli('restore', '--cluster', clusterFile, '--backup-file', file, '--encryption-key', key, '--force');
        restore.push((performance.now() - t2) / 1000);
      }
      rmSync(file);
    }
  }
  const rate = (s: number): string => `${(dbBytes / 1e6 / s).toFixed(1)} MB/s`;
  const figures = {
    database: { bytes: dbBytes, backupFileBytes: fileBytes },
    pgBasebackupSeconds: median(plain), backupSeconds: median(ours), encryptedBackupSeconds: median(oursEnc), restoreSeconds: restore[0],
    runs: { plain, ours, oursEnc, restore },
  };
  console.log(`database ${(dbBytes / 1e6).toFixed(0)} MB, backup file ${(fileBytes / 1e6).toFixed(0)} MB; median of ${runs} runs:`);
  console.log(`  pg_basebackup on the leader (tar, local socket): ${figures.pgBasebackupSeconds.toFixed(1)} s, ${rate(figures.pgBasebackupSeconds)}`);
  console.log(`  geminik8s backup from the client namespace (TLS, manifest checked): ${figures.backupSeconds.toFixed(1)} s, ${rate(figures.backupSeconds)}`);
  console.log(`  geminik8s backup --encryption-key (AES-256-GCM): ${figures.encryptedBackupSeconds.toFixed(1)} s, ${rate(figures.encryptedBackupSeconds)}`);
  if (restore[0] !== undefined) console.log(`  geminik8s restore (check, stream, swap, recover, re-clone, healthy pair): ${restore[0].toFixed(1)} s, ${rate(restore[0])}`);
  if (json) writeFileSync(json, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
}
