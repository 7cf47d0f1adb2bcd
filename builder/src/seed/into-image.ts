import { existsSync, mkdtempSync } from 'node:fs';
import { chmod, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { fileHead } from '#common/fsutil.ts';
import type { RenderedFile } from '#common/render/node.ts';
import { partitionOffset, writeSeedFiles } from '#common/install/media.ts';

function isQcow2(file: string): boolean {
  return fileHead(file, 4).toString('latin1') === 'QFI\xfb';
}

/**
 * Copy `image` to `out` (sparse) and write the seed files onto the copy's config partition
 * with mtools: no mounts, no privileges. The copy carries secrets, so it is 0600, and it
 * appears under its name only when complete.
 */
export async function seedIntoImage(image: string, out: string, files: RenderedFile[], force: boolean): Promise<void> {
  if (!existsSync(image)) throw new GeminiError(`--into ${image}: no such file`, ExitCode.invalidInput);
  if (isQcow2(image)) throw new GeminiError(`--into ${image}: a qcow2 image; give the .raw image (qemu-img convert -O raw makes one)`, ExitCode.invalidInput);
  if (existsSync(out) && !force) throw new GeminiError(`${out} already exists; pass --force to replace it`, ExitCode.refused);
  const offset = await partitionOffset(image, 'CONFIG');
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  const staging = mkdtempSync(join(tmpdir(), 'gk-seed-into-'));
  try {
    await runPlan({ cmd: 'cp', args: ['--sparse=always', image, tmp] });
    await chmod(tmp, 0o600);
    await writeSeedFiles(tmp, offset, files, staging);
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
