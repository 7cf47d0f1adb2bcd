import { existsSync, readFileSync } from 'node:fs';
import * as z from 'zod';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';

/** images/components.lock.json: component → version → asset name → sha256. */
const LockSchema = z.record(z.string(), z.record(z.string(), z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/))));
export type ComponentLock = z.output<typeof LockSchema>;

/**
 * The lock file may say where its pins come from, and which it lacks, in a top-level
 * `$comment` (a string or a list of lines, as JSON Schema's keyword): JSON has no comments.
 */
const COMMENT_KEY = '$comment';
const CommentSchema = z.union([z.string(), z.array(z.string())]);
export type LockComment = z.output<typeof CommentSchema>;

function readLockFile(file: string): { lock: ComponentLock; comment?: LockComment } {
  if (!existsSync(file)) return { lock: {} };
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new GeminiError(`${file}: not valid JSON (${(err as Error).message})`, ExitCode.invalidInput);
  }
  let comment: LockComment | undefined;
  if (data && typeof data === 'object' && !Array.isArray(data) && COMMENT_KEY in data) {
    const { [COMMENT_KEY]: raw, ...rest } = data as Record<string, unknown>;
    const c = CommentSchema.safeParse(raw);
    if (!c.success) throw new GeminiError(`${file}: ${COMMENT_KEY}: expected a string or a list of strings`, ExitCode.invalidInput);
    comment = c.data;
    data = rest;
  }
  const parsed = LockSchema.safeParse(data);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new GeminiError(`${file}: ${i.path.join('.')}: ${i.message} (expected component → version → asset → sha256 hex)`, ExitCode.invalidInput);
  }
  return { lock: parsed.data, comment };
}

/** The pins of a lock file (none when it does not exist). */
export function readLock(file: string): ComponentLock {
  return readLockFile(file).lock;
}

export function pinned(lock: ComponentLock, component: string, version: string, name: string): string | undefined {
  return lock[component]?.[version]?.[name];
}

/** Write the pins sorted, keeping the file's `$comment` (first) unless another is given. */
export async function writeLock(file: string, lock: ComponentLock, comment: LockComment | undefined = readLockFile(file).comment): Promise<void> {
  const sorted = Object.fromEntries(Object.entries(lock).sort(([a], [b]) => a.localeCompare(b)).map(([c, versions]) => [c, Object.fromEntries(Object.entries(versions).sort().map(([v, assets]) => [v, Object.fromEntries(Object.entries(assets).sort())]))]));
  await writeFileAtomic(file, `${JSON.stringify(comment === undefined ? sorted : { [COMMENT_KEY]: comment, ...sorted }, null, 2)}\n`);
}
