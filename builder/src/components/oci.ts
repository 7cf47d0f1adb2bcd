import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tarStream from 'tar-stream';
import * as z from 'zod';
import { ExitCode, GeminiError } from '#common/errors.ts';
import type { ImageArtifact } from './catalog.ts';
import { saveHashed, sha256File } from './download.ts';

/**
 * Files out of container images, for upstreams that publish images instead of release binaries
 * (kube-vip). Pulled through the OCI distribution API (anonymous bearer tokens, as ghcr.io and
 * Docker Hub hand out for public images), or read from an OCI image layout for air-gapped
 * builds (`skopeo copy docker://IMAGE oci:DIR`). Every manifest and blob is checked against its
 * sha256 digest before it is used or cached; the lock pins the platform manifest's digest.
 */

const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;
const ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest].join(', ');
const GZIP_LAYERS = new Set(['application/vnd.oci.image.layer.v1.tar+gzip', 'application/vnd.docker.image.rootfs.diff.tar.gzip']);
const TAR_LAYERS = new Set(['application/vnd.oci.image.layer.v1.tar']);

const Digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'expected sha256:<64 hex>');
const Descriptor = z.object({
  mediaType: z.string().optional(),
  digest: Digest,
  size: z.number().int().nonnegative(),
  platform: z.object({ os: z.string(), architecture: z.string(), variant: z.string().optional() }).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
const IndexSchema = z.object({ schemaVersion: z.literal(2), mediaType: z.string().optional(), manifests: z.array(Descriptor) });
const ManifestSchema = z.object({ schemaVersion: z.literal(2), mediaType: z.string().optional(), config: Descriptor, layers: z.array(Descriptor) });
const ConfigSchema = z.object({ architecture: z.string(), os: z.string() });
type Desc = z.infer<typeof Descriptor>;
type Index = z.infer<typeof IndexSchema>;
type Manifest = z.infer<typeof ManifestSchema>;

const artifactError = (message: string): GeminiError => new GeminiError(message, ExitCode.artifact);
const hex = (digest: string): string => digest.replace(/^sha256:/, '');
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Where verified manifests and blobs come from. */
export interface BlobSource {
  /** Where messages say the data came from. */
  readonly where: string;
  /** The manifest or index a tag names now, with its digest (hex). */
  resolveTag(tag: string): Promise<{ digest: string; body: Buffer }>;
  /** A manifest or index by digest (hex); its bytes hash to that digest. */
  manifest(digest: string): Promise<Buffer>;
  /** A blob by digest (hex), as a file whose content hashes to that digest. */
  blob(digest: string, size: number): Promise<string>;
}

function isIndex(body: Buffer, label: string): boolean {
  const doc = parseJson(body, label) as { mediaType?: string; manifests?: unknown };
  return doc.mediaType === MEDIA.ociIndex || doc.mediaType === MEDIA.dockerList || (doc.mediaType === undefined && Array.isArray(doc.manifests));
}

function parseJson(body: Buffer, label: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw artifactError(`${label}: not valid JSON (${(err as Error).message})`);
  }
}

function parseAs<T>(schema: z.ZodType<T>, body: Buffer, label: string): T {
  const r = schema.safeParse(parseJson(body, label));
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw artifactError(`${label}: ${i.path.join('.') || '(document)'}: ${i.message}`);
  }
  return r.data;
}

/** The entry of an index for one platform (never an attestation, whose platform is unknown/unknown). */
export function pickPlatform(index: Index, platform: ImageArtifact['platform'], label: string): Desc {
  const matches = index.manifests.filter((m) => m.platform?.os === platform.os && m.platform.architecture === platform.architecture && (platform.architecture !== 'arm64' || !m.platform.variant || m.platform.variant === 'v8'));
  if (matches.length === 0) {
    const offered = index.manifests.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? `/${m.platform.variant}` : ''}` : 'no platform')).join(', ');
    throw artifactError(`${label} has no ${platform.os}/${platform.architecture} image (it offers ${offered || 'nothing'})`);
  }
  return matches[0]!;
}

/**
 * The digest (hex) of the platform manifest a tag names now: what `geminik8s lock` pins. A tag
 * naming a single-platform manifest is checked against its config's os and architecture.
 */
export async function resolvePlatformDigest(spec: ImageArtifact, source: BlobSource): Promise<string> {
  const label = `${spec.image}:${spec.tag} (${source.where})`;
  const top = await source.resolveTag(spec.tag);
  if (isIndex(top.body, label)) {
    const entry = pickPlatform(parseAs(IndexSchema, top.body, label), spec.platform, label);
    await source.manifest(hex(entry.digest));
    return hex(entry.digest);
  }
  await readManifest(spec, source, top.digest, top.body);
  return top.digest;
}

async function readManifest(spec: ImageArtifact, source: BlobSource, digest: string, body?: Buffer): Promise<Manifest> {
  const label = `${spec.image}@sha256:${digest} (${source.where})`;
  const bytes = body ?? (await source.manifest(digest));
  if (isIndex(bytes, label)) throw artifactError(`${label} is an index, not the ${spec.platform.os}/${spec.platform.architecture} manifest the lock file must pin; refresh it with \`geminik8s lock\``);
  const manifest = parseAs(ManifestSchema, bytes, label);
  const config = parseAs(ConfigSchema, await readFile(await source.blob(hex(manifest.config.digest), manifest.config.size)), `${label} config`);
  if (config.os !== spec.platform.os || config.architecture !== spec.platform.architecture) {
    throw artifactError(`${label} is for ${config.os}/${config.architecture}, not ${spec.platform.os}/${spec.platform.architecture}`);
  }
  return manifest;
}

