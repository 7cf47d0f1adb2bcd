import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCluster, loadImage } from '../../common/config.ts';
import type { Secrets } from '../../common/schema/seed.ts';

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
