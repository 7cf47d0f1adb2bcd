import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The host's PostgreSQL binaries for the harness and the adapter tests: the newest
 * /usr/lib/postgresql/N/bin with an initdb (Debian 12 ships 15, Debian 13 ships 17).
 * GEMINIK8S_PG_BIN overrides it. Undefined when none is installed.
 */
export function hostPgBinDir(): string | undefined {
  if (process.env.GEMINIK8S_PG_BIN) return process.env.GEMINIK8S_PG_BIN;
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).filter((v) => /^\d+$/.test(v) && existsSync(join(base, v, 'bin', 'initdb'))) : [];
  const newest = versions.map(Number).sort((a, b) => b - a)[0];
  return newest === undefined ? undefined : join(base, String(newest), 'bin');
}
