import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { loadCluster, secretsDirOf, SECRET_FILES, TLS_DIR, tlsFiles } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { WITNESS_TLS_FILES } from '#agent/witness/serve.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { registerSecret } from '#common/log.ts';
import { nodeCertHosts, witnessHost, type Cluster } from '#common/schema/cluster.ts';
import { issueCa, issueLeaf, tlsMaterialProblem, type ClusterCa, type LeafSubject } from '#common/tls.ts';

/** The witness's party name: the CN of its certificate. */
export const WITNESS_PARTY = 'witness';

/** A node's certificate subject: the names in `nodeCertHosts`, for serving and calling. */
export function nodeSubject(cluster: Cluster, name: string): LeafSubject {
  return { cluster: cluster.name, name, hosts: nodeCertHosts(cluster, name), usage: 'both' };
}

/** The witness's certificate covers the host of the cluster's witness URL. */
export function witnessSubject(cluster: Cluster, host: string): LeafSubject {
  return { cluster: cluster.name, name: WITNESS_PARTY, hosts: [host], usage: 'server' };
}

/** The host of a lease witness's URL (see witnessHost); undefined for other witnesses. */
export function witnessUrlHost(cluster: Cluster): string | undefined {
  return cluster.witness.type === 'lease' ? witnessHost(cluster.witness.url) : undefined;
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}

export interface TlsWriteResult {
  written: string[];
  kept: string[];
}

/** Read the CA from `secretsDir`, or make one when there is none. */
export async function ensureCa(secretsDir: string, cluster: Cluster, result: TlsWriteResult): Promise<ClusterCa> {
  const dir = join(secretsDir, TLS_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const files = tlsFiles(secretsDir, 'ca');
  const [cert, key] = [await readOptional(files.cert), await readOptional(files.key)];
  if (cert && key) {
    registerSecret(key);
    result.kept.push(files.cert);
    return { cert, key };
  }
  const ca = await issueCa(cluster.name);
  registerSecret(ca.key);
  // The key first: a certificate without its key under the final name would be kept next time.
  await writeFileAtomic(files.key, ca.key, 0o600);
  await writeFileAtomic(files.cert, ca.cert, 0o600);
  result.written.push(files.key, files.cert);
  return ca;
}

/**
 * Issue `subject`'s certificate into `secretsDir` unless a valid one is there: a certificate is
 * reissued when `rotate` is set, or when it no longer fits (another CA, name, host, or expired).
 */
export async function ensureLeaf(secretsDir: string, ca: ClusterCa, subject: LeafSubject, rotate: boolean, result: TlsWriteResult): Promise<{ cert: string; key: string }> {
  const files = tlsFiles(secretsDir, subject.name);
  const [cert, key] = [await readOptional(files.cert), await readOptional(files.key)];
  if (cert && key && !rotate) {
    registerSecret(key);
    const fits = subject.hosts.every((host) => !tlsMaterialProblem({ ca: ca.cert, cert, key }, { cluster: subject.cluster, name: subject.name, host }, new Date()));
    if (fits) {
      result.kept.push(files.cert);
      return { cert, key };
    }
  }
  const leaf = await issueLeaf(ca, subject);
  registerSecret(leaf.key);
  await writeFileAtomic(files.key, leaf.key, 0o600);
  await writeFileAtomic(files.cert, leaf.cert, 0o600);
  result.written.push(files.key, files.cert);
  return leaf;
}

/**
 * A new key and certificate for `node` from the kept CA, written to `secretsDir` (certs rotate,
 * replace-node): the material and the files written.
 */
export async function reissueNodeCert(secretsDir: string, cluster: Cluster, node: string): Promise<{ cert: string; key: string; written: string[] }> {
  const result: TlsWriteResult = { written: [], kept: [] };
  const leaf = await ensureLeaf(secretsDir, await ensureCa(secretsDir, cluster, result), nodeSubject(cluster, node), true, result);
  return { ...leaf, written: result.written };
}

/**
 * The cluster's TLS files: the CA (made once, kept), a certificate per node and one for a lease
 * witness. Nothing without TLS (`agent.insecurePlaintext`). Operators get no certificate: they
 * verify the agents and the witness with the CA and authenticate with tokens, so the only
 * client certificates the CA ever issues are the two nodes' (pg_hba's clientcert=verify-ca and
 * the witness's lease calls rely on that).
 */
export async function writeClusterTls(secretsDir: string, cluster: Cluster, options: { rotate: boolean }): Promise<TlsWriteResult> {
  const result: TlsWriteResult = { written: [], kept: [] };
  if (cluster.agent.insecurePlaintext) return result;
  const ca = await ensureCa(secretsDir, cluster, result);
  for (const node of cluster.nodes) await ensureLeaf(secretsDir, ca, nodeSubject(cluster, node.name), options.rotate, result);
  const host = witnessUrlHost(cluster);
  if (host) await ensureLeaf(secretsDir, ca, witnessSubject(cluster, host), options.rotate, result);
  return result;
}

export interface CredentialsOptions {
  cluster?: string;
  out: string;
  host?: string;
  rotate?: boolean;
  force?: boolean;
}

/**
 * Write what the witness box needs into `out` (0700, files 0600): its certificate and key, the
 * cluster CA's certificate and the witness token. Issued from the cluster CA under secrets/tls/.
 */
export async function writeWitnessCredentials(clusterFile: string, opts: CredentialsOptions): Promise<{ written: string[]; issued: boolean }> {
  const cluster = await loadCluster(clusterFile);
  if (cluster.agent.insecurePlaintext) throw new GeminiError(`${clusterFile}: agent.insecurePlaintext is set, so the witness runs without certificates (witness serve --insecure-plaintext)`, ExitCode.invalidInput);
  const host = opts.host ?? witnessUrlHost(cluster);
  if (!host) throw new GeminiError(`${clusterFile}: the cluster has no lease witness; pass --host HOST to issue a certificate for one`, ExitCode.invalidInput);
  if (existsSync(opts.out) && !opts.force) throw new GeminiError(`${opts.out} already exists; pass --force to replace it`, ExitCode.refused);
  const secretsDir = secretsDirOf(clusterFile, cluster);
  const result: TlsWriteResult = { written: [], kept: [] };
  const ca = await ensureCa(secretsDir, cluster, result);
  await ensureLeaf(secretsDir, ca, witnessSubject(cluster, host), Boolean(opts.rotate), result);
  const source = tlsFiles(secretsDir, WITNESS_PARTY);
  const staging = `${opts.out.replace(/\/+$/, '')}.tmp-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true, mode: 0o700 });
  try {
    await chmod(staging, 0o700);
    await writeFileAtomic(join(staging, WITNESS_TLS_FILES.cert), await readFile(source.cert, 'utf8'), 0o600);
    await writeFileAtomic(join(staging, WITNESS_TLS_FILES.key), await readFile(source.key, 'utf8'), 0o600);
    await writeFileAtomic(join(staging, WITNESS_TLS_FILES.ca), ca.cert, 0o600);
    await writeFileAtomic(join(staging, 'witness-token'), await readFile(join(secretsDir, SECRET_FILES.witnessToken), 'utf8'), 0o600);
    await rm(opts.out, { recursive: true, force: true });
    await rename(staging, opts.out);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  return { written: [...Object.values(WITNESS_TLS_FILES), 'witness-token'].map((f) => join(opts.out, f)), issued: result.written.length > 0 };
}
