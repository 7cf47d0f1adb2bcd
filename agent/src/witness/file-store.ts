import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '#common/fsutil.ts';
import type { ArbiterRecord } from './arbiter.ts';
import type { RecordStore } from './service.ts';

/** Cluster names are DNS labels (the cluster schema's `name`): safe as file names. */
export const CLUSTER_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const nodeName = (v: unknown): boolean => typeof v === 'string' && v.length > 0 && v.length <= 63;
const count = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 0;

/** Check a parsed record; the reason it is not one, or undefined. */
export function recordProblem(v: unknown): string | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a JSON object';
  const r = v as Record<string, unknown>;
  if (typeof r.cluster !== 'string' || !CLUSTER_NAME.test(r.cluster)) return 'cluster must be a DNS label';
  if (!count(r.generation)) return 'generation must be a non-negative integer';
  if (!(r.holder === null || nodeName(r.holder))) return 'holder must be a node name or null';
  if (!(r.promotable === null || nodeName(r.promotable))) return 'promotable must be a node name or null';
  if (!count(r.ttlMs)) return 'ttlMs must be a non-negative integer';
  if (!(r.timeline === null || count(r.timeline))) return 'timeline must be a non-negative integer or null';
  if (r.generation === 0 && r.holder !== null) return 'a holder without a generation';
  if (r.holder !== null && r.holder === r.promotable) return 'the holder cannot be its own promotable standby';
  const extra = Object.keys(r).filter((k) => !['cluster', 'generation', 'holder', 'promotable', 'ttlMs', 'timeline'].includes(k));
  if (extra.length > 0) return `unknown fields ${extra.join(', ')}`;
  return undefined;
}

/**
 * The witness's durable records: one `<cluster>.json` per cluster in a directory, each written
 * with a temp file, fsync, rename and a directory fsync (mode 0600). A corrupt or unreadable
 * record stops the witness from starting: an empty record would hand the lease to anyone.
 */
export class FileRecordStore implements RecordStore {
  constructor(readonly dir: string) {}

  fileOf(cluster: string): string {
    if (!CLUSTER_NAME.test(cluster)) throw new Error(`not a cluster name: ${JSON.stringify(cluster)}`);
    return join(this.dir, `${cluster}.json`);
  }

  async load(): Promise<ArbiterRecord[]> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const names = (await readdir(this.dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort();
    const records: ArbiterRecord[] = [];
    for (const name of names) {
      const file = join(this.dir, name);
      let parsed: unknown;
      try {
        parsed = JSON.parse(await readFile(file, 'utf8'));
      } catch (err) {
        throw new Error(`witness record ${file} is unreadable: ${(err as Error).message}; refusing to start (restore it, or remove it only if the cluster is known to have no leader)`);
      }
      const problem = recordProblem(parsed);
      if (problem) throw new Error(`witness record ${file} is corrupt: ${problem}; refusing to start`);
      const record = parsed as ArbiterRecord;
      if (`${record.cluster}.json` !== name) throw new Error(`witness record ${file} holds cluster ${record.cluster}; refusing to start`);
      records.push(record);
    }
    return records;
  }

  async save(record: ArbiterRecord): Promise<void> {
    const problem = recordProblem(record);
    if (problem) throw new Error(`refusing to save an invalid witness record for ${record.cluster}: ${problem}`);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.fileOf(record.cluster), `${JSON.stringify(record, null, 2)}\n`, 0o600, { syncDir: true });
  }
}
