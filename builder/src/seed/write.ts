import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { chmod, mkdir, rename, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import type { RenderedFile } from '../render/index.ts';
import { makeSeedIso } from '#common/install/seed-iso.ts';
import { mcopyPlans, SEED_MEDIUM_FILE, SEED_MEDIUM_LABEL } from '#common/install/media.ts';
import type { CommandPlan } from '#common/exec.ts';

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
      await makeSeedIso(staging, tmpIso, process.env.SOURCE_DATE_EPOCH);
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

/** The seed medium's FAT image: small, since a seed is a few KiB (the ISO's slot holds 1 MiB). */
export const SEED_MEDIUM_KIB = 2048;

/**
 * mkfs.vfat of the seed medium (pure): labelled GKSEED, its volume id taken from the payload, so
 * that the same seed makes the same bytes.
 */
export function seedMediumFsPlan(output: string, payload: string): CommandPlan {
  const id = createHash('sha256').update(payload).digest('hex').slice(0, 8);
  return { cmd: 'mkfs.vfat', args: ['-C', '--invariant', '-n', SEED_MEDIUM_LABEL, '-i', id, output, String(SEED_MEDIUM_KIB)], title: `mkfs.vfat ${SEED_MEDIUM_LABEL}` };
}

/**
 * Write a seed medium to `out` (0600): a FAT filesystem labelled GKSEED holding the installer's
 * seed JSON at geminik8s/seed.json, to write onto a USB stick and attach beside an installer
 * ISO that carries no seed. Built under a temporary name and renamed when complete.
 */
export async function writeSeedMedium(out: string, payload: string, force: boolean): Promise<void> {
  if (existsSync(out) && !force) throw new GeminiError(`${out} already exists; pass --force to replace it`, ExitCode.refused);
  const staging = mkdtempSync(join(tmpdir(), 'gk-seed-medium-'));
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  try {
    await writeFileAtomic(join(staging, 'seed.json'), payload, 0o600);
    await rm(tmp, { force: true });
    await runPlan(seedMediumFsPlan(tmp, payload));
    await chmod(tmp, 0o600);
    const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? Math.floor(Date.now() / 1000));
    // mcopy -m keeps the file's time: pinned, so that one seed makes one image.
    await utimes(join(staging, 'seed.json'), epoch, epoch);
    for (const plan of mcopyPlans(tmp, [{ from: join(staging, 'seed.json'), to: SEED_MEDIUM_FILE }], epoch)) await runPlan(plan);
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
