import { chown, mkdir, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { EntrySink } from './archive.ts';

/**
 * Extract a backup's data directory into `dir`, entry by entry, as `readPayload` hands them over
 * (names already checked to stay inside). Files are created new (never over an existing one),
 * 0600, directories 0700, owned by `owner` when given (PostgreSQL's user on a node). Links and
 * other special entries are refused.
 */
export function extractSink(dir: string, owner?: { uid: number; gid: number }): EntrySink {
  const own = async (path: string): Promise<void> => {
    if (owner) await chown(path, owner.uid, owner.gid);
  };
  const made = new Set<string>([dir]);
  const ensureDir = async (d: string): Promise<void> => {
    if (made.has(d)) return;
    if (!d.startsWith(`${dir}/`)) throw new Error(`${d} is outside ${dir}`);
    await ensureDir(dirname(d));
    await mkdir(d, { recursive: true, mode: 0o700 });
    await own(d);
    made.add(d);
  };
  return async (name, header, body) => {
    const target = join(dir, name);
    if (header.type === 'directory') {
      for await (const _ of body) {
        // no data
      }
      await ensureDir(target.replace(/\/+$/, ''));
      return;
    }
    await ensureDir(dirname(target));
    // No links: the extractor runs as root, and a later entry written through a link planted by
    // an earlier one could land anywhere. A base backup to stdout has no tablespace links anyway.
    if (header.type !== 'file') throw new Error(`${name}: unexpected entry type ${header.type} in the base backup`);
    const h = await open(target, 'wx', 0o600);
    try {
      for await (const c of body) await h.write(c);
      if (owner) await h.chown(owner.uid, owner.gid);
    } finally {
      await h.close();
    }
  };
}
