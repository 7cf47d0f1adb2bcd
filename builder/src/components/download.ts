import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { ReadableStream } from 'node:stream/web';
import { pipeline } from 'node:stream/promises';

/** A body that broke off, with how much of it had arrived. */
export class TransferError extends Error {
  constructor(message: string, readonly received: number) {
    super(message);
  }
}

/**
 * Stream a response body into `file`, hashing it on the way. `onProgress` hears of it every
 * 4 MiB and when `total` bytes have arrived. The caller checks size and sum, and removes the
 * file when either is wrong.
 */
export async function saveHashed(res: Response, file: string, onProgress?: (received: number, total: number | undefined) => void, total?: number): Promise<{ sha256: string; received: number }> {
  const hash = createHash('sha256');
  let received = 0;
  let lastReport = 0;
  try {
    const body = Readable.fromWeb(res.body as ReadableStream<Uint8Array>);
    body.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
      if (onProgress && (received - lastReport > 4 * 1024 * 1024 || received === total)) {
        lastReport = received;
        onProgress(received, total);
      }
    });
    await pipeline(body, createWriteStream(file, { mode: 0o644 }));
  } catch (err) {
    throw new TransferError((err as Error).message, received);
  }
  return { sha256: hash.digest('hex'), received };
}

/** The sha256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}
