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
 * A copy of `from` at `out`, changed by `edit` before it takes its name: sparse, 0600 (it will
 * carry secrets), under a temporary name in the same directory until `edit` is done, removed if
 * anything fails. Callers refuse an existing `out` without --force before they read anything.
 */
export async function editedCopy(from: string, out: string, edit: (copy: string) => Promise<void>): Promise<void> {
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  try {
    await runPlan({ cmd: 'cp', args: ['--sparse=always', from, tmp] });
    await chmod(tmp, 0o600);
    await edit(tmp);
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Copy `image` to `out` and write the seed files onto the copy's config partition with mtools:
 * no mounts, no privileges (see editedCopy).
 */
export async function seedIntoImage(image: string, out: string, files: RenderedFile[], force: boolean): Promise<void> {
  if (!existsSync(image)) throw new GeminiError(`--into ${image}: no such file`, ExitCode.invalidInput);
  if (isQcow2(image)) throw new GeminiError(`--into ${image}: a qcow2 image; give the .raw image (qemu-img convert -O raw makes one)`, ExitCode.invalidInput);
  if (existsSync(out) && !force) throw new GeminiError(`${out} already exists; pass --force to replace it`, ExitCode.refused);
  const offset = await partitionOffset(image, 'CONFIG');
  const staging = mkdtempSync(join(tmpdir(), 'gk-seed-into-'));
  try {
    await editedCopy(image, out, (copy) => writeSeedFiles(copy, offset, files, staging));
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
