import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import type * as z from 'zod';
import { ExitCode, GeminiError, ValidationError, type ValidationIssue } from './errors.ts';
import { registerSecret } from './log.ts';
import { ClusterSchema, clusterRules, type Cluster } from './schema/cluster.ts';
import { API_VERSION, ImageSchema, imageRules, normalizeImage, type Image } from './schema/image.ts';
import type { RuleIssue } from './schema/rules.ts';
import { NodeSeedSchema, normalizeSeed, SECRET_NAMES, SecretsSchema, seedRules, type NodeSeed, type Secrets } from './schema/seed.ts';
import type { TlsMaterial } from './tls.ts';
import { describeValue, issuesFromZod, locate, parseSource, readSource, type SourceDocument } from './source.ts';

export const KINDS = ['Image', 'Cluster', 'NodeSeed'] as const;
export type Kind = (typeof KINDS)[number];

export type Validated =
  | { kind: 'Image'; value: Image }
  | { kind: 'Cluster'; value: Cluster }
  | { kind: 'NodeSeed'; value: NodeSeed };

/** Which kind of document this is: the `kind` field, else its shape. */
export function detectKind(data: unknown): Kind | undefined {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return undefined;
  const record = data as Record<string, unknown>;
  if (typeof record.kind === 'string') return (KINDS as readonly string[]).includes(record.kind) ? (record.kind as Kind) : undefined;
  if ('secrets' in record && 'node' in record && 'cluster' in record) return 'NodeSeed';
  if ('nodes' in record) return 'Cluster';
  if ('components' in record || 'arch' in record) return 'Image';
  return undefined;
}

function locateRules(source: SourceDocument, rules: RuleIssue[]): ValidationIssue[] {
  return rules.map((r) => ({ file: source.file, ...locate(source, r.path), path: r.path.join('.'), message: r.message, found: r.found, expected: r.expected }));
}

/**
 * Validate in stages: schema (with normalization of units), then cross-field rules.
 * Stops after the schema stage when it fails, because rules need well-typed input.
 */
function validateWith<S extends z.ZodType, T>(
  source: SourceDocument,
  schema: S,
  normalize: (parsed: z.output<S>) => T,
  rules: (value: T) => RuleIssue[],
): { value?: T; issues: ValidationIssue[] } {
  const parsed = schema.safeParse(source.data);
  if (parsed.success) {
    const value = normalize(parsed.data as z.output<S>);
    const issues = locateRules(source, rules(value));
    return issues.length ? { issues } : { value, issues };
  }
  const issues = issuesFromZod(source, parsed.error);
  // Report cross-field problems too, where the fields they involve are sound: drop what the
  // schema rejected, and if what remains parses, run the rules on it.
  const pruned = pruneInvalid(source.data, parsed.error, schema);
  if (pruned) {
    const bad = parsed.error.issues.flatMap((i) =>
      i.code === 'unrecognized_keys' ? i.keys.map((k) => [...i.path, k].join('.')) : [i.path.join('.')],
    );
    const touches = (p: string): boolean => bad.some((b) => b === p || b.startsWith(`${p}.`) || p.startsWith(`${b}.`));
    const ruleIssues = rules(normalize(pruned as z.output<S>)).filter(
      (r) => !touches(r.path.join('.')) && !(r.related ?? []).some((rel) => touches(rel.join('.'))),
    );
    issues.push(...locateRules(source, ruleIssues));
  }
  return { issues };
}

