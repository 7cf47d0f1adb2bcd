import { existsSync, mkdtempSync, openSync, readSync, closeSync } from 'node:fs';
import { chmod, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { ExitCode, GeminiError } from '../../../common/errors.ts';
import { runPlan } from '../../../common/exec.ts';
import type { RenderedFile } from '../../../common/render/node.ts';
import { mcopyPlans } from '../disk/plans.ts';

/** The byte offset of the partition named `name` in a raw disk image's GPT, read with sfdisk. */
export async function partitionOffset(image: string, name: string): Promise<number> {
  const r = await runPlan({ cmd: 'sfdisk', args: ['-J', image] }, { allowFailure: true });
  if (r.exitCode !== 0) throw new GeminiError(`${image}: no partition table sfdisk can read (${r.stderr.trim().split('\n').pop()}); --into takes a raw image written by geminik8s build`, ExitCode.invalidInput);
  const table = JSON.parse(r.stdout).partitiontable as { sectorsize?: number; partitions: { name?: string; start: number }[] };
  const part = table.partitions.find((p) => p.name === name);
  if (!part) throw new GeminiError(`${image}: no partition named ${name}; --into takes a raw image written by geminik8s build`, ExitCode.invalidInput);
  return part.start * (table.sectorsize ?? 512);
}

function isQcow2(file: string): boolean {
  const fd = openSync(file, 'r');
  try {
    const magic = Buffer.alloc(4);
    readSync(fd, magic, 0, 4, 0);
    return magic.toString('latin1') === 'QFI\xfb';
  } finally {
    closeSync(fd);
  }
}

/**
 * Write the seed files onto the FAT config partition at `offset` of `target` (an image file or
 * a block device) with mtools; `staging` is a private directory for the files on their way.
 */
export async function writeSeedFiles(target: string, offset: number, files: RenderedFile[], staging: string): Promise<void> {
  const entries = [];
  for (const f of files) {
    const local = join(staging, f.path.replaceAll('/', '_'));
    await writeFile(local, f.content, { mode: 0o600 });
    entries.push({ from: local, to: `/${f.path}` });
  }
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? Math.floor(Date.now() / 1000));
  for (const plan of mcopyPlans(`${target}@@${offset}`, entries, epoch)) {
    // A second seed into the same copy replaces files; mmd of an existing directory is not an error worth stopping for.
    await runPlan(plan, plan.cmd === 'mmd' ? { allowFailure: true } : {});
  }
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
