import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { chmod, mkdir, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import type { RenderedFile } from '../render/index.ts';
import { seedIsoPlan } from '#common/install/seed-iso.ts';

/** Whether `out` holds a seed (or anything) already: a non-empty directory, or an existing file. */
export function seedOutputExists(out: string, format: 'dir' | 'iso'): boolean {
  return format === 'dir' ? existsSync(out) && readdirSync(out).length > 0 : existsSync(out);
}

/**
 * Write a node's seed files to `out`: a directory (0700, to copy onto the config partition) or a
 * cidata ISO (0600). Built in a private staging place and moved into place whole; an existing
 * output is replaced only with `force`.
 */
export async function writeSeed(out: string, files: RenderedFile[], format: 'dir' | 'iso', force: boolean): Promise<void> {
  if (seedOutputExists(out, format) && !force) throw new GeminiError(`${out} already exists; pass --force to replace it`, ExitCode.refused);
  const staging = format === 'dir' ? `${out.replace(/\/+$/, '')}.tmp-${process.pid}` : mkdtempSync(join(tmpdir(), 'gk-seed-'));
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true, mode: 0o700 });
  try {
    for (const f of files) await writeFileAtomic(join(staging, f.path), f.content, f.mode);
    await chmod(join(staging, 'geminik8s'), 0o700);
    if (format === 'iso') {
      const tmpIso = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
      await runPlan(seedIsoPlan(staging, tmpIso, process.env.SOURCE_DATE_EPOCH));
      // The ISO carries secrets: owner-only, like the seed directory.
      await chmod(tmpIso, 0o600);
      await rename(tmpIso, out);
    } else {
      if (existsSync(out)) await rm(out, { recursive: true, force: true });
      await rename(staging, out);
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
