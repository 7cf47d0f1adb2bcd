// npm run bench:image -- [--image images/test-amd64.yaml] [--json FILE] [--no-cold] [--no-boot]
// Full image build (root tar + disk images), cold (empty apt and base root caches) and warm; the size of every
// output; boot-to-marker time under TCG for BIOS and UEFI, wall and guest (uptime at the marker).
// Prints figures; asserts nothing.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { bootVm, READY_MARKER, type Firmware } from '#qemu/index.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
};
const image = arg('--image', 'images/test-amd64.yaml');
const jsonFile = arg('--json', '');
const cli = new URL('../bin/geminik8s.js', import.meta.url).pathname;
const coldCache = mkdtempSync(join(tmpdir(), 'gk-bench-cache-'));
const warmCache = arg('--cache-dir', join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '/root', '.cache'), 'geminik8s'));

interface BuildFigures { seconds: number; outputs: { format: string; file: string; bytes: number }[]; rootBytes: number; slotBytes: number | null; steps: unknown }

async function build(label: string, cacheDir: string): Promise<BuildFigures> {
  const out = mkdtempSync(join(tmpdir(), 'gk-bench-image-'));
  const started = performance.now();
  const r = await runPlan({ cmd: 'node', args: [cli, '--quiet', 'build', '--image', image, '--out', out, '--cache-dir', cacheDir, '--json'] }, { timeoutMs: 90 * 60_000 });
  const seconds = (performance.now() - started) / 1000;
  const result = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { result?: Record<string, never> }).find((l) => l.result)!.result! as unknown as {
    outputs: BuildFigures['outputs']; rootfs: { bytes: number; slotBytes: number | null }; steps: unknown;
  };
  console.log(`${label} build: ${seconds.toFixed(1)} s`);
  for (const o of result.outputs) console.log(`  ${o.format.padEnd(8)} ${(o.bytes / 1048576).toFixed(1)} MiB  ${o.file}`);
  return { seconds, outputs: result.outputs, rootBytes: result.rootfs.bytes, slotBytes: result.rootfs.slotBytes, steps: result.steps };
}

async function boot(file: string, firmware: Firmware): Promise<{ wallSeconds: number; guestSeconds: number | null }> {
  const vm = await bootVm({ arch: image.includes('arm64') ? 'arm64' : 'amd64', firmware, image: file, format: 'qcow2' });
  try {
    const r = await vm.waitFor(READY_MARKER, 15 * 60_000);
    const figures = { wallSeconds: r.elapsedMs / 1000, guestSeconds: r.guestUptimeS ?? null };
    console.log(`boot to marker, ${firmware}: ${figures.wallSeconds.toFixed(1)} s wall, ${figures.guestSeconds?.toFixed(1) ?? '?'} s guest uptime`);
    return figures;
  } finally {
    await vm.stop();
  }
}

try {
  const cold = process.argv.includes('--no-cold') ? null : await build('cold (empty apt and base root caches)', coldCache);
  const warm = await build('warm (caches filled)', warmCache);
  const qcow2 = warm.outputs.find((o) => o.format === 'qcow2')?.file;
  const boots: Record<string, unknown> = {};
  if (qcow2 && !process.argv.includes('--no-boot')) {
    for (const fw of image.includes('arm64') ? (['uefi'] as const) : (['bios', 'uefi'] as const)) boots[fw] = await boot(qcow2, fw);
  }
  const figures = { image, cold, warm, boots };
  if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  await rm(coldCache, { recursive: true, force: true });
}
