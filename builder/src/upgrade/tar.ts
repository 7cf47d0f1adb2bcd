import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { END_OF_ARCHIVE, padding, ustarHeader } from '#common/upgrade/bundle.ts';

// Writing the ustar archives the builder makes (the upgrade bundle, the OCI layer and layout):
// members in order, through a temporary name, never half-written under the final one.

/** Where members go. */
export interface TarWriter {
  put(b: Buffer): Promise<void>;
}

/** One regular file member from bytes (mode 0644 unless told). */
export async function writeMember(w: TarWriter, name: string, bytes: Buffer, mtime: number, mode?: number): Promise<void> {
  await w.put(ustarHeader(name, bytes.length, mtime, { mode }));
  await w.put(bytes);
  await w.put(padding(bytes.length));
}

/** One regular file member streamed from `file`. */
export async function writeFileMember(w: TarWriter, name: string, file: string, mtime: number, mode?: number): Promise<void> {
  const size = (await stat(file)).size;
  await w.put(ustarHeader(name, size, mtime, { mode }));
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) await w.put(chunk);
  await w.put(padding(size));
}

/** Write a tar to `out` through a temporary name in the same directory; returns the sha256 digest of its bytes. */
export async function writeTar(out: string, body: (w: TarWriter) => Promise<void>): Promise<string> {
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  const handle = await open(tmp, 'w', 0o644);
  const hash = createHash('sha256');
  try {
    await body({
      put: async (b) => {
        hash.update(b);
        await handle.write(b);
      },
    });
    await handle.write(END_OF_ARCHIVE);
    hash.update(END_OF_ARCHIVE);
    await handle.sync();
    await handle.close();
    await rename(tmp, out);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  return `sha256:${hash.digest('hex')}`;
}