/** A tar entry's path as the image's root sees it: no leading `./` or `/`. */
const entryPath = (name: string): string => posix.normalize(name).replace(/^(\.\/|\/)+/, '').replace(/\/$/, '');

/**
 * Take one file out of an image's layers, applied in order: a later layer replaces it, and a
 * whiteout (`.wh.<name>`, or `.wh..wh..opq` in its directory) in a later layer removes it.
 * Written under a temporary name and renamed, so `dest` is whole or absent.
 */
export async function extractMember(manifest: Manifest, source: BlobSource, member: string, dest: string, label: string): Promise<void> {
  const want = entryPath(member);
  const dir = posix.dirname(want) === '.' ? '' : posix.dirname(want);
  const whiteout = posix.join(dir, `.wh.${posix.basename(want)}`);
  const opaque = posix.join(dir, '.wh..wh..opq');
  const tmp = `${dest}.${randomBytes(6).toString('hex')}.tmp`;
  let foundIn = -1;
  try {
    for (const [i, layer] of manifest.layers.entries()) {
      const type = layer.mediaType ?? '';
      if (!GZIP_LAYERS.has(type) && !TAR_LAYERS.has(type)) throw artifactError(`${label}: layer ${layer.digest} is ${type || 'of no media type'}; only tar and tar+gzip layers can be read`);
      const file = await source.blob(hex(layer.digest), layer.size);
      const extract = tarStream.extract();
      const done = new Promise<void>((resolve, reject) => {
        extract.on('entry', (header, stream, next) => {
          const path = entryPath(header.name);
          const drain = (): void => {
            stream.on('end', () => next());
            stream.resume();
          };
          if ((path === whiteout || path === opaque) && foundIn >= 0 && foundIn < i) foundIn = -1;
          if (path !== want) return drain();
          if (header.type !== 'file') {
            const err = artifactError(`${label}: /${want} is a ${header.type}, not a file`);
            reject(err);
            return extract.destroy(err);
          }
          const out: Writable = createWriteStream(tmp, { mode: 0o644 });
          pipeline(stream, out).then(() => {
            foundIn = i;
            next();
          }, (err: Error) => {
            reject(err);
            extract.destroy(err);
          });
        });
        extract.on('finish', () => resolve());
        extract.on('error', reject);
      });
      const input = createReadStream(file);
      await Promise.all([pipeline(GZIP_LAYERS.has(type) ? input.pipe(createGunzip()) : input, extract as unknown as Writable), done]).catch((err: Error) => {
        throw err instanceof GeminiError ? err : artifactError(`${label}: layer ${layer.digest} cannot be read: ${err.message}`);
      });
    }
    if (foundIn < 0) throw artifactError(`${label} has no /${want}`);
    await rename(tmp, dest);
  } finally {
    await rm(tmp, { force: true });
  }
}

export interface ImageFetchOptions {
  cacheDir: string;
  artifactsDir?: string;
  offline?: boolean;
  /** The platform manifest's digest (hex) from the lock file. */
  locked?: string;
  idleTimeoutMs?: number;
  onProgress?: (name: string, received: number, total: number | undefined) => void;
}

export type ImageResolution = { digest: string; path: string; source: 'cache' | 'download' | 'artifacts' } | { missing: string };

/**
 * The file an image artifact installs, verified: taken out of cached blobs when the lock pins
 * the manifest and every blob is cached, else out of an OCI layout in the --artifacts directory
 * (which needs the pin: there is no registry to ask), else pulled from the registry.
 */