/** Remove the values a schema rejected (up to a few rounds); the parsed rest, or undefined. */
function pruneInvalid(data: unknown, error: z.ZodError, schema: z.ZodType): unknown {
  let current = structuredClone(data);
  let err: z.ZodError | undefined = error;
  for (let round = 0; round < 5 && err; round++) {
    for (const issue of err.issues) {
      if (issue.code === 'unrecognized_keys') {
        const parent = getIn(current, issue.path);
        if (parent && typeof parent === 'object') for (const k of issue.keys) delete (parent as Record<string, unknown>)[k];
      } else if (issue.path.length > 0) {
        const parent = getIn(current, issue.path.slice(0, -1));
        const key = issue.path[issue.path.length - 1]!;
        if (!parent || typeof parent !== 'object' || Array.isArray(parent)) return undefined;
        const record = parent as Record<PropertyKey, unknown>;
        // Names only feed equality rules, so a unique stand-in cannot invent a problem elsewhere;
        // other rejected values are dropped, and defaults take their place where there are some.
        if (key === 'name' || key === 'node') record[key] = `placeholder-${round}-${issue.path.join('-')}`.toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 63);
        else delete record[key];
      } else {
        return undefined;
      }
    }
    const again = schema.safeParse(current);
    if (again.success) return again.data;
    err = again.error;
    current = structuredClone(current);
  }
  return undefined;
}

function getIn(data: unknown, path: readonly PropertyKey[]): unknown {
  let v = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

/** Validate one parsed document, of a given kind or of the kind it declares. */
export function validateSource(source: SourceDocument, expectedKind?: Kind): { result?: Validated; issues: ValidationIssue[] } {
  const kind = detectKind(source.data);
  if (!kind) {
    const found = typeof source.data === 'object' && source.data !== null ? (source.data as Record<string, unknown>).kind : undefined;
    return {
      issues: [{
        file: source.file, ...locate(source, ['kind']), path: 'kind',
        message: 'cannot tell what kind of file this is',
        found: describeValue(found), expected: `kind: ${KINDS.join(' | ')} (apiVersion: ${API_VERSION})`,
      }],
    };
  }
  if (expectedKind && kind !== expectedKind) {
    return { issues: [{ file: source.file, ...locate(source, ['kind']), path: 'kind', message: 'wrong kind of file for this option', found: kind, expected: expectedKind }] };
  }
  switch (kind) {
    case 'Image': {
      const r = validateWith(source, ImageSchema, normalizeImage, imageRules);
      return r.value ? { result: { kind, value: r.value }, issues: [] } : { issues: r.issues };
    }
    case 'Cluster': {
      const r = validateWith(source, ClusterSchema, (c) => c, clusterRules);
      return r.value ? { result: { kind, value: r.value }, issues: [] } : { issues: r.issues };
    }
    case 'NodeSeed': {
      const r = validateWith(source, NodeSeedSchema, normalizeSeed, seedRules);
      return r.value ? { result: { kind, value: r.value }, issues: [] } : { issues: r.issues };
    }
  }
}

/** Read and validate several files, collecting every problem in all of them. */
export async function validateFiles(files: string[]): Promise<{ results: (Validated & { file: string })[]; issues: ValidationIssue[] }> {
  const results: (Validated & { file: string })[] = [];
  const issues: ValidationIssue[] = [];
  for (const file of files) {
    const { source, issues: parseIssues } = await readSource(file);
    issues.push(...parseIssues);
    if (!source) continue;
    const v = validateSource(source);
    issues.push(...v.issues);
    if (v.result) results.push({ ...v.result, file });
  }
  return { results, issues };
}

async function loadKind(file: string, kind: Kind): Promise<Validated> {
  const { source, issues } = await readSource(file);
  if (!source) throw new ValidationError(issues);
  const v = validateSource(source, kind);
  if (!v.result) throw new ValidationError(v.issues);
  return v.result;
}

export const loadImage = async (file: string): Promise<Image> => (await loadKind(file, 'Image')).value as Image;
export const loadCluster = async (file: string): Promise<Cluster> => (await loadKind(file, 'Cluster')).value as Cluster;
export const loadSeed = async (file: string): Promise<NodeSeed> => (await loadKind(file, 'NodeSeed')).value as NodeSeed;

/** Parse and validate a seed given as text (the agent reads it from the config partition). */
export function parseSeed(file: string, text: string): { seed?: NodeSeed; issues: ValidationIssue[] } {
  const { source, issues } = parseSource(file, text);
  if (!source) return { issues };
  const v = validateSource(source, 'NodeSeed');
  return v.result?.kind === 'NodeSeed' ? { seed: v.result.value, issues: [] } : { issues: v.issues };
}

export const SECRET_FILES: Record<keyof Secrets, string> = {
  k3sToken: 'k3s-token',
  postgresPassword: 'postgres-password',
  replicationPassword: 'replication-password',
  agentToken: 'agent-token',
  witnessToken: 'witness-token',
  readToken: 'read-token',
  adminToken: 'admin-token',
};

export function secretsDirOf(clusterFile: string, cluster: Cluster): string {
  return isAbsolute(cluster.secretsDir) ? cluster.secretsDir : join(dirname(clusterFile), cluster.secretsDir);
}

/** The secrets of `cluster` (read from `clusterFile`'s secrets directory), registered for redaction before anything can log them. */
export async function loadClusterSecrets(clusterFile: string, cluster: Cluster): Promise<Secrets> {
  const secrets = await loadSecrets(secretsDirOf(clusterFile, cluster));
  for (const s of Object.values(secrets)) registerSecret(s);
  return secrets;
}

/** Read the cluster's secrets directory; every missing or bad file is reported. */
export async function loadSecrets(dir: string): Promise<Secrets> {
  const raw: Record<string, string> = {};
  const issues: ValidationIssue[] = [];
  for (const name of SECRET_NAMES) {
    const file = join(dir, SECRET_FILES[name]);
    try {
      raw[name] = (await readFile(file, 'utf8')).trim();
    } catch {
      issues.push({ file, path: '', message: 'secret file is missing; create it with `geminik8s init`' });
    }
  }
  if (issues.length) throw new ValidationError(issues);
  const parsed = SecretsSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ValidationError(parsed.error.issues.map((i) => ({
      file: join(dir, SECRET_FILES[i.path[0] as keyof Secrets] ?? ''), path: '', message: i.message, found: 'the secret (not shown)',
    })));
  }
  return parsed.data;
}

