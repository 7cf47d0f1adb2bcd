import { existsSync } from 'node:fs';
import { chown, copyFile, mkdir, readdir, rename, rm, statfs, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { basename, dirname, join } from 'node:path';
import { readPayload, type PayloadSummary } from '#common/backup/archive.ts';
import { extractSink } from '#common/backup/extract.ts';
import { syncDirectory, writeFileAtomic } from '#common/fsutil.ts';
import type { Agent } from './agent.ts';
import { setAsideDataDir } from './adapters/pg.ts';
import { localHost, osUserIds, setAutoConf, withClient } from './postgres.ts';
import { preRestoreName, RESTORE_CONF, restoreMarker, stagingDir } from './restorestate.ts';

export { RESTORE_CONF } from './restorestate.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Archive recovery from the backup's own WAL (pg_wal; there is no archive), stopping as soon
 * as the data is consistent, then promoting: PostgreSQL starts a new timeline, numbered past
 * every timeline history file in pg_wal. The restore copies the replaced directory's history
 * files there, so the new timeline is one this cluster has never used, and no standby can take
 * the restored history for the one it knew (pg_rewind trusts that a timeline id means one history).
 */
export function restoreConf(): string {
  const settings: [string, string][] = [
    ['restore_command', '/bin/false'],
    ['recovery_target', 'immediate'],
    ['recovery_target_action', 'promote'],
    ['recovery_target_timeline', 'current'],
  ];
  return `# geminik8s: recovery of a restored base backup; removed once it has promoted.\n${settings.map(([k, v]) => `${k} = '${v}'`).join('\n')}\n`;
}

/** Why this node will not take a restore of `meta` now, or undefined. */
export function restoreRefusal(f: { cluster: string; backupCluster: string; pgMajor: number; backupPgMajor: number }): string | undefined {
  if (f.backupCluster !== f.cluster) return `the backup is of cluster ${f.backupCluster}, this node belongs to ${f.cluster}`;
  if (f.backupPgMajor !== f.pgMajor) return `the backup is of PostgreSQL ${f.backupPgMajor}, this node runs ${f.pgMajor}`;
  return undefined;
}

export interface RestoreResult {
  ok: boolean;
  reason: string;
  timeline?: number;
  /** The replaced data directory, kept. */
  kept?: string;
  files?: number;
  bytes?: number;
}

/**
 * A restore on the leader: extract the backup streamed in `req` to a staging directory,
 * checking every file against its manifest (nothing is touched if anything is wrong); then,
 * with the control loop held off, forbid promotion at the witness, stop K3s and Kine, stop
 * PostgreSQL, swap the directories, recover and promote onto a new timeline, and start K3s
 * again. The standby's history is now another one: the operator re-clones it (/v1/reclone).
 */
export async function restoreHere(agent: Agent, req: IncomingMessage, declaredBytes: number | undefined): Promise<{ status: number; body: RestoreResult }> {
  const { ctx } = agent;
  const c = agent.controller;
  const dataDir = ctx.config.postgresql.dataDir;
  const refuse = (reason: string, status = 409) => ({ status, body: { ok: false, reason } });
  if (agent.role !== 'leader' || !c.mayWrite()) return refuse(`this node is the ${agent.role}${agent.role === 'leader' ? ' without a valid lease' : ''}: restore on the leader`);
  const staging = stagingDir(dataDir);
  if (declaredBytes !== undefined) {
    const fs = await statfs(dirname(dataDir));
    const free = Number(fs.bavail) * Number(fs.bsize);
    if (free < declaredBytes * 1.1) return refuse(`only ${free} bytes free beside ${dataDir} for a ${declaredBytes}-byte backup (and 10 % to spare)`);
  }
  const ids = await osUserIds(ctx.config.postgresql.osUser);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { mode: 0o700 });
  await chown(staging, ids.uid, ids.gid);
  let summary: PayloadSummary;
  try {
    summary = await readPayload(req, extractSink(staging, ids));
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    return refuse(`the backup stream is not whole, nothing was changed: ${(err as Error).message}`, 400);
  }
  const local = await withClient(ctx, localHost(ctx), async (cl) => Number((await cl.query(`SELECT current_setting('server_version_num') AS v`)).rows[0].v), 10_000).catch(() => undefined);
  const refusal = restoreRefusal({ cluster: ctx.spec.name, backupCluster: summary.meta.cluster, pgMajor: Math.floor((local ?? 0) / 10000), backupPgMajor: Math.floor(summary.meta.pgVersion / 10000) });
  if (refusal || local === undefined) {
    await rm(staging, { recursive: true, force: true });
    return refuse(`${refusal ?? 'PostgreSQL does not answer here'}; nothing was changed`);
  }
  agent.log.warn({ event: 'restore', backup: { node: summary.meta.node, createdAt: summary.meta.createdAt, startLsn: summary.meta.startLsn, timeline: summary.meta.timeline }, files: summary.files, bytes: summary.bytes }, `restore: the backup of ${summary.meta.createdAt} is whole (${summary.files} files); replacing the data directory`);
  const r = await c.exclusive('restore', ['leader'], async (): Promise<RestoreResult> => {
    const { pg, kube } = c.ports;
    if (!c.mayWrite()) throw new Error('the lease was lost before the restore began; nothing was changed');
    if (!(await c.forbidPromotion()).ok) throw new Error('the witness did not record that nobody may be promoted; nothing was changed');
    await kube.stop();
    await pg.stop();
    // The history files of every timeline this cluster used, so the restored one gets a new number.
    const wal = join(dataDir, 'pg_wal');
    for (const f of (await readdir(wal).catch(() => [])).filter((n) => /^[0-9A-F]{8}\.history$/.test(n))) {
      const target = join(staging, 'pg_wal', f);
      if (existsSync(target)) continue;
      await copyFile(join(wal, f), target);
      await chown(target, ids.uid, ids.gid);
    }
    const parent = dirname(dataDir.replace(/\/+$/, ''));
    const prefix = `${basename(dataDir.replace(/\/+$/, ''))}.pre-restore-`;
    for (const old of (await readdir(parent)).filter((e) => e.startsWith(prefix))) await rm(join(parent, old), { recursive: true, force: true });
    const aside = preRestoreName(dataDir, new Date());
    await writeFileAtomic(restoreMarker(ctx), JSON.stringify({ aside, staging }), 0o600, { syncDir: true });
    await rename(dataDir, aside);
    await rename(staging, dataDir);
    await syncDirectory(parent);
    await rm(restoreMarker(ctx), { force: true });
    await rm(join(dataDir, 'standby.signal'), { force: true });
    await mkdir(join(dataDir, 'conf.d'), { recursive: true, mode: 0o700 });
    await chown(join(dataDir, 'conf.d'), ids.uid, ids.gid);
    await writeFile(join(dataDir, 'conf.d', RESTORE_CONF), restoreConf());
    await chown(join(dataDir, 'conf.d', RESTORE_CONF), ids.uid, ids.gid);
    // Writable at once, degraded: the witness records nobody as promotable until the re-cloned
    // standby is synchronous again (the loop's restoreSync and setPromotable).
    await setAutoConf(ctx, { synchronous_standby_names: '' });
    await writeFile(join(dataDir, 'recovery.signal'), '');
    await chown(join(dataDir, 'recovery.signal'), ids.uid, ids.gid);
    await pg.start();
    const until = performance.now() + 10 * 60_000;
    let st = await pg.status();
    while (!(st.up && st.inRecovery === false)) {
      if (performance.now() > until) throw new Error(`the restored server did not finish recovery in 10 minutes (${st.error ?? 'still in recovery'}); the replaced data directory is ${aside}`);
      await sleep(250);
      st = await pg.status();
    }
    await rm(join(dataDir, 'conf.d', RESTORE_CONF), { force: true });
    await pg.ensurePeerSlot();
    const timeline = st.timeline ?? 0;
    await c.recordRestore(timeline, `restored the backup of ${summary.meta.createdAt} (taken on ${summary.meta.node} at ${summary.meta.startLsn}, timeline ${summary.meta.timeline})`);
    await kube.restart();
    return { ok: true, reason: `restored; PostgreSQL is a primary on timeline ${timeline}`, timeline, kept: aside, files: summary.files, bytes: summary.bytes };
  }).catch((err: Error) => ({ ok: false as const, reason: err.message }));
  await rm(staging, { recursive: true, force: true });
  if (!r.ok) {
    agent.log.error({ event: 'restore', reason: r.reason }, `restore failed: ${r.reason}`);
    return refuse(r.reason);
  }
  if ('value' in r && !r.value.ok) return refuse(r.value.reason);
  agent.log.warn({ event: 'restore', timeline: r.value.timeline, kept: r.value.kept }, r.value.reason);
  return { status: 200, body: r.value };
}

