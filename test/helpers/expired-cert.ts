import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { newKeyPem } from '#common/tls.ts';

/**
 * A leaf certificate from `ca` that expired long ago (valid 2020-01-01 to 2020-01-02), for the
 * "expired credentials" cases. `openssl ca` is the one openssl command that takes explicit
 * dates; init never issues such a thing.
 */
export async function expiredLeaf(ca: { cert: string; key: string }, subject: { cluster: string; name: string; hosts: string[] }): Promise<{ cert: string; key: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'gk-expired-'));
  try {
    const key = newKeyPem();
    writeFileSync(join(dir, 'leaf.key'), key, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.key'), ca.key, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.crt'), ca.cert);
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'serial.txt'), '01\n');
    writeFileSync(join(dir, 'ca.cnf'), [
      '[ca]', 'default_ca = x', '[x]', `database = ${join(dir, 'index.txt')}`, `serial = ${join(dir, 'serial.txt')}`, `new_certs_dir = ${dir}`,
      'default_md = sha256', 'policy = p', 'copy_extensions = copy', 'unique_subject = no', '[p]', 'organizationName = supplied', 'commonName = supplied', '',
    ].join('\n'));
    const san = subject.hosts.map((h) => (/^[\d.]+$/.test(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
    await runPlan({ cmd: 'openssl', args: ['req', '-new', '-key', join(dir, 'leaf.key'), '-subj', `/O=${subject.cluster}/CN=${subject.name}`, '-addext', `subjectAltName=${san}`, '-addext', 'extendedKeyUsage=serverAuth,clientAuth', '-out', join(dir, 'leaf.csr')] });
    await runPlan({ cmd: 'openssl', args: ['ca', '-batch', '-config', join(dir, 'ca.cnf'), '-cert', join(dir, 'ca.crt'), '-keyfile', join(dir, 'ca.key'), '-in', join(dir, 'leaf.csr'), '-out', join(dir, 'leaf.crt'), '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-notext'] });
    return { cert: readFileSync(join(dir, 'leaf.crt'), 'utf8'), key };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
