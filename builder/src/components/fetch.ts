import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { parseChecksums, type ArtifactSpec, type ReleaseArtifact } from './catalog.ts';
import { saveHashed, sha256File, TransferError } from './download.ts';
import { pinned, type ComponentLock } from './lock.ts';
import { resolveImageArtifact } from './oci.ts';

export interface FetchOptions {
  /** Content-addressed cache: `<cacheDir>/sha256/<hex>`. */
  cacheDir: string;
  /** Air-gapped builds: pre-fetched release files by asset name (checksum files too). */
  artifactsDir?: string;
  /** Never open a connection. */
  offline?: boolean;
  lock: ComponentLock;
  onProgress?: (name: string, received: number, total: number | undefined) => void;
  /** Abort a download that receives nothing for this long. */
  idleTimeoutMs?: number;
}

export interface ResolvedArtifact {
  spec: ArtifactSpec;
  /** The file's sha256; for an image artifact, its platform manifest's digest (what the lock pins). */
  sha256: string;
  path: string;
  source: 'cache' | 'download' | 'artifacts';
}

export function defaultCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s', 'artifacts');
}

/** The sha256 of a file, streamed (also used by the disk and upgrade builders). */
export { sha256File } from './download.ts';

/**
 * Where a release file sits in an --artifacts directory: `DIR/<component>/<name>`, else
 * `DIR/<name>`. K3s and Kine both publish `sha256sum-<arch>.txt`, so checksum files need
 * the per-component folders.
 */
export function artifactsPath(dir: string, component: string, name: string): string {
  const nested = join(dir, component, name);
  return existsSync(nested) ? nested : join(dir, name);
}

const artifactError = (message: string): GeminiError => new GeminiError(message, ExitCode.artifact);

