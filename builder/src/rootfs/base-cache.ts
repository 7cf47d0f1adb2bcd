import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { rename, rm, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { CommandPlan } from '#common/exec.ts';
import type { Image } from '#common/schema/image.ts';
import { APT_OPTIONS, DPKG_EXCLUDES, EARLY_STAGING_FILES } from './mmdebstrap.ts';
import { rootPackages } from './packages.ts';

// The base root cache (mkosi's Incremental=, keyed instead of named): the Debian packages of a root,
// installed once by mmdebstrap and kept as a tar under CACHE/base/. A build whose base inputs are
// unchanged lays its staging tree over that tar and runs the customize script, skipping the
// package installation: on amd64 here the root stage went from 134 s to about 25 s.

/** Bumped when what a base tar holds changes in a way its key does not show. */
export const BASE_FORMAT = 1;

/** Bases kept per suite and architecture: the test and the edge image differ in packages. */
export const BASES_KEPT = 3;

/** Everything a base root is made from. The same inputs make the same packages, files and maintainer-script effects. */
export interface BaseKeyInput {
  suite: string;
  arch: string;
  mirror: string;
  /** Sorted. */
  packages: string[];
  aptOptions: string[];
  dpkgExcludes: string[];
  /** sha256 of each file the root has before its packages install (EARLY_STAGING_FILES). */
  early: Record<string, string>;
  /** sha256 of the mirror's InRelease for the suite: another package version is another base. */
  release: string;
  /** `mmdebstrap --version`. */
  mmdebstrap: string;
}

/** What the key of `image`'s base is made of, given the staging tree and what was read from the mirror. */
export function baseKeyInput(image: Image, staging: string, release: string, mmdebstrap: string): BaseKeyInput {
  const early = Object.fromEntries(EARLY_STAGING_FILES.map((f) => [f, createHash('sha256').update(readFileSync(join(staging, f))).digest('hex')]));
  return {
    suite: image.base.suite, arch: image.arch, mirror: image.base.mirror, packages: [...rootPackages(image)].sort(),
    aptOptions: APT_OPTIONS, dpkgExcludes: DPKG_EXCLUDES, early, release, mmdebstrap: mmdebstrap.trim(),
  };
}

/** 16 hex digits of the sha256 of the inputs (and BASE_FORMAT). */
export function baseKey(input: BaseKeyInput): string {
  return createHash('sha256').update(JSON.stringify({ format: BASE_FORMAT, ...input })).digest('hex').slice(0, 16);
}

export const baseTarName = (suite: string, arch: string, key: string): string => `${suite}-${arch}-${key}.tar`;

/** Which cached bases to delete so that `keep` remain for this suite and arch, the most recently used first. */
export function basesToPrune(entries: { name: string; mtimeMs: number }[], suite: string, arch: string, keep = BASES_KEPT): string[] {
  const re = new RegExp(`^${suite.replace(/[^a-z0-9]/gi, '\\$&')}-${arch}-[0-9a-f]{16}\\.tar$`);
  return entries.filter((e) => re.test(e.name)).sort((a, b) => b.mtimeMs - a.mtimeMs).slice(keep).map((e) => e.name);
}

/** The InRelease URL mmdebstrap reads for `suite` on `mirror`. */
export const inReleaseUrl = (mirror: string, suite: string): string => `${mirror.replace(/\/+$/, '')}/dists/${suite}/InRelease`;

/** sha256 of the mirror's InRelease; throws naming the URL when it cannot be read. */
export async function releaseDigest(mirror: string, suite: string, fetchFn: typeof fetch = fetch, timeoutMs = 30_000): Promise<string> {
  const url = inReleaseUrl(mirror, suite);
  let body: Buffer;
  try {
    const res = await fetchFn(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    body = Buffer.from(await res.arrayBuffer());
  } catch (err) {
    throw new Error(`could not read ${url}: ${(err as Error).message}`);
  }
  return createHash('sha256').update(body).digest('hex');
}

/** What `ensureBase` needs from the outside: the mirror, mmdebstrap, and a way to say how far it is. */
export interface BasePorts {
  releaseDigest(mirror: string, suite: string): Promise<string>;
  mmdebstrapVersion(): Promise<string>;
  /** Run mmdebstrap's plan: writes the base tar at the plan's output. */
  run(plan: CommandPlan): Promise<void>;
  progress(message: string): void;
}

export interface BaseRequest {
  image: Image;
  /** The staging tree (its early files are part of the key). */
  staging: string;
  /** CACHE/base. */
  dir: string;
  /** The mmdebstrap plan that installs the packages into a tar at `output`. */
  plan(output: string): CommandPlan;
}

/**
 * The cached base tar for this image, made first when missing (written under a temporary name,
 * renamed once whole; older bases of the same suite and arch beyond BASES_KEPT removed). Returns
 * undefined, after saying why, when the mirror's InRelease cannot be read: the build then installs
 * the packages itself, as without the cache.
 */
export async function ensureBase(req: BaseRequest, ports: BasePorts): Promise<string | undefined> {
  let release: string;
  try {
    release = await ports.releaseDigest(req.image.base.mirror, req.image.base.suite);
  } catch (err) {
    ports.progress(`base root cache not used: ${(err as Error).message}`);
    return undefined;
  }
  const key = baseKey(baseKeyInput(req.image, req.staging, release, await ports.mmdebstrapVersion()));
  const name = baseTarName(req.image.base.suite, req.image.arch, key);
  const path = join(req.dir, name);
  if (existsSync(path)) {
    ports.progress(`base root from the cache: ${name}`);
    // Its use is what keeps it among the bases kept (best effort: a cache shared read-only still serves).
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined);
    return path;
  }
  mkdirSync(req.dir, { recursive: true });
  ports.progress(`installing the packages into a new base root (${name}, kept for the next build)`);
  const tmp = join(req.dir, `.${name}.tmp-${process.pid}`);
  try {
    await ports.run(req.plan(tmp));
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
  const entries = readdirSync(req.dir).map((n) => ({ name: n, mtimeMs: statSync(join(req.dir, n)).mtimeMs }));
  for (const old of basesToPrune(entries, req.image.base.suite, req.image.arch)) await rm(join(req.dir, old), { force: true });
  return path;
}
