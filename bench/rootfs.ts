// npm run bench:rootfs -- [--image images/test-amd64.yaml] [--warm-only [--cache-dir DIR]] [--json FILE]
// Cold (empty apt and base root caches) and warm root builds; root size uncompressed and
// zstd-compressed. Each build says whether it made its base root, took it from the cache, or
// did without it (builder/src/rootfs/base-cache.ts).
// --image images/test-arm64.yaml measures an arm64 root built on this host through
// qemu-user-static binfmt. --warm-only skips the cold build and reuses an existing cache
// (default ~/.cache/geminik8s, as `geminik8s build` uses), which it leaves in place.
// Prints figures; asserts nothing.
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { arch, cpus, homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
};
const image = arg('--image', 'images/test-amd64.yaml');
const jsonFile = arg('--json', '');
const warmOnly = process.argv.includes('--warm-only');
const cacheDir = warmOnly
  ? arg('--cache-dir', join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s'))
  : mkdtempSync(join(tmpdir(), 'gk-bench-cache-'));
const cli = new URL('../bin/geminik8s.js', import.meta.url).pathname;
const outDirs: string[] = [];

interface BuildFigures { seconds: number; mmdebstrapSeconds: number; tar: string; arch: string; base: 'made' | 'cached' | 'not used' }

async function build(label: string): Promise<BuildFigures> {
  const out = mkdtempSync(join(tmpdir(), 'gk-bench-rootfs-'));
  outDirs.push(out);
  const started = performance.now();
  const r = await runPlan({ cmd: 'node', args: [cli, '--quiet', 'build', '--image', image, '--stage', 'rootfs', '--out', out, '--cache-dir', cacheDir, '--json'] }, { timeoutMs: 90 * 60_000 });
  const seconds = (performance.now() - started) / 1000;
  const events = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { message?: string; result?: { rootfs: string; manifest: string; steps: { step: string; ms?: number }[] } });
  const result = events.find((l) => l.result)!.result!;
  const said = events.map((e) => e.message ?? '').join('\n');
  const base = /base root from the cache/.test(said) ? 'cached' : /into a new base root/.test(said) ? 'made' : 'not used';
  const step = result.steps.find((s) => /mmdebstrap|root source|build the root/.test(s.step));
  const mmdebstrapSeconds = (step?.ms ?? 0) / 1000;
  const manifest = JSON.parse(readFileSync(result.manifest, 'utf8')) as { arch: string };
  console.log(`${label} build: ${seconds.toFixed(1)} s (root step ${mmdebstrapSeconds.toFixed(1)} s, base root ${base})`);
  return { seconds, mmdebstrapSeconds, tar: result.rootfs, arch: manifest.arch, base };
}

try {
  console.log(`${image} on ${arch()} (${cpus().length} cores), cache ${cacheDir}`);
  const cold = warmOnly ? undefined : await build('cold (empty caches)');
  const warm = await build('warm (caches filled)');
  const bytes = statSync(warm.tar).size;
  const zst = `${warm.tar}.zst`;
  await runPlan({ cmd: 'zstd', args: ['-q', '-T0', '-10', warm.tar, '-o', zst] });
  const compressed = statSync(zst).size;
  const figures = {
    image, arch: warm.arch, host: arch(), cores: cpus().length,
    coldSeconds: cold?.seconds ?? null, warmSeconds: warm.seconds,
    coldRootStepSeconds: cold?.mmdebstrapSeconds ?? null, warmRootStepSeconds: warm.mmdebstrapSeconds,
    coldBase: cold?.base ?? null, warmBase: warm.base,
    rootBytes: bytes, zstd10Bytes: compressed,
  };
  console.log(`root (${warm.arch}): ${(bytes / 1048576).toFixed(0)} MiB uncompressed, ${(compressed / 1048576).toFixed(0)} MiB zstd -10`);
  if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  if (!warmOnly) await rm(cacheDir, { recursive: true, force: true });
  for (const d of outDirs) await rm(d, { recursive: true, force: true });
}