export async function resolveImageArtifact(spec: ImageArtifact, options: ImageFetchOptions, layoutDir?: string): Promise<ImageResolution> {
  const cache = new CacheSource(options.cacheDir);
  const finish = async (source: BlobSource, digest: string, kind: 'cache' | 'download' | 'artifacts'): Promise<ImageResolution> => {
    const manifest = await readManifest(spec, source, digest);
    const dir = join(options.cacheDir, 'extracted', digest);
    const path = join(dir, posix.basename(spec.member));
    if (!existsSync(path)) {
      await mkdir(dir, { recursive: true });
      await extractMember(manifest, source, spec.member, path, `${spec.image}@sha256:${digest}`);
    }
    return { digest, path, source: kind };
  };
  if (options.locked && (await cache.holdsImage(options.locked))) return finish(cache, options.locked, 'cache');
  if (layoutDir) {
    if (!existsSync(join(layoutDir, 'index.json')) && !existsSync(join(layoutDir, 'blobs'))) return { missing: `${spec.name} (${spec.component} ${spec.version}): no OCI image layout at ${layoutDir}` };
    if (!options.locked) throw artifactError(`${spec.name}: cannot verify the image in ${layoutDir} offline: the lock file does not pin it; run \`geminik8s lock\` on a connected machine`);
    return finish(new LayoutSource(layoutDir), options.locked, 'artifacts');
  }
  if (options.offline) return { missing: `${spec.name} (${spec.component} ${spec.version})${options.locked ? ` manifest sha256 ${options.locked}` : ', not pinned in the lock file'} is not in the cache ${options.cacheDir}` };
  const registry = new RegistrySource(spec, options);
  const digest = options.locked ?? (await resolvePlatformDigest(spec, registry));
  if (await cache.holdsImage(digest)) return finish(cache, digest, 'cache');
  return finish(registry, digest, 'download');
}

/** Blobs already in the content-addressed cache (`<cacheDir>/sha256/<hex>`). */
class CacheSource implements BlobSource {
  readonly where = 'cache';
  constructor(private readonly cacheDir: string) {}
  private path(digest: string): string {
    return join(this.cacheDir, 'sha256', digest);
  }
  resolveTag(): Promise<never> {
    return Promise.reject(artifactError('the cache cannot resolve a tag'));
  }
  async manifest(digest: string): Promise<Buffer> {
    return readFile(this.path(digest));
  }
  async blob(digest: string): Promise<string> {
    return this.path(digest);
  }
  /** The manifest and every blob it names are cached. */
  async holdsImage(digest: string): Promise<boolean> {
    if (!existsSync(this.path(digest))) return false;
    try {
      const m = ManifestSchema.parse(JSON.parse(await readFile(this.path(digest), 'utf8')));
      return [m.config, ...m.layers].every((d) => existsSync(this.path(hex(d.digest))));
    } catch {
      return false;
    }
  }
}

async function verifyFile(path: string, digest: string, label: string): Promise<void> {
  const actual = await sha256File(path);
  if (actual !== digest) throw artifactError(`digest mismatch for ${label}: expected sha256:${digest}, got sha256:${actual}`);
}

