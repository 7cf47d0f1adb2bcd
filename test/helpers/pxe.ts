import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { spawnPlan } from '#common/exec.ts';
import { PXE_FILES } from '#builder/pxe/server.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from './fixtures.ts';

export const MAC1 = '52:54:00:aa:00:11';
export const MAC2 = '52:54:00:aa:00:12';

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/**
 * A cluster from `init` with both MACs and `disk` rules on node1, and a directory holding the
 * files pxe serve needs (generated; `image` replaces image.raw.zst when given).
 */
export async function pxeSite(disk: Record<string, string>, image?: Buffer): Promise<{ dir: string; clusterFile: string; served: string }> {
  const dir = tempDir('gk-pxe-');
  const init = await cli('init', '--name', 'line-7', '--node1-ip', '10.7.0.11', '--node2-ip', '10.7.0.12', '--vip', '10.7.0.50', '--node1-mac', MAC1, '--node2-mac', MAC2, '--config-dir', dir);
  if (init.code !== 0) throw new Error(init.stderr);
  const clusterFile = join(dir, 'cluster.yaml');
  const doc = parseDocument(readFileSync(clusterFile, 'utf8'));
  doc.setIn(['nodes', 0, 'install'], { disk });
  writeFileSync(clusterFile, doc.toString());
  const served = join(dir, 'served');
  mkdirSync(served);
  for (const [i, f] of Object.values(PXE_FILES).entries()) writeFileSync(join(served, f), Buffer.alloc(1000 + i, i + 1));
  if (image) writeFileSync(join(served, PXE_FILES.image), image);
  return { dir, clusterFile, served };
}

/**
 * `geminik8s pxe serve --json` as its own process on loopback, once it answers; `image: false`
 * leaves --image out (the directory's pxe.json then says); `baseUrl`: the address machines reach
 * it at (a QEMU guest forward), while `base` stays the loopback address.
 */
export async function startPxeServe(served: string, clusterFile: string, port: number, o: { image?: boolean; baseUrl?: string } = {}): Promise<{ base: string; events: () => Record<string, string>[]; stderr: string[]; stop: () => void }> {
  const base = `http://127.0.0.1:${port}`;
  const image = o.image === false ? [] : ['--image', join(ROOT, 'images/test-amd64.yaml')];
  const args = [join(ROOT, 'bin/geminik8s.js'), 'pxe', 'serve', '--dir', served, '--cluster', clusterFile, ...image, '--listen', `127.0.0.1:${port}`, ...(o.baseUrl ? ['--base-url', o.baseUrl] : []), '--json'];
  const out: string[] = [];
  const err: string[] = [];
  const p = spawnPlan({ cmd: process.execPath, args }, { stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
  for (let i = 0; i < 600; i++) {
    if (await fetch(`${base}/boot.ipxe`).then((r) => r.ok, () => false)) {
      return { base, events: () => out.map((l) => JSON.parse(l) as Record<string, string>), stderr: err, stop: () => p.kill('SIGKILL') };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  p.kill('SIGKILL');
  throw new Error(`pxe serve did not answer:\n${err.join('\n')}`);
}
