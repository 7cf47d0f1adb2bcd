import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { cli } from '#lab/cli.ts';

/** The source tree the images are built from. */
const ROOT = new URL('../', import.meta.url).pathname;

/** Everything that goes into a built image: a change to any of it means a new image. */
const INPUTS = ['overlays', 'templates', 'agent/src', 'agent/build.ts', 'builder/src', 'common', 'package-lock.json'];

function* files(path: string): Generator<string> {
  if (statSync(path).isDirectory()) for (const n of readdirSync(path).sort()) yield* files(join(path, n));
  else yield path;
}

/**
 * Remove older builds of `name` (`<name>-<16 hex key>` exactly, so an image's prune never takes
 * its bundles), and the temporary directories of killed builds (`<entry>.tmp-<pid>`), that no
 * run has used for three hours: a run of another source tree on the same machine may be using
 * its own entry, or building it, right now.
 */
function pruneStale(cacheRoot: string, name: string, keep: string): void {
  if (!existsSync(cacheRoot)) return;
  const entry = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-[0-9a-f]{16}(\\.tmp-\\d+)?$`);
  for (const n of readdirSync(cacheRoot).filter((x) => entry.test(x) && join(cacheRoot, x) !== keep)) {
    const marker = join(cacheRoot, n, 'complete');
    const used = existsSync(marker) ? statSync(marker).mtimeMs : statSync(join(cacheRoot, n)).mtimeMs;
    if (Date.now() - used > 3 * 3600_000) rmSync(join(cacheRoot, n), { recursive: true, force: true });
  }
}

/**
 * Make the cache entry `dir` (one of `name`'s, under `cacheRoot`) with `build`, which writes into
 * a temporary directory beside it; renamed into place once complete, so that a killed run leaves
 * only its own temporary directory and two runs building the same entry never write into each
 * other's.
 */
async function buildEntry(cacheRoot: string, name: string, dir: string, log: (m: string) => void, build: (tmp: string) => Promise<void>): Promise<void> {
  pruneStale(cacheRoot, name, dir);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    await build(tmp);
    writeFileSync(join(tmp, 'complete'), `${new Date().toISOString()}\n`);
    if (existsSync(join(dir, 'complete'))) {
      log(`another run finished ${dir} first; using it`);
      rmSync(tmp, { recursive: true, force: true });
    } else {
      // An entry without its marker is a killed run's leftover.
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** `from` at `to`: a hard link when both are on one file system (and links are allowed), else a copy. */
export function linkOrCopy(from: string, to: string): void {
  try {
    linkSync(from, to);
  } catch {
    copyFileSync(from, to);
  }
}

/** Mark a cache entry as used now (pruneStale keeps what was used recently). */
function touchUsed(dir: string): void {
  const now = new Date();
  utimesSync(join(dir, 'complete'), now, now);
}

/**
 * A key over the image definition and every source file the build reads; with `artifactsDir`,
 * also the lock file that pins the release files and each file of that directory (name, size,
 * modification time: hashing gigabytes on every run would cost more than the check is worth).
 */
export function imageKey(imageFile: string, artifactsDir?: string): string {
  const h = createHash('sha256');
  for (const input of [...INPUTS, imageFile, ...(artifactsDir ? ['images/components.lock.json'] : [])]) {
    for (const f of files(join(ROOT, input))) h.update(relative(ROOT, f)).update('\0').update(readFileSync(f)).update('\0');
  }
  if (artifactsDir) {
    for (const f of files(artifactsDir)) {
      const s = statSync(f);
      h.update(`artifact ${relative(artifactsDir, f)} ${s.size} ${s.mtimeMs}\0`);
    }
  }
  return h.digest('hex').slice(0, 16);
}

export interface BuiltImage {
  dir: string;
  base: string;
  raw: string;
  qcow2: string;
  rootfsTar: string;
  report: Record<string, unknown>;
  /** Seconds the build took, or 0 when it came from the cache. */
  buildSeconds: number;
}

/**
 * The image built from `images/<file>` (its upstream release files from `artifactsDir` when
 * given), cached under ~/.cache/geminik8s/e2e/<name>-<key>/ so
 * the slow suites share one build per source state; rebuilt when missing or when any input changed.
 */
export async function testImage(file = 'test-amd64.yaml', log: (m: string) => void = () => {}, options: { artifactsDir?: string } = {}): Promise<BuiltImage> {
  const imageFile = join('images', file);
  const name = file.replace(/\.yaml$/, '');
  const cacheRoot = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s', 'e2e');
  const dir = join(cacheRoot, `${name}-${imageKey(imageFile, options.artifactsDir)}`);
  let buildSeconds = 0;
  if (!existsSync(join(dir, 'complete'))) {
    // Older builds of the same definition are stale: keep the disk from filling up.
    pruneStale(cacheRoot, name, dir);
    mkdirSync(dir, { recursive: true });
    log(`building ${imageFile} into ${dir}`);
    const started = Date.now();
    const r = await cli('build', '--image', join(ROOT, imageFile), '--out', dir, '--json', ...(options.artifactsDir ? ['--artifacts', options.artifactsDir] : []));
    if (r.code !== 0) throw new Error(`build of ${imageFile} failed (${r.code}): ${r.stderr.slice(-4000)}`);
    buildSeconds = (Date.now() - started) / 1000;
    writeFileSync(join(dir, 'complete'), `${new Date().toISOString()}\n`);
  } else {
    log(`using the cached build in ${dir}`);
    touchUsed(dir);
  }
  const reportFile = readdirSync(dir).find((n) => n.endsWith('.report.json'))!;
  const base = join(dir, reportFile.replace(/\.report\.json$/, ''));
  return { dir, base, raw: `${base}.raw`, qcow2: `${base}.qcow2`, rootfsTar: `${base}.rootfs.tar`, report: JSON.parse(readFileSync(join(dir, reportFile), 'utf8')), buildSeconds };
}

/**
 * Fill the cache entry of `images/<file>` from a root tar a suite has just built of the same
 * definition and sources (the rootfs suite's), so the suites after it do not build the same
 * root again: only the disk stage runs. Nothing happens when the entry is already complete.
 */
export async function seedTestImage(file: string, rootfsTar: string, manifest: string, log: (m: string) => void = () => {}): Promise<void> {
  const imageFile = join('images', file);
  const name = file.replace(/\.yaml$/, '');
  const cacheRoot = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s', 'e2e');
  const dir = join(cacheRoot, `${name}-${imageKey(imageFile)}`);
  if (existsSync(join(dir, 'complete'))) return;
  pruneStale(cacheRoot, name, dir);
  mkdirSync(dir, { recursive: true });
  for (const f of [rootfsTar, manifest]) linkOrCopy(f, join(dir, basename(f)));
  log(`disk stage of ${imageFile} from ${rootfsTar} into ${dir}`);
  const r = await cli('build', '--image', join(ROOT, imageFile), '--stage', 'disk', '--out', dir, '--json');
  if (r.code !== 0) throw new Error(`disk stage of ${imageFile} failed (${r.code}): ${r.stderr.slice(-4000)}`);
  writeFileSync(join(dir, 'complete'), `${new Date().toISOString()}\n`);
}

/** The cached build of `images/<file>` for the current sources, if one is complete; never builds. */
export function cachedTestImage(file = 'test-amd64.yaml'): { dir: string; raw: string; rootfsTar: string } | undefined {
  const cacheRoot = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s', 'e2e');
  const dir = join(cacheRoot, `${file.replace(/\.yaml$/, '')}-${imageKey(join('images', file))}`);
  if (!existsSync(join(dir, 'complete'))) return undefined;
  const reportFile = readdirSync(dir).find((n) => n.endsWith('.report.json'))!;
  const base = join(dir, reportFile.replace(/\.report\.json$/, ''));
  return { dir, raw: `${base}.raw`, rootfsTar: `${base}.rootfs.tar` };
}

/** One region of two disk images (the GPT header, then each partition of the first's table) and how many bytes differ in it. */
export interface RegionDiff {
  name: string;
  offset: number;
  size: number;
  differingBytes: number;
  firstDifference?: number;
}

/** Compare two disk images region by region: where they differ, and by how many bytes. */
export async function partitionDiff(a: string, b: string): Promise<RegionDiff[]> {
  const table = JSON.parse((await runPlan({ cmd: 'sfdisk', args: ['--json', a] })).stdout) as { partitiontable: { sectorsize?: number; partitions: { name?: string; start: number; size: number }[] } };
  const sector = table.partitiontable.sectorsize ?? 512;
  const regions = [{ name: 'GPT', offset: 0, size: 34 * sector }, ...table.partitiontable.partitions.map((p, i) => ({ name: p.name ?? `partition ${i + 1}`, offset: p.start * sector, size: p.size * sector }))];
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const out: RegionDiff[] = [];
    const bufA = Buffer.alloc(1 << 20);
    const bufB = Buffer.alloc(1 << 20);
    for (const r of regions) {
      const d: RegionDiff = { ...r, differingBytes: 0 };
      for (let pos = 0; pos < r.size; pos += bufA.length) {
        const n = Math.min(bufA.length, r.size - pos);
        const [ra, rb] = await Promise.all([fa.read(bufA, 0, n, r.offset + pos), fb.read(bufB, 0, n, r.offset + pos)]);
        if (ra.bytesRead === rb.bytesRead && bufA.subarray(0, n).equals(bufB.subarray(0, n))) continue;
        for (let i = 0; i < n; i++) {
          if (bufA[i] !== bufB[i]) {
            d.differingBytes++;
            d.firstDifference ??= pos + i;
          }
        }
      }
      out.push(d);
    }
    return out;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** Extract the kernel and initrd of a built root tar (the versioned files /boot's links name) into `dir`. */
export async function bootFiles(rootfsTar: string, dir: string): Promise<{ kernel: string; initrd: string }> {
  await runPlan({ cmd: 'tar', args: ['-xf', rootfsTar, '-C', dir, '--wildcards', './boot/vmlinuz-*', './boot/initrd.img-*'] });
  const names = readdirSync(join(dir, 'boot'));
  return { kernel: join(dir, 'boot', names.find((n) => n.startsWith('vmlinuz-'))!), initrd: join(dir, 'boot', names.find((n) => n.startsWith('initrd.img-'))!) };
}

export interface BuiltBundle {
  dir: string;
  /** The signed upgrade bundle. */
  bundle: string;
  /** The same bundle in the image the System Upgrade Controller pulls (`--output oci`). */
  oci: string;
  /** The minisign key pair that signed it (a test key, kept with the cached bundle). */
  publicKey: string;
  secretKey: string;
  version: string;
}

/**
 * An upgrade bundle of the test image at another `version`: the root re-made from the built
 * image's root tar (`--rootfs tar:`, so os-release and the manifest carry the new version),
 * signed with a test key made by `geminik8s keygen`, and the OCI image holding it. Cached
 * beside the image, keyed the same way.
 */
export async function upgradeBundle(img: BuiltImage, version: string, file = 'test-amd64.yaml', log: (m: string) => void = () => {}): Promise<BuiltBundle> {
  const name = `${file.replace(/\.yaml$/, '')}-upgrade-${version}`;
  const cacheRoot = join(img.dir, '..');
  const dir = join(cacheRoot, `${name}-${imageKey(join('images', file))}`);
  const base = `test-${version}-amd64`;
  const out = { dir, bundle: join(dir, `${base}.upgrade.tar`), oci: join(dir, `${base}.oci.tar`), publicKey: join(dir, 'release.pub'), secretKey: join(dir, 'release.key'), version };
  if (existsSync(join(dir, 'complete'))) {
    log(`using the cached bundle in ${dir}`);
    touchUsed(dir);
    return out;
  }
  log(`building the ${version} upgrade bundle into ${dir}.tmp-${process.pid}`);
  await buildEntry(cacheRoot, name, dir, log, async (tmp) => {
    const definition = join(tmp, `${name}.yaml`);
    writeFileSync(definition, readFileSync(join(ROOT, 'images', file), 'utf8').replace(/^version: .*$/m, `version: ${version}`));
    const k = await cli('keygen', '--out', join(tmp, 'release'));
    if (k.code !== 0) throw new Error(`keygen failed: ${k.stderr}`);
    const r = await cli('build', '--image', definition, '--rootfs', `tar:${img.rootfsTar}`, '--output', 'upgrade,oci', '--sign-key', join(tmp, 'release.key'), '--out', tmp, '--json');
    if (r.code !== 0) throw new Error(`build of the ${version} bundle failed (${r.code}): ${r.stderr.slice(-4000)}`);
    // The re-made root tar is only an intermediate here.
    rmSync(join(tmp, `${base}.rootfs.tar`), { force: true });
  });
  return out;
}

/** An installer built from a test image: the ISO file, or the PXE directory `pxe serve` serves. */
export interface BuiltInstaller {
  path: string;
  /** Seconds the build took, or 0 when it came from the cache. */
  seconds: number;
}

/**
 * `build --stage disk --output iso|pxe` of a built test image's root, cached beside the image and
 * keyed the same way (a change to the builder or the definition builds it again). The path is
 * the cache's own: a caller that may write beside it (pxe serve keeps its state in its
 * directory) works on links to it, as test/helpers/installer-e2e.ts does.
 */
export async function installerBuild(img: BuiltImage, format: 'iso' | 'pxe', arch: 'amd64' | 'arm64', log: (m: string) => void = () => {}): Promise<BuiltInstaller> {
  const file = `test-${arch}.yaml`;
  const name = `test-${arch}-${format}`;
  const cacheRoot = join(img.dir, '..');
  const dir = join(cacheRoot, `${name}-${imageKey(join('images', file))}`);
  const path = join(dir, `${basename(img.base)}.${format}`);
  if (existsSync(join(dir, 'complete'))) {
    log(`using the cached ${format} build in ${dir}`);
    touchUsed(dir);
    return { path, seconds: 0 };
  }
  log(`building --output ${format} into ${dir}.tmp-${process.pid}`);
  const started = Date.now();
  await buildEntry(cacheRoot, name, dir, log, async (tmp) => {
    const r = await cli('build', '--image', join(ROOT, 'images', file), '--stage', 'disk', '--rootfs-tar', img.rootfsTar, '--output', format, '--out', tmp, '--json');
    if (r.code !== 0) throw new Error(`build --output ${format} failed (${r.code}): ${r.stderr.slice(-3000)}`);
  });
  return { path, seconds: Math.round((Date.now() - started) / 1000) };
}
