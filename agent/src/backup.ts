import { streamPlan, type StreamingProcess } from '#common/exec.ts';
import type { Agent } from './agent.ts';
import { backupPlan, localHost, withClient } from './postgres.ts';

/** Who the backup is of, sent ahead of its bytes (the operator's file header records it). */
export interface BackupIdentity {
  cluster: string;
  node: string;
  generation: number;
  systemIdentifier: string;
  timeline: number;
  startLsn: string;
  pgVersion: number;
}

/** Why this node will not take a backup now, or undefined when it will. */
export function backupRefusal(f: { role: string; pgUp: boolean; inRecovery?: boolean; readOnly?: boolean; running: boolean }): string | undefined {
  if (f.running) return 'a backup is already running on this node';
  if (f.role !== 'leader') return `this node is the ${f.role}, not the leader: back up from the leader's primary`;
  if (!f.pgUp) return 'PostgreSQL does not answer here';
  if (f.inRecovery) return 'PostgreSQL is a standby here';
  if (f.readOnly) return 'the primary is read-only (fenced or switching over)';
  return undefined;
}

let running = false;

/**
 * Start a base backup of this node's primary: its identity, then pg_basebackup's tar as a
 * stream (`streamPlan`). One at a time per node; the caller must read the stream to its end
 * and then await `done`, which fails when pg_basebackup does.
 */
export async function startBackup(agent: Agent): Promise<{ ok: false; reason: string } | { ok: true; identity: BackupIdentity; proc: StreamingProcess }> {
  const pg = agent.snapshot.round?.pg;
  const refusal = backupRefusal({ role: agent.role, pgUp: Boolean(pg?.up), inRecovery: pg?.inRecovery, readOnly: pg?.readOnly, running });
  if (refusal) return { ok: false, reason: refusal };
  const { ctx } = agent;
  running = true;
  try {
    const row = await withClient(ctx, localHost(ctx), async (c) => (await c.query(`SELECT (SELECT system_identifier::text FROM pg_control_system()) AS sysid,
        (SELECT timeline_id FROM pg_control_checkpoint()) AS tli, current_setting('server_version_num')::int AS version,
        pg_current_wal_lsn()::text AS lsn, pg_is_in_recovery() AS rec`)).rows[0] as { sysid: string; tli: number; version: number; lsn: string; rec: boolean }, 10_000);
    if (row.rec) {
      running = false;
      return { ok: false, reason: 'PostgreSQL is a standby here' };
    }
    const identity: BackupIdentity = {
      cluster: ctx.spec.name, node: ctx.self.name, generation: agent.meta.generation,
      systemIdentifier: row.sysid, timeline: row.tli, startLsn: row.lsn, pgVersion: row.version,
    };
    const proc = streamPlan(backupPlan(ctx));
    proc.done.then(
      () => agent.log.info({ event: 'backup', ...identity }, 'base backup streamed'),
      (err: Error) => agent.log.warn({ event: 'backup', err: err.message.split('\n').slice(-3).join(' ') }, 'base backup failed'),
    ).finally(() => {
      running = false;
    });
    agent.log.info({ event: 'backup', ...identity }, 'base backup started');
    return { ok: true, identity, proc };
  } catch (err) {
    running = false;
    throw err;
  }
}