async function get(url: string, idleTimeoutMs: number): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(Math.max(idleTimeoutMs, 30_000) * 20) });
  } catch (err) {
    throw artifactError(`cannot download ${url}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
  }
  if (!res.ok) throw artifactError(`cannot download ${url}: HTTP ${res.status} ${res.statusText}`);
  return res;
}

/** The release's checksum for one asset, from its published checksum file (or the artifacts dir). */
async function publishedChecksum(spec: ReleaseArtifact, options: FetchOptions, cache: Map<string, Map<string, string>>): Promise<string> {
  let sums = cache.get(spec.checksumUrl);
  if (!sums) {
    let text: string;
    const local = options.artifactsDir ? artifactsPath(options.artifactsDir, spec.component, spec.checksumName) : undefined;
    if (local && existsSync(local)) {
      const { readFile } = await import('node:fs/promises');
      text = await readFile(local, 'utf8');
    } else if (options.offline || options.artifactsDir) {
      throw artifactError(`${spec.name}: cannot verify it offline: neither the lock file pins it nor is ${spec.checksumName} next to it`);
    } else {
      text = await (await get(spec.checksumUrl, options.idleTimeoutMs ?? 30_000)).text();
    }
    sums = parseChecksums(text);
    cache.set(spec.checksumUrl, sums);
  }
  const sum = sums.get(spec.name);
  if (!sum) throw artifactError(`${spec.checksumName} of ${spec.component} ${spec.version} lists no checksum for ${spec.name}`);
  return sum;
}

/** Download into the cache: hashed while streaming, complete and verified before the rename. */
async function download(spec: ReleaseArtifact, expected: string, options: FetchOptions): Promise<string> {
  const tmpDir = join(options.cacheDir, 'tmp');
  await mkdir(tmpDir, { recursive: true });
  const tmp = join(tmpDir, `${spec.name}.${randomBytes(6).toString('hex')}`);
  const res = await get(spec.url, options.idleTimeoutMs ?? 30_000);
  const total = res.headers.get('content-length') ? Number(res.headers.get('content-length')) : undefined;
  let received: number;
  let actual: string;
  try {
    ({ received, sha256: actual } = await saveHashed(res, tmp, options.onProgress && ((n, of) => options.onProgress!(spec.name, n, of)), total));
  } catch (err) {
    await rm(tmp, { force: true });
    throw artifactError(`download of ${spec.url} broke off after ${err instanceof TransferError ? err.received : 0} bytes: ${(err as Error).message}`);
  }
  if (total !== undefined && received !== total) {
    await rm(tmp, { force: true });
    throw artifactError(`download of ${spec.url} is truncated: ${received} of ${total} bytes`);
  }
  if (actual !== expected) {
    await rm(tmp, { force: true });
    throw artifactError(`checksum mismatch for ${spec.name} (${spec.component} ${spec.version}): expected ${expected}, got ${actual}; the file was not cached`);
  }
  const final = join(options.cacheDir, 'sha256', actual);
  await mkdir(join(options.cacheDir, 'sha256'), { recursive: true });
  await rename(tmp, final);
  return final;
}

/**
 * Resolve every artifact to a verified file: from the cache by the pinned sha256, from an
 * artifacts directory, or by download (image artifacts: see oci.ts; their layout in an
 * artifacts directory is `DIR/<component>/oci`). Verification is against the lock when it pins the
 * file, and always against the release's published checksum when that is at hand.
 * Offline, every missing artifact is named in one error.
 */
export async function fetchArtifacts(specs: ArtifactSpec[], options: FetchOptions): Promise<ResolvedArtifact[]> {
  const resolved: ResolvedArtifact[] = [];
  const missing: string[] = [];
  const checksumFiles = new Map<string, Map<string, string>>();
  for (const spec of specs) {
    const locked = pinned(options.lock, spec.component, spec.version, spec.name);
    if (spec.kind === 'image') {
      const layout = options.artifactsDir ? artifactsPath(options.artifactsDir, spec.component, 'oci') : undefined;
      const r = await resolveImageArtifact(spec, { ...options, locked }, layout);
      if ('missing' in r) missing.push(r.missing);
      else resolved.push({ spec, sha256: r.digest, path: r.path, source: r.source });
      continue;
    }
    if (locked && existsSync(join(options.cacheDir, 'sha256', locked))) {
      resolved.push({ spec, sha256: locked, path: join(options.cacheDir, 'sha256', locked), source: 'cache' });
      continue;
    }
    if (options.artifactsDir) {
      const file = artifactsPath(options.artifactsDir, spec.component, spec.name);
      if (!existsSync(file)) {
        missing.push(`${spec.name} (${spec.component} ${spec.version}) not in ${options.artifactsDir}`);
        continue;
      }
      const actual = await sha256File(file);
      const expected = locked ?? (await publishedChecksum(spec, options, checksumFiles));
      if (actual !== expected) throw artifactError(`checksum mismatch for ${file}: expected ${expected} (${locked ? 'lock file' : spec.checksumName}), got ${actual}`);
      resolved.push({ spec, sha256: actual, path: file, source: 'artifacts' });
      continue;
    }
    if (options.offline) {
      missing.push(`${spec.name} (${spec.component} ${spec.version})${locked ? ` sha256 ${locked}` : ', not pinned in the lock file'} is not in the cache ${options.cacheDir}`);
      continue;
    }
    const published = await publishedChecksum(spec, options, checksumFiles);
    if (locked && locked !== published) {
      throw artifactError(`lock mismatch for ${spec.name} (${spec.component} ${spec.version}): images/components.lock.json pins ${locked} but the release publishes ${published}; refresh the lock deliberately with \`geminik8s lock\``);
    }
    const cached = join(options.cacheDir, 'sha256', published);
    if (existsSync(cached)) {
      resolved.push({ spec, sha256: published, path: cached, source: 'cache' });
      continue;
    }
    resolved.push({ spec, sha256: published, path: await download(spec, published, options), source: 'download' });
  }
  if (missing.length) {
    throw artifactError(`${missing.length} artifact${missing.length > 1 ? 's are' : ' is'} missing${options.offline ? ' (--offline opens no connection)' : ''}:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  }
  return resolved;
}