/** An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`), verified as it is read. */
class LayoutSource implements BlobSource {
  readonly where: string;
  constructor(private readonly dir: string) {
    this.where = dir;
  }
  private path(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', digest);
  }
  async resolveTag(tag: string): Promise<{ digest: string; body: Buffer }> {
    const index = parseAs(IndexSchema, await readFile(join(this.dir, 'index.json')), join(this.dir, 'index.json'));
    const named = index.manifests.filter((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
    const entry = named[0] ?? (index.manifests.length === 1 ? index.manifests[0] : undefined);
    if (!entry) throw artifactError(`${join(this.dir, 'index.json')} names no image tagged ${tag}`);
    return { digest: hex(entry.digest), body: await this.manifest(hex(entry.digest)) };
  }
  async manifest(digest: string): Promise<Buffer> {
    const file = this.path(digest);
    if (!existsSync(file)) throw artifactError(`${this.dir} has no blob sha256:${digest}`);
    const body = await readFile(file);
    if (sha256(body) !== digest) throw artifactError(`digest mismatch for ${file}: its content does not hash to its name`);
    return body;
  }
  async blob(digest: string): Promise<string> {
    const file = this.path(digest);
    if (!existsSync(file)) throw artifactError(`${this.dir} has no blob sha256:${digest}`);
    await verifyFile(file, digest, file);
    return file;
  }
}

/** A registry speaking the OCI distribution API; what it serves is cached once verified. */
class RegistrySource implements BlobSource {
  readonly where: string;
  private token?: string;
  private readonly base: string;
  constructor(private readonly spec: ImageArtifact, private readonly options: ImageFetchOptions) {
    this.base = `${spec.registry.replace(/\/+$/, '')}/v2/${spec.repository}`;
    this.where = spec.registry;
  }

  private async request(url: string, accept?: string): Promise<Response> {
    const timeout = Math.max(this.options.idleTimeoutMs ?? 30_000, 30_000) * 20;
    const call = (): Promise<Response> => fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(timeout), headers: { ...(accept ? { accept } : {}), ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) } });
    let res: Response;
    try {
      res = await call();
      if (res.status === 401 && !this.token) {
        await res.body?.cancel();
        this.token = await this.authenticate(res.headers.get('www-authenticate') ?? '', url);
        res = await call();
      }
    } catch (err) {
      if (err instanceof GeminiError) throw err;
      throw artifactError(`cannot download ${url}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw artifactError(`cannot download ${url}: HTTP ${res.status} ${res.statusText}`);
    }
    return res;
  }

  /** The anonymous bearer token a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge asks for. */
  private async authenticate(challenge: string, url: string): Promise<string> {
    const params = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
    if (!/^Bearer\s/i.test(challenge) || !params.realm) throw artifactError(`cannot download ${url}: HTTP 401, and the registry offers no bearer token (WWW-Authenticate: ${challenge || 'absent'})`);
    const tokenUrl = new URL(params.realm);
    if (params.service) tokenUrl.searchParams.set('service', params.service);
    tokenUrl.searchParams.set('scope', params.scope ?? `repository:${this.spec.repository}:pull`);
    let res: Response;
    try {
      res = await fetch(tokenUrl, { signal: AbortSignal.timeout(60_000) });
    } catch (err) {
      throw artifactError(`cannot get a pull token from ${tokenUrl.origin}${tokenUrl.pathname}: ${(err as Error).message}`);
    }
    if (!res.ok) throw artifactError(`cannot get a pull token from ${tokenUrl.origin}${tokenUrl.pathname}: HTTP ${res.status}`);
    const body = (await res.json()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw artifactError(`${tokenUrl.origin}${tokenUrl.pathname} answered without a token`);
    return token;
  }

  private async store(digest: string, body: Buffer): Promise<void> {
    const dir = join(this.options.cacheDir, 'sha256');
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${digest}.${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, body, { mode: 0o644 });
    await rename(tmp, join(dir, digest));
  }

  async resolveTag(tag: string): Promise<{ digest: string; body: Buffer }> {
    const res = await this.request(`${this.base}/manifests/${encodeURIComponent(tag)}`, ACCEPT);
    const body = Buffer.from(await res.arrayBuffer());
    return { digest: sha256(body), body };
  }

  async manifest(digest: string): Promise<Buffer> {
    // Resolving a tag already fetched and cached the platform manifest; ask for it once.
    const cached = join(this.options.cacheDir, 'sha256', digest);
    if (existsSync(cached)) {
      const body = await readFile(cached);
      if (sha256(body) === digest) return body;
    }
    const url = `${this.base}/manifests/sha256:${digest}`;
    const body = Buffer.from(await (await this.request(url, ACCEPT)).arrayBuffer());
    const actual = sha256(body);
    if (actual !== digest) throw artifactError(`digest mismatch for ${url}: got sha256:${actual}; nothing was cached`);
    await this.store(digest, body);
    return body;
  }

  async blob(digest: string, size: number): Promise<string> {
    const final = join(this.options.cacheDir, 'sha256', digest);
    if (existsSync(final)) return final;
    const url = `${this.base}/blobs/sha256:${digest}`;
    const tmpDir = join(this.options.cacheDir, 'tmp');
    await mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, `${digest}.${randomBytes(6).toString('hex')}`);
    const res = await this.request(url);
    try {
      const { received, sha256: actual } = await saveHashed(res, tmp, this.options.onProgress && ((n) => this.options.onProgress!(`${this.spec.name} ${digest.slice(0, 12)}`, n, size)), size);
      if (received !== size) throw new Error(`${received} of the ${size} bytes the manifest gives`);
      if (actual !== digest) throw new Error(`got sha256:${actual}`);
    } catch (err) {
      await rm(tmp, { force: true });
      throw artifactError(`blob sha256:${digest} of ${this.spec.image} from ${url} is not what the manifest names (${(err as Error).message}); nothing was cached`);
    }
    await mkdir(join(this.options.cacheDir, 'sha256'), { recursive: true });
    await rename(tmp, final);
    return final;
  }
}

/** A source for `geminik8s lock`: the registry, or an OCI layout when `--artifacts` is given. */
export function imageSource(spec: ImageArtifact, options: ImageFetchOptions, layoutDir?: string): BlobSource {
  return layoutDir ? new LayoutSource(layoutDir) : new RegistrySource(spec, options);
}
