import { open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { HostMetaSchema, type HostMeta, type Role } from '../../common/schema/hostmeta.ts';

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

/** Persist atomically (temp file, fsync, rename). The generation never decreases. */
export async function writeHostMeta(stateDir: string, meta: HostMeta): Promise<void> {
  const previous = await readHostMeta(stateDir).catch(() => undefined);
  if (previous && meta.generation < previous.generation) {
    throw new Error(`refusing to lower the generation from ${previous.generation} to ${meta.generation}`);
  }
  const file = hostmetaPath(stateDir);
  const tmp = `${file}.tmp-${process.pid}`;
  const h = await open(tmp, 'w', 0o644);
  try {
    await h.writeFile(`${JSON.stringify(HostMetaSchema.parse(meta), null, 2)}\n`);
    await h.sync();
  } finally {
    await h.close();
  }
  await rename(tmp, file);
}

export function transition(meta: HostMeta, to: Role, reason: string, generation = meta.generation, timeline = meta.timeline): HostMeta {
  return { ...meta, role: to, generation, timeline, lastTransition: { at: new Date().toISOString(), from: meta.role, to, reason } };
}
