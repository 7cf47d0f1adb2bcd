import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCluster, loadImage } from '#common/config.ts';
import type { Secrets } from '#common/schema/seed.ts';
import type { TlsMaterial } from '#common/tls.ts';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const CLUSTER_FIXTURE = join(ROOT, 'test/fixtures/cluster.yaml');

/** Fixed, recognizable fake secrets: tests grep rendered output for them. */
export const FAKE_SECRETS: Secrets = {
  k3sToken: 'TEST-k3s-token-0123456789abcdef',
  postgresPassword: 'TEST-postgres-password-0123456789',
  replicationPassword: 'TEST-replication-password-0123456789',
  agentToken: 'TEST-agent-token-0123456789abcdef',
  witnessToken: 'TEST-witness-token-0123456789abcdef',
  readToken: 'TEST-read-token-0123456789abcdef',
  adminToken: 'TEST-admin-token-0123456789abcdef',
};

export const loadFixtureCluster = () => loadCluster(CLUSTER_FIXTURE);
export const loadImageDef = (name: string) => loadImage(join(ROOT, 'images', name));

const made: string[] = [];

/**
 * Remove the temporary directories this process made, when it exits; GEMINIK8S_KEEP_TEMP=1
 * keeps them for a look after a failure. A directory with anything still mounted under it
 * (a bind mount of the source tree, a loop mount) is left alone: removing it would reach into
 * the mounted file system.
 */
function removeMade(): void {
  if (process.env.GEMINIK8S_KEEP_TEMP === '1' || made.length === 0) return;
  const mounts = existsSync('/proc/self/mountinfo') ? readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter(Boolean) : [];
  for (const dir of made.splice(0)) {
    if (mounts.some((m) => m === dir || m.startsWith(`${dir}/`))) continue;
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // busy or already gone: the next run's cleanup is not ours to guarantee
    }
  }
}
process.once('exit', removeMade);

/** A fresh directory under the system's temporary directory, removed when the process exits. */
export function tempDir(prefix = 'gk-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/**
 * TLS material of the fixture cluster (site-a) for `party` (node1, node2, witness): made once
 * with common/tls.ts, valid for 100 years, committed so rendered seeds stay golden. Test-only keys.
 */
export function fakeTls(party: string): TlsMaterial {
  const read = (name: string): string => readFileSync(join(ROOT, 'test/fixtures/tls', name), 'utf8');
  return { ca: read('ca.crt'), cert: read(`${party}.crt`), key: read(`${party}.key`) };
}

/** The fixture CA itself (certificate and key), to issue further test certificates. */
export function fakeCa(): { cert: string; key: string } {
  const read = (name: string): string => readFileSync(join(ROOT, 'test/fixtures/tls', name), 'utf8');
  return { cert: read('ca.crt'), key: read('ca.key') };
}
