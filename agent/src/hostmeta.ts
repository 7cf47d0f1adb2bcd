import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '#common/fsutil.ts';
import { HostMetaSchema, type HostMeta, type Role } from '#common/schema/hostmeta.ts';

export function hostmetaPath(stateDir: string): string {
  return join(stateDir, 'hostmeta.json');
}

export async function readHostMeta(stateDir: string): Promise<HostMeta | undefined> {
  try {
    return HostMetaSchema.parse(JSON.parse(await readFile(hostmetaPath(stateDir), 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`hostmeta.json is unreadable: ${(err as Error).message}`);
  }
}

/** Persist atomically and durably (temp file, fsync, rename, directory fsync). The generation never decreases. */
export async function writeHostMeta(stateDir: string, meta: HostMeta): Promise<void> {
  const previous = await readHostMeta(stateDir).catch(() => undefined);
  if (previous && meta.generation < previous.generation) {
    throw new Error(`refusing to lower the generation from ${previous.generation} to ${meta.generation}`);
  }
  // Temp file, fsync, rename, then fsync the directory so the rename itself survives a crash.
  await writeFileAtomic(hostmetaPath(stateDir), `${JSON.stringify(HostMetaSchema.parse(meta), null, 2)}\n`, 0o644, { syncDir: true });
}

export function transition(meta: HostMeta, to: Role, reason: string, generation = meta.generation, timeline = meta.timeline): HostMeta {
  return { ...meta, role: to, generation, timeline, lastTransition: { at: new Date().toISOString(), from: meta.role, to, reason } };
}