/**
 * Re-clone this follower from the leader: its data directory set aside (or deleted when the
 * disk is short), a fresh pg_basebackup, started as a standby. After a restore, or whenever an
 * operator wants a standby rebuilt.
 */
export async function recloneHere(agent: Agent): Promise<{ status: number; body: { ok: boolean; reason: string; kept?: string } }> {
  const c = agent.controller;
  const r = await c.exclusive('re-clone', ['follower'], async () => {
    const { pg } = c.ports;
    await pg.stop();
    const aside = await setAsideDataDir(agent.ctx);
    await pg.clone();
    await pg.start();
    return aside;
  }).catch((err: Error) => ({ ok: false as const, reason: err.message }));
  if (!r.ok) {
    agent.log.error({ event: 're-clone', reason: r.reason }, `re-clone failed: ${r.reason}`);
    return { status: 409, body: { ok: false, reason: r.reason } };
  }
  const reason = `re-cloned from ${agent.ctx.peer.name}; ${r.value.kept ? `the old data directory is kept as ${r.value.kept}` : `the old data directory was deleted (${r.value.reason})`}`;
  agent.log.warn({ event: 're-clone', kept: r.value.kept }, reason);
  return { status: 200, body: { ok: true, reason, ...(r.value.kept ? { kept: r.value.kept } : {}) } };
}