export function assertKnownNode(cluster: Cluster, node: string, clusterFile: string): void {
  if (!cluster.nodes.some((n) => n.name === node)) {
    throw new GeminiError(
      `${clusterFile}: no node named ${JSON.stringify(node)}; the cluster has ${cluster.nodes.map((n) => JSON.stringify(n.name)).join(' and ')}`,
      ExitCode.invalidInput,
    );
  }
}

/** The cluster's TLS files, under the secrets directory: `tls/ca.{crt,key}` and `tls/<party>.{crt,key}` (node names, `witness`). */
export const TLS_DIR = 'tls';

export function tlsFiles(secretsDir: string, party: string): { cert: string; key: string } {
  return { cert: join(secretsDir, TLS_DIR, `${party}.crt`), key: join(secretsDir, TLS_DIR, `${party}.key`) };
}

async function readTlsFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    throw new ValidationError([{ file, path: '', message: 'TLS file is missing; make what is missing with `geminik8s init --force --template DIR/cluster.yaml --config-dir DIR` (keeps cluster.yaml\'s values, the secrets and the CA), or set agent.insecurePlaintext for development' }]);
  }
}

/** The cluster CA's certificate (what operators verify the agents with); undefined without TLS (`agent.insecurePlaintext`). */
export async function loadClusterCa(clusterFile: string, cluster: Cluster): Promise<string | undefined> {
  if (cluster.agent.insecurePlaintext) return undefined;
  return readTlsFile(tlsFiles(secretsDirOf(clusterFile, cluster), 'ca').cert);
}

/**
 * The CA certificate and `party`'s certificate and key, read from the secrets directory;
 * undefined without TLS (`agent.insecurePlaintext`). The key is registered for redaction
 * before anything can log it.
 */
export async function loadClusterTls(clusterFile: string, cluster: Cluster, party: string): Promise<TlsMaterial | undefined> {
  const ca = await loadClusterCa(clusterFile, cluster);
  if (ca === undefined) return undefined;
  const files = tlsFiles(secretsDirOf(clusterFile, cluster), party);
  const cert = await readTlsFile(files.cert);
  const key = await readTlsFile(files.key);
  registerSecret(key);
  return { ca, cert, key };
}
