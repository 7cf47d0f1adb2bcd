import { X509Certificate, createHash, createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { runPlan, type CommandPlan } from './exec.ts';

/** A party's TLS material as PEM text: the cluster CA's certificate, its own certificate and key. */
export interface TlsMaterial {
  ca: string;
  cert: string;
  key: string;
}

/** The cluster CA: certificate and private key (the key never leaves the build host's secrets/). */
export interface ClusterCa {
  cert: string;
  key: string;
}

/** What a certificate is for: a node serves and calls, the witness serves, an operator would only call. */
export type CertUsage = 'server' | 'client' | 'both';

/** Who a leaf certificate names. */
export interface LeafSubject {
  /** The cluster name (the subject's O): the witness keeps several clusters apart by it. */
  cluster: string;
  /** The party's name (the subject's CN): a node name, or `witness`. */
  name: string;
  /** IP addresses and DNS names the certificate is valid for. */
  hosts: string[];
  usage: CertUsage;
}

/**
 * Validity of the CA (20 years) and of leaf certificates (10 years). Nothing renews them on a
 * node yet, and an expired certificate cuts the pair apart, so they are long; `init
 * --rotate-certs` reissues leaves from the kept CA.
 */
export const CA_DAYS = 7300;
export const LEAF_DAYS = 3650;

const PEM_CERT = /^-----BEGIN CERTIFICATE-----\n[\s\S]+?\n-----END CERTIFICATE-----\n?$/;
const PEM_KEY = /^-----BEGIN (EC |RSA )?PRIVATE KEY-----\n[\s\S]+?\n-----END (EC |RSA )?PRIVATE KEY-----\n?$/;

export function isCertPem(text: string): boolean {
  return PEM_CERT.test(text);
}
export function isKeyPem(text: string): boolean {
  return PEM_KEY.test(text);
}

function subjectText(parts: [string, string][]): string {
  // openssl -subj: '/' separates fields, so a name with '/' or '\' or '+' would change the subject.
  for (const [, v] of parts) if (/[/\\+=,]/.test(v)) throw new Error(`certificate subject value ${JSON.stringify(v)} contains a character reserved in subjects`);
  return parts.map(([k, v]) => `/${k}=${v}`).join('');
}

function sanText(hosts: string[]): string {
  return hosts.map((h) => (isIP(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
}

/** A fresh EC P-256 key as PKCS#8 PEM (made here so openssl never writes a key file under a umask). */
export function newKeyPem(): string {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

function serial(): string {
  // 16 random bytes with the top bit clear: a positive serial, unique with overwhelming odds.
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  return `0x${b.toString('hex')}`;
}

/**
 * The openssl call that self-signs the cluster CA with `keyFile` into `certFile` (pure).
 * Only certificate signing: the CA never serves or calls anything.
 */
export function caPlan(cluster: string, keyFile: string, certFile: string, days = CA_DAYS): CommandPlan {
  return {
    cmd: 'openssl',
    args: [
      'req', '-x509', '-new', '-key', keyFile, '-out', certFile, '-days', String(days), '-sha256',
      '-subj', subjectText([['O', cluster], ['CN', `geminik8s ${cluster} CA`]]),
      '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-addext', 'subjectKeyIdentifier=hash',
    ],
    title: `cluster CA for ${cluster}`,
  };
}

/** The openssl calls that issue a leaf certificate for `subject` signed by the CA (pure). */
export function leafPlans(subject: LeafSubject, files: { key: string; csr: string; cert: string; caCert: string; caKey: string }, days = LEAF_DAYS): CommandPlan[] {
  if (!subject.hosts.length) throw new Error(`certificate for ${subject.name}: at least one host (IP or DNS name) is needed`);
  const eku = { server: 'serverAuth', client: 'clientAuth', both: 'serverAuth,clientAuth' }[subject.usage];
  return [
    {
      cmd: 'openssl',
      args: [
        'req', '-new', '-key', files.key, '-out', files.csr, '-sha256',
        '-subj', subjectText([['O', subject.cluster], ['CN', subject.name]]),
        '-addext', `subjectAltName=${sanText(subject.hosts)}`,
        '-addext', 'basicConstraints=critical,CA:FALSE',
        '-addext', 'keyUsage=critical,digitalSignature,keyEncipherment',
        '-addext', `extendedKeyUsage=${eku}`,
      ],
      title: `certificate request for ${subject.name}`,
    },
    {
      cmd: 'openssl',
      args: [
        'x509', '-req', '-in', files.csr, '-CA', files.caCert, '-CAkey', files.caKey, '-out', files.cert,
        '-days', String(days), '-sha256', '-set_serial', serial(), '-copy_extensions', 'copyall',
      ],
      title: `certificate for ${subject.name}`,
    },
  ];
}

/** Run `fn` with a private (0700) scratch directory that is removed afterwards, keys included. */
async function withScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'geminik8s-tls-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Make a new cluster CA. */
export async function issueCa(cluster: string, days = CA_DAYS): Promise<ClusterCa> {
  return withScratch(async (dir) => {
    const key = newKeyPem();
    const keyFile = join(dir, 'ca.key');
    const certFile = join(dir, 'ca.crt');
    await writeFile(keyFile, key, { mode: 0o600 });
    await runPlan(caPlan(cluster, keyFile, certFile, days));
    return { key, cert: await readFile(certFile, 'utf8') };
  });
}

/** Issue a leaf certificate and key for `subject`, signed by `ca`. */
export async function issueLeaf(ca: ClusterCa, subject: LeafSubject, days = LEAF_DAYS): Promise<{ cert: string; key: string }> {
  return withScratch(async (dir) => {
    const key = newKeyPem();
    const files = { key: join(dir, 'leaf.key'), csr: join(dir, 'leaf.csr'), cert: join(dir, 'leaf.crt'), caCert: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key') };
    await writeFile(files.key, key, { mode: 0o600 });
    await writeFile(files.caKey, ca.key, { mode: 0o600 });
    await writeFile(files.caCert, ca.cert);
    for (const plan of leafPlans(subject, files, days)) await runPlan(plan);
    return { key, cert: await readFile(files.cert, 'utf8') };
  });
}

/** SHA-256 of a certificate's DER (given as PEM, or as the DER itself), lower-case hex without separators. */
export function certFingerprint(cert: string | Buffer): string {
  return createHash('sha256').update(typeof cert === 'string' ? new X509Certificate(cert).raw : cert).digest('hex');
}

/** What a certificate says about its holder. */
export interface CertFacts {
  /** Subject O (the cluster) and CN (the party). */
  cluster?: string;
  name?: string;
  /** IP addresses and DNS names of the subjectAltName. */
  hosts: string[];
  notBefore: Date;
  notAfter: Date;
}

function subjectField(subject: string, field: string): string | undefined {
  for (const line of subject.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0 && line.slice(0, i) === field) return line.slice(i + 1);
  }
  return undefined;
}

export function certFacts(pem: string): CertFacts {
  const x = new X509Certificate(pem);
  const hosts = (x.subjectAltName ?? '').split(', ').filter(Boolean).map((e) => e.replace(/^(IP Address|DNS):/, ''));
  return { cluster: subjectField(x.subject, 'O'), name: subjectField(x.subject, 'CN'), hosts, notBefore: new Date(x.validFrom), notAfter: new Date(x.validTo) };
}

/**
 * Why `material` cannot serve as `name` of `cluster` at `host`, or undefined when it can: the
 * certificate must be signed by the CA, name the party, cover the host and match the key, and,
 * when `now` is given, be valid then.
 */
export function tlsMaterialProblem(material: TlsMaterial, expect: { cluster: string; name: string; host?: string }, now?: Date): string | undefined {
  let cert: X509Certificate;
  let ca: X509Certificate;
  try {
    cert = new X509Certificate(material.cert);
    ca = new X509Certificate(material.ca);
  } catch (err) {
    return `not a certificate: ${(err as Error).message}`;
  }
  if (!cert.verify(ca.publicKey)) return 'the certificate is not signed by the cluster CA';
  try {
    if (!cert.checkPrivateKey(createPrivateKey(material.key))) return 'the key does not belong to the certificate';
  } catch (err) {
    return `not a private key: ${(err as Error).message}`;
  }
  const facts = certFacts(material.cert);
  if (facts.cluster !== expect.cluster || facts.name !== expect.name) return `the certificate names ${facts.name ?? '?'} of cluster ${facts.cluster ?? '?'}, not ${expect.name} of cluster ${expect.cluster}`;
  if (expect.host && !facts.hosts.includes(expect.host)) return `the certificate does not cover ${expect.host} (it covers ${facts.hosts.join(', ') || 'nothing'})`;
  if (now && facts.notAfter < now) return `the certificate expired on ${facts.notAfter.toISOString()}`;
  return undefined;
}

/** Who is on the other end of a TLS connection: a client certificate that verified against the CA, else undefined. */
export function peerIdentity(socket: unknown): { cluster?: string; name?: string } | undefined {
  const s = socket as Partial<TLSSocket>;
  if (typeof s.getPeerCertificate !== 'function' || !s.authorized) return undefined;
  const cert = s.getPeerCertificate();
  if (!cert || !cert.subject) return undefined;
  const field = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? undefined : v);
  return { cluster: field(cert.subject.O), name: field(cert.subject.CN) };
}
