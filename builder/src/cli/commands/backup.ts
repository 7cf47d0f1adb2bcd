import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Command } from 'commander';
import { parseBackupKey } from '#common/backup/format.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { pruneBackups, takeBackup, verifyBackupFile, verifyWithPostgres } from '../../ops/backup.ts';
import { planRestore, requestReclone, runRestore } from '../../ops/restore.ts';
import { renderStatusTable } from '../../ops/status.ts';
import { durationFlag, type CliContext } from '../context.ts';
import { operatorSetup } from './status.ts';

/** The key of --encryption-key; a key others can read is refused (it opens every backup made with it). */
export async function readKeyFile(file: string | undefined): Promise<Buffer | undefined> {
  if (!file) return undefined;
  let content: Buffer;
  try {
    content = await readFile(file);
  } catch (err) {
    throw new GeminiError(`--encryption-key ${file}: ${(err as Error).message}`, ExitCode.invalidInput);
  }
  const mode = (await stat(file)).mode & 0o077;
  if (mode !== 0) throw new GeminiError(`--encryption-key ${file}: readable by others (mode ${((await stat(file)).mode & 0o777).toString(8)}): chmod 600 it first`, ExitCode.refused);
  return parseBackupKey(content, file);
}


interface BackupOptions {
  cluster?: string;
  output: string;
  encryptionKey?: string;
  retention?: string;
  verify?: boolean;
  force?: boolean;
}

