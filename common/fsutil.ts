import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdir, open, readFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** The first `n` bytes of a file (fewer when it is shorter): enough to tell its format by its magic. */
export function fileHead(path: string, n: number): Buffer {
  const buf = Buffer.alloc(n);
  const fd = openSync(path, 'r');
  try {
    return buf.subarray(0, readSync(fd, buf, 0, n, 0));
  } finally {
    closeSync(fd);
  }
}

/**
 * Write a file atomically: a temporary file in the same directory, created with its final
 * mode (never chmod'ed after the content is there), fsync'ed, then renamed into place.
 */
export async function writeFileAtomic(path: string, content: string | Uint8Array, mode = 0o644, options: { syncDir?: boolean } = {}): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  if (options.syncDir) await syncRenamed(path);
}

/**
 * Make a rename durable: fsync the file under its new name, then its directory. On vfat (the
 * ESP) a renamed file's directory entry gets its start cluster and size only when the inode is
 * written back at its new place: fsync of the directory alone left entries of size 0 pointing
 * at nothing after a reset (the upgrade e2e suite, grubenv and the slot's kernel).
 */
export async function syncRenamed(path: string): Promise<void> {
  const f = await open(path, 'r');
  try {
    await f.sync();
  } finally {
    await f.close();
  }
  await syncDirectory(dirname(path));
}

/** fsync a directory, so a rename in it is on disk (vfat orders nothing unless asked). */
export async function syncDirectory(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } catch (err) {
    // Some filesystems cannot fsync a directory; the rename is still done.
    if (!['EINVAL', 'ENOTSUP', 'EBADF'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
  } finally {
    await d.close();
  }
}

/** Size of a file, or of a block device (from sysfs: stat reports 0 for devices). */
export async function deviceSize(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isBlockDevice()) return st.size;
  // /dev/disk/by-partlabel/ROOT_B -> /dev/vda5 -> /sys/class/block/vda5/size (512-byte sectors).
  const sectors = Number((await readFile(`/sys/class/block/${basename(await realpath(path))}/size`, 'utf8')).trim());
  return sectors * 512;
}
