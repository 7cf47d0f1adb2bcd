// npm run bench:rootfs -- [--image images/test-amd64.yaml] [--json FILE]
// Cold (empty apt cache) and warm root builds; root size uncompressed and zstd-compressed.
// Prints figures; asserts nothing.
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '../common/exec.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
};
const image = arg('--image', 'images/test-amd64.yaml');
const jsonFile = arg('--json', '');
const cacheDir = mkdtempSync(join(tmpdir(), 'gk-bench-cache-'));
const cli = new URL('../bin/geminik8s.js', import.meta.url).pathname;

async function build(label: string): Promise<{ seconds: number; tar: string }> {
  const out = mkdtempSync(join(tmpdir(), 'gk-bench-rootfs-'));
  const started = performance.now();
  const r = await runPlan({ cmd: 'node', args: [cli, '--quiet', 'build', '--image', image, '--stage', 'rootfs', '--out', out, '--cache-dir', cacheDir, '--json'] }, { timeoutMs: 60 * 60_000 });
  const seconds = (performance.now() - started) / 1000;
  const result = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { result?: { rootfs: string } }).find((l) => l.result)!.result!;
  console.log(`${label} build: ${seconds.toFixed(1)} s`);
  return { seconds, tar: result.rootfs };
}

try {
  const cold = await build('cold (empty apt cache)');
  const warm = await build('warm (apt cache filled)');
  const bytes = statSync(warm.tar).size;
  const zst = `${warm.tar}.zst`;
  await runPlan({ cmd: 'zstd', args: ['-q', '-T0', '-10', warm.tar, '-o', zst] });
  const compressed = statSync(zst).size;
  const figures = { image, coldSeconds: cold.seconds, warmSeconds: warm.seconds, rootBytes: bytes, zstd10Bytes: compressed };
  console.log(`root: ${(bytes / 1048576).toFixed(0)} MiB uncompressed, ${(compressed / 1048576).toFixed(0)} MiB zstd -10`);
  if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  await rm(cacheDir, { recursive: true, force: true });
}
