import { mkdtempSync, readFileSync } from 'node:fs';
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

export function tempDir(prefix = 'gk-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
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