export function registerBackup(program: Command, ctx: () => CliContext): void {
  program
    .command('backup')
    .description('stream a base backup of the leader\'s primary, checked against its manifest, with the K3s server token, into one file (encrypted with --encryption-key)')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token, the K3s token and the CA')
    .requiredOption('--output <file>', 'the backup file to write (0600; written aside and renamed when whole)')
    .option('--encryption-key <file>', 'AES-256-GCM key: 32 bytes, or 64 hex digits (openssl rand -hex 32)')
    .option('--retention <n>', 'then keep only the newest N backups of this cluster in the output\'s directory')
    .option('--verify', 'read the file back and run pg_verifybackup on its contents (needs postgresql-client)')
    .option('--force', 'replace an existing --output')
    .action(async (opts: BackupOptions) => {
      const c = ctx();
      let retention: number | undefined;
      if (opts.retention !== undefined) {
        retention = Number(opts.retention);
        if (!Number.isInteger(retention) || retention < 1) throw new GeminiError(`--retention: expected a whole number of at least 1, found ${JSON.stringify(opts.retention)}`, ExitCode.invalidInput);
      }
      const key = await readKeyFile(opts.encryptionKey);
      const { cluster, secrets, tls, fetcher } = await operatorSetup(opts.cluster, c);
      c.logger.info(`backup of ${cluster.name} to ${opts.output}${key ? ' (encrypted)' : ''}`);
      const r = await takeBackup(cluster, secrets, tls, fetcher, { output: opts.output, key, force: opts.force, progress: (l) => c.logger.info(l) });
      const mb = r.bytesWritten / 1e6;
      c.print(`${r.file}: ${mb.toFixed(1)} MB from ${r.header.node} (generation ${r.header.generation}, timeline ${r.header.timeline}, from ${r.header.startLsn}) in ${r.seconds.toFixed(1)} s, ${(mb / r.seconds).toFixed(1)} MB/s${key ? ', AES-256-GCM' : ''}`);
      if (opts.verify) {
        const v = await verifyWithPostgres(r.file, key);
        c.print(`verified: ${v.summary.files} files, ${(v.summary.bytes / 1e6).toFixed(1)} MB match the manifest; ${v.tool} passed`);
      }
      if (retention !== undefined) {
        const removed = await pruneBackups(dirname(resolve(opts.output)), cluster.name, retention);
        for (const f of removed) c.print(`removed older backup ${f}`);
      }
    });

  program
    .command('check-backup')
    .description('check a backup file without touching the cluster: every chunk authenticated, every file against the manifest')
    .argument('<file>', 'the backup file')
    .option('--encryption-key <file>', 'the key it was encrypted with')
    .option('--pg-verifybackup', 'also extract it to a scratch directory and run pg_verifybackup (needs postgresql-client)')
    .action(async (file: string, opts: { encryptionKey?: string; pgVerifybackup?: boolean }) => {
      const c = ctx();
      const key = await readKeyFile(opts.encryptionKey);
      if (opts.pgVerifybackup) {
        const v = await verifyWithPostgres(file, key);
        c.print(`${file}: whole; ${v.summary.files} files, ${(v.summary.bytes / 1e6).toFixed(1)} MB of cluster ${v.summary.meta.cluster} from ${v.summary.meta.createdAt}; ${v.tool} passed`);
        return;
      }
      const s = await verifyBackupFile(file, key);
      c.print(`${file}: whole; ${s.files} files, ${(s.bytes / 1e6).toFixed(1)} MB of cluster ${s.meta.cluster} (node ${s.meta.node}, generation ${s.meta.generation}) from ${s.meta.createdAt}`);
    });

  program
    .command('restore')
    .description('restore a backup onto the pair: the whole file checked first, then the leader\'s data replaced (a new timeline) and the follower re-cloned; every write after the backup is discarded')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token, the K3s token and the CA')
    .requiredOption('--backup-file <file>', 'the backup file (geminik8s backup)')
    .option('--encryption-key <file>', 'the key it was encrypted with')
    .option('--dry-run', 'check the whole file and print the plan; change nothing')
    .option('--force', 'go ahead without asking: this discards every write made after the backup')
    .option('--timeout <duration>', 'how long to wait for a healthy pair afterwards', '15m')
    .action(async (opts: { cluster?: string; backupFile: string; encryptionKey?: string; dryRun?: boolean; force?: boolean; timeout: string }) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '15m');
      const key = await readKeyFile(opts.encryptionKey);
      const { cluster, secrets, tls, fetcher } = await operatorSetup(opts.cluster, c);
      c.logger.info(`checking ${opts.backupFile} as a whole before anything is touched`);
      const plan = await planRestore(cluster, secrets, fetcher, opts.backupFile, key);
      const h = plan.header;
      c.print(`backup of ${h.cluster} taken ${h.createdAt} on ${h.node} (generation ${h.generation}, timeline ${h.timeline}, from ${h.startLsn}, PostgreSQL ${Math.floor(h.pgVersion / 10000)}): whole, ${plan.files} files, ${(plan.bytes / 1e6).toFixed(1)} MB`);
      if (!plan.ok) throw new GeminiError(`refusing to restore: ${plan.reason}`, ExitCode.refused);
      c.print(`restore onto ${plan.leader}:\n${plan.steps.map((s, i) => `  ${i + 1}. ${s}`).join('\n')}`);
      if (opts.dryRun) return;
      if (!opts.force) throw new GeminiError(`a restore discards every write made after ${h.createdAt}: give --force to go ahead (--dry-run shows the plan)`, ExitCode.refused);
      const started = performance.now();
      const r = await runRestore(cluster, secrets, tls, fetcher, opts.backupFile, key, plan, timeout);
      c.print(`${plan.leader}: restored; PostgreSQL is a primary on timeline ${r.timeline}${r.kept ? `; the replaced data directory is kept as ${r.kept}` : ''}`);
      if (r.reclone) c.print(`${plan.follower}: ${r.reclone.ok ? r.reclone.reason : `re-clone failed: ${r.reclone.reason}`}`);
      c.print(renderStatusTable(r.status));
      c.print(`restore took ${((performance.now() - started) / 1000).toFixed(1)} s`);
      if (r.reclone && !r.reclone.ok) throw new GeminiError(`the leader is restored, but ${plan.follower} was not re-cloned: run geminik8s reclone --node ${plan.follower}`, ExitCode.commandFailed);
      if (!r.healthy) throw new GeminiError(`no healthy pair led by ${plan.leader} within ${opts.timeout}: ${r.status.reasons.join('; ')}`, ExitCode.timeout);
    });

  program
    .command('reclone')
    .description('rebuild a follower\'s standby from the leader: its data directory set aside (or deleted when the disk is short), a fresh clone')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token')
    .requiredOption('--node <name>', 'the follower to re-clone')
    .action(async (opts: { cluster?: string; node: string }) => {
      const c = ctx();
      const { cluster, secrets, tls } = await operatorSetup(opts.cluster, c);
      const r = await requestReclone(cluster, secrets, tls, opts.node);
      if (!r.ok) throw new GeminiError(`${opts.node} was not re-cloned: ${r.reason}`, ExitCode.refused);
      c.print(`${opts.node}: ${r.reason}`);
    });
}
