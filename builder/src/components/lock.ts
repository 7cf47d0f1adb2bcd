import { existsSync, readFileSync } from 'node:fs';
import { z } from 'zod';
import { ExitCode, GeminiError } from '../../../common/errors.ts';
import { writeFileAtomic } from '../../../common/fsutil.ts';

/** images/components.lock.json: component → version → asset name → sha256. */
const LockSchema = z.record(z.string(), z.record(z.string(), z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/))));
export type ComponentLock = z.output<typeof LockSchema>;

export function readLock(file: string): ComponentLock {
  if (!existsSync(file)) return {};
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new GeminiError(`${file}: not valid JSON (${(err as Error).message})`, ExitCode.invalidInput);
  }
  const parsed = LockSchema.safeParse(data);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new GeminiError(`${file}: ${i.path.join('.')}: ${i.message} (expected component → version → asset → sha256 hex)`, ExitCode.invalidInput);
  }
  return parsed.data;
}

export function pinned(lock: ComponentLock, component: string, version: string, name: string): string | undefined {
  return lock[component]?.[version]?.[name];
}

export async function writeLock(file: string, lock: ComponentLock): Promise<void> {
  const sorted = Object.fromEntries(Object.entries(lock).sort(([a], [b]) => a.localeCompare(b)).map(([c, versions]) => [c, Object.fromEntries(Object.entries(versions).sort().map(([v, assets]) => [v, Object.fromEntries(Object.entries(assets).sort())]))]));
  await writeFileAtomic(file, `${JSON.stringify(sorted, null, 2)}\n`);
}
