import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { SECRET_FILES } from '#common/config.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { registerSecret } from '#common/log.ts';
import { SECRET_NAMES, type Secrets } from '#common/schema/seed.ts';

/** A random secret: 32 bytes, base64url (43 characters, safe in DSNs and config files). */
export function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function generateSecrets(): Secrets {
  const s = Object.fromEntries(SECRET_NAMES.map((n) => [n, newSecret()])) as Secrets;
  for (const v of Object.values(s)) registerSecret(v);
  return s;
}

export interface SecretsWriteResult {
  written: string[];
  kept: string[];
}

/**
 * Write the secrets directory (0700) and files (0600). Existing secret files are kept unless
 * `rotate` is set, so re-running init never breaks a running cluster by accident.
 */
export async function writeSecrets(dir: string, options: { rotate: boolean }): Promise<SecretsWriteResult> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  if ((st.mode & 0o077) !== 0) {
    // mkdir does not change an existing directory; tighten it rather than leak secrets.
    const { chmod } = await import('node:fs/promises');
    await chmod(dir, 0o700);
  }
  const result: SecretsWriteResult = { written: [], kept: [] };
  for (const name of SECRET_NAMES) {
    const file = join(dir, SECRET_FILES[name]);
    if (existsSync(file) && !options.rotate) {
      registerSecret((await readFile(file, 'utf8')).trim());
      result.kept.push(file);
      continue;
    }
    const value = newSecret();
    registerSecret(value);
    await writeFileAtomic(file, `${value}\n`, 0o600);
    result.written.push(file);
  }
  return result;
}
