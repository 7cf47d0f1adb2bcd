import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Command } from 'commander';
import { loadImage } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { formatBytes } from '#common/schema/units.ts';
import { artifactSources, artifactsFor, parseChecksums, type ReleaseArtifact } from '../../components/catalog.ts';
import { artifactsPath, defaultCacheDir, fetchArtifacts } from '../../components/fetch.ts';
import { imageSource, resolvePlatformDigest } from '../../components/oci.ts';
import { readLock, writeLock } from '../../components/lock.ts';
import type { CliContext } from '../context.ts';

interface FetchOpts {
  image: string;
  artifacts?: string;
  offline?: boolean;
  cacheDir: string;
  lock?: string;
  json?: boolean;
}

const lockFileFor = (imageFile: string, explicit?: string): string => explicit ?? join(dirname(imageFile), 'components.lock.json');

/** `fetch` (verify into the cache) and `lock` (pin release checksums). */
export function registerComponents(program: Command, ctx: () => CliContext): void {
  program
    .command('fetch')
    .description('download and verify the upstream artifacts (K3s, Kine, kube-vip) of an image into the cache')
    .requiredOption('--image <file>', 'image definition')
    .option('--artifacts <dir>', 'air-gapped: take pre-fetched release files (and OCI image layouts, <component>/oci) from this directory')
    .option('--offline', 'never open a connection; fail naming every missing artifact')
    .option('--cache-dir <dir>', 'artifact cache', defaultCacheDir())
    .option('--lock <file>', 'lock file (default: components.lock.json next to the image definition)')
    .option('--json', 'print the resolved artifacts as JSON')
    .action(async (opts: FetchOpts) => {
      const c = ctx();
      const image = await loadImage(opts.image);
      const specs = artifactsFor(image, artifactSources());
      if (specs.length === 0) c.logger.info(`${opts.image}: the Kubernetes layer is off; no upstream artifacts`);
      const resolved = await fetchArtifacts(specs, {
        cacheDir: opts.cacheDir, artifactsDir: opts.artifacts, offline: opts.offline, lock: readLock(lockFileFor(opts.image, opts.lock)),
        onProgress: (name, got, total) => c.logger.info(`${name}: ${formatBytes(got)}${total ? ` of ${formatBytes(total)} (${Math.floor((got / total) * 100)}%)` : ''}`),
      });
      if (opts.json) return c.print(JSON.stringify(resolved.map((r) => ({ component: r.spec.component, version: r.spec.version, name: r.spec.name, sha256: r.sha256, path: r.path, source: r.source })), null, 2));
      for (const r of resolved) c.print(`${r.spec.component.padEnd(8)} ${r.spec.version.padEnd(14)} ${r.spec.name.padEnd(36)} ${r.sha256}  (${r.source})`);
    });

  program
    .command('lock')
    .description("pin the sha256 of an image's upstream artifacts from their releases' checksum files (container images: the platform manifest's digest)")
    .requiredOption('--image <file>', 'image definition')
    .option('--lock <file>', 'lock file (default: components.lock.json next to the image definition)')
    .option('--artifacts <dir>', 'read checksum files (and OCI image layouts, <component>/oci) from this directory instead of the network')
    .option('--cache-dir <dir>', 'artifact cache (the manifests read are kept there)', defaultCacheDir())
    .action(async (opts: { image: string; lock?: string; artifacts?: string; cacheDir: string }) => {
      const c = ctx();
      const image = await loadImage(opts.image);
      const file = lockFileFor(opts.image, opts.lock);
      const lock = readLock(file);
      const specs = artifactsFor(image, artifactSources());
      let changed = 0;
      const checksumOf = async (spec: ReleaseArtifact): Promise<string> => {
        const text = opts.artifacts
          ? await readFile(artifactsPath(opts.artifacts, spec.component, spec.checksumName), 'utf8')
          : await (async () => {
              const res = await fetch(spec.checksumUrl, { signal: AbortSignal.timeout(60_000) });
              if (!res.ok) throw new GeminiError(`cannot download ${spec.checksumUrl}: HTTP ${res.status}`, ExitCode.artifact);
              return res.text();
            })();
        const sum = parseChecksums(text).get(spec.name);
        if (!sum) throw new GeminiError(`${spec.checksumName} of ${spec.component} ${spec.version} lists no ${spec.name}`, ExitCode.artifact);
        return sum;
      };
      for (const spec of specs) {
        // An image is pinned by its platform manifest's digest, as the registry (or the layout) serves the tag now.
        const sum = spec.kind === 'image'
          ? await resolvePlatformDigest(spec, imageSource(spec, { cacheDir: opts.cacheDir }, opts.artifacts ? artifactsPath(opts.artifacts, spec.component, 'oci') : undefined))
          : await checksumOf(spec);
        const versions = (lock[spec.component] ??= {});
        const assets = (versions[spec.version] ??= {});
        if (assets[spec.name] !== sum) {
          c.logger.info(`${spec.component} ${spec.version} ${spec.name}: ${assets[spec.name] ? `${assets[spec.name]} -> ` : ''}${sum}`);
          assets[spec.name] = sum;
          changed++;
        }
      }
      await writeLock(file, lock);
      c.print(`${file}: ${changed} entr${changed === 1 ? 'y' : 'ies'} updated, ${specs.length} pinned for ${image.name} ${image.arch}`);
    });
}
