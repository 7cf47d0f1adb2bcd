import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { cli } from '#lab/cli.ts';

/** A free TCP port on 127.0.0.1 (for QEMU socket links). */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Poll `probe` every `intervalMs` (3 s) until it gives a value; the last error is quoted on timeout. */
export async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** Where initGuestCluster puts the witness's credentials (`geminik8s witness credentials --out`). */
export const GUEST_WITNESS_TLS = 'witness-tls';

/**
 * `geminik8s init` for guests on a private L2, with failover timings for TCG guests, many
 * times slower than hardware (the defaults, a check every second with an 800 ms timeout, are
 * meant for real machines); validated. Without `witness` the pair fails over by hand only;
 * with it (HOST:PORT) init makes a lease witness and `geminik8s witness credentials` writes
 * its certificate into GUEST_WITNESS_TLS in the config directory. Returns the config directory.
 */
export async function initGuestCluster(name: string, net: { node1: string; node2: string; vip: string }, macs: { node1: string; node2: string }, witness?: string, dir = mkdtempSync(join(tmpdir(), `gk-e2e-${name}-`))): Promise<string> {
  const r = await cli('init', '--name', name, '--node1-ip', net.node1, '--node2-ip', net.node2, '--node1-mac', macs.node1, '--node2-mac', macs.node2,
    '--vip', net.vip, '--witness', witness ?? 'none', '--config-dir', dir);
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  const file = join(dir, 'cluster.yaml');
  const doc = parseDocument(readFileSync(file, 'utf8'), { version: '1.1' });
  doc.setIn(['failover'], doc.createNode({ checkInterval: '3s', checkTimeout: '5s', fenceAfter: '20s', promoteAfter: '30s', degradeAfter: '20s' }));
  writeFileSync(file, doc.toString());
  const v = await cli('validate', file);
  if (v.code !== 0) throw new Error(`the e2e cluster.yaml does not validate: ${v.stderr}`);
  if (witness) {
    const w = await cli('witness', 'credentials', '--cluster', file, '--out', join(dir, GUEST_WITNESS_TLS));
    if (w.code !== 0) throw new Error(`witness credentials failed: ${w.stderr}`);
  }
  return dir;
}
