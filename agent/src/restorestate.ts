import { existsSync } from 'node:fs';
import { readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeContext } from './context.ts';

// What a restore leaves on disk, for the pg adapter to clean up at start (no import of it here).

/** Where a restore extracts the backup before it replaces the data directory (same file system: a rename). */
export function stagingDir(dataDir: string): string {
  return `${dataDir.replace(/\/+$/, '')}.restore-staging`;
}

/** The data directory a restore replaced, kept: `<dataDir>.pre-restore-<ISO time without colons>`. */
export function preRestoreName(dataDir: string, at: Date): string {
  return `${dataDir.replace(/\/+$/, '')}.pre-restore-${at.toISOString().replaceAll(':', '')}`;
}

/** Present between the two renames of a restore: what to undo if the agent dies in between. */
export function restoreMarker(ctx: NodeContext): string {
  return join(ctx.config.stateDir, 'restore-in-progress.json');
}

/**
 * At start, after an agent that died between a restore's two renames: put the replaced data
 * directory back if the restored one is not in place; drop a staging directory left behind.
 */
export async function finishInterruptedRestore(ctx: NodeContext, log: (msg: string) => void): Promise<void> {
  const marker = restoreMarker(ctx);
  const dataDir = ctx.config.postgresql.dataDir;
  if (existsSync(marker)) {
    const m = JSON.parse(await readFile(marker, 'utf8')) as { aside: string; staging: string };
    if (!existsSync(dataDir) && existsSync(m.aside)) {
      await rename(m.aside, dataDir);
      log(`an interrupted restore is undone: ${m.aside} is the data directory again`);
    }
    await rm(marker, { force: true });
  }
  const staging = stagingDir(dataDir);
  if (existsSync(staging)) {
    await rm(staging, { recursive: true, force: true });
    log(`removed ${staging}, left by an unfinished restore`);
  }
}


/** The recovery settings of a restore (`conf.d/geminik8s-restore.conf`), removed once it has promoted. */
export const RESTORE_CONF = 'geminik8s-restore.conf';
