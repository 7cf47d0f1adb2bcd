import { readdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as z from 'zod';
import { parseSeed } from '#common/config.ts';
import { ExitCode, formatIssue, GeminiError, ValidationError, type ValidationIssue } from '#common/errors.ts';
import { describeValue, issuesFromZod, parseSource, type SourceDocument } from '#common/source.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { withNodeAddress } from '#common/membership.ts';
import { registerSecret } from '#common/log.ts';
import { AgentConfigSchema, type AgentConfig } from '#common/schema/agent.ts';
import { bootstrapLeaderOf, nodeCertHosts, peerOf, witnessTarget, type ClusterNode, type ClusterSpec, type WitnessTarget } from '#common/schema/cluster.ts';
import type { NodeSeed, Secrets } from '#common/schema/seed.ts';
import { certFacts, tlsMaterialProblem, type TlsMaterial } from '#common/tls.ts';

/** Everything the agent knows about its place in the cluster, read once at start. */
export interface NodeContext {
  config: AgentConfig;
  spec: ClusterSpec;
  self: ClusterNode;
  peer: ClusterNode;
  secrets: Secrets;
  witness: WitnessTarget;
  isBootstrapLeader: boolean;
  /** Port of the agent API (the cluster's, unless the local config overrides it). */
  apiPort: number;
  /** Port the peer's agent API listens on. */
  peerApiPort: number;
  /** The cluster CA, this node's certificate and key; undefined only with `agent.insecurePlaintext`. */
  tls?: TlsMaterial;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    throw new GeminiError(`cannot read ${what} ${file}`, ExitCode.invalidInput);
  }
}

/** Where local settings go beside an agent.yaml: `FILE.d/*.yaml`, merged over it in name order. */
export function agentConfigDropInDir(file: string): string {
  return `${file}.d`;
}

/**
 * The agent's settings: the image's agent.yaml, then each `*.yaml` of `FILE.d/` in name order
 * (dotfiles skipped), merged key by key (a mapping merges into the one below it; anything else
 * replaces it). Local settings belong in the drop-ins: /etc persists across slots, so an edited
 * agent.yaml would keep hiding every later image's own (its version among them). Every problem
 * names the file, line and column that set the value. A key a drop-in sets that this image does
 * not know is left out with a warning, not an error: the drop-in outlives the slot, and an
 * older slot booted after a rollback must still start.
 */
export async function loadAgentConfig(file: string, warn: (message: string) => void = (m) => process.stderr.write(`warning: ${m}\n`)): Promise<AgentConfig> {
  const dir = agentConfigDropInDir(file);
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new GeminiError(`cannot read the agent config drop-ins in ${dir}: ${(err as Error).message}`, ExitCode.invalidInput);
  }
  const dropIns = names.filter((n) => /^[^.].*\.ya?ml$/.test(n)).sort().map((n) => join(dir, n));
  const sources: SourceDocument[] = [];
  const issues: ValidationIssue[] = [];
  for (const f of [file, ...dropIns]) {
    const text = await readText(f, f === file ? 'agent config' : 'agent config drop-in');
    const r = parseSource(f, text);
    if (!r.source) issues.push(...r.issues);
    else if (r.source.data !== null && r.source.data !== undefined && !isPlainObject(r.source.data)) {
      issues.push({ file: f, line: 1, col: 1, path: '', message: 'expected a mapping of settings', found: describeValue(r.source.data) });
    } else sources.push(r.source);
  }
  if (issues.length > 0) throw new ValidationError(issues);
  const merged = sources.reduce<unknown>((acc, s) => mergeSettings(acc, s.data ?? {}), {});
  const originOf = (path: PropertyKey[]): SourceDocument => [...sources].reverse().find((s) => s.doc.hasIn(path as unknown[])) ?? sources[0]!;
  // Each issue with the one path it is about: an unknown key's own, so that each is found in the file that set it.
  type Located = { issue: z.core.$ZodIssue; at: PropertyKey[] };
  const located = (found: z.core.$ZodIssue[]): Located[] =>
    found.flatMap((i): Located[] => (i.code === 'unrecognized_keys' ? i.keys.map((key) => ({ issue: { ...i, keys: [key] }, at: [...i.path, key] })) : [{ issue: i, at: i.path }]));
  const first = AgentConfigSchema.safeParse(merged);
  if (first.success) return first.data;
  let problems = located(first.error.issues);
  const unknownInDropIns = problems.filter(({ issue, at }) => issue.code === 'unrecognized_keys' && originOf(at) !== sources[0]);
  if (unknownInDropIns.length === problems.length) {
    let known = merged;
    for (const { issue, at } of unknownInDropIns) {
      warn(`${formatIssue(issuesFromZod(originOf(at), { issues: [issue] })[0]!)}: this image's agent does not know it, so it is left out (a drop-in written for another image?)`);
      known = withoutPath(known, at);
    }
    const second = AgentConfigSchema.safeParse(known);
    if (second.success) return second.data;
    problems = located(second.error.issues);
  }
  throw new ValidationError(problems.flatMap(({ issue, at }) => issuesFromZod(originOf(at), { issues: [issue] })));
}

/** `data` without the key at `path` (copies along the path; the input is not changed). */
function withoutPath(data: unknown, path: PropertyKey[]): unknown {
  if (!isPlainObject(data) || path.length === 0) return data;
  const [head, ...tail] = path;
  const key = String(head);
  if (!(key in data)) return data;
  const out = { ...data };
  if (tail.length === 0) delete out[key];
  else out[key] = withoutPath(data[key], tail);
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `over` merged into `base`: mappings key by key, anything else replaced. */
export function mergeSettings(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in base ? mergeSettings(base[k], v) : v;
  return out;
}

export async function loadSeedFile(file: string): Promise<NodeSeed> {
  const text = await readText(file, 'node seed');
  const { seed, issues } = parseSeed(file, text);
  if (!seed) throw new ValidationError(issues);
  return seed;
}

export function nodeContext(config: AgentConfig, seed: NodeSeed): NodeContext {
  for (const s of Object.values(seed.secrets)) registerSecret(s);
  if (seed.tls) registerSecret(seed.tls.key);
  const self = seed.cluster.nodes.find((n) => n.name === seed.node)!;
  const peer = peerOf(seed.cluster, seed.node);
  return {
    config,
    spec: seed.cluster,
    self,
    peer,
    secrets: seed.secrets,
    witness: witnessTarget(seed.cluster),
    isBootstrapLeader: bootstrapLeaderOf(seed.cluster).name === seed.node,
    apiPort: config.listen.port ?? seed.cluster.agent.port,
    peerApiPort: seed.cluster.agent.port,
    ...(seed.tls ? { tls: seed.tls } : {}),
  };
}

/** The scheme of the agents' and the witness's APIs: https with the cluster CA, http only in development. */
export function apiScheme(ctx: Pick<NodeContext, 'spec' | 'tls'>): 'https' | 'http' {
  if (ctx.tls) return 'https';
  if (ctx.spec.agent.insecurePlaintext) return 'http';
  throw new GeminiError('the seed has no TLS material and cluster.agent.insecurePlaintext is not set: refusing plain HTTP', ExitCode.invalidInput);
}

/**
 * The peer's address after `geminik8s replace-node`, kept in the state directory: the seed on
 * the config partition still names the old box's address, and this node must not go back to it
 * after a reboot.
 */
const PeerOverrideSchema = z.object({
  cluster: z.string(),
  name: z.string(),
  ip: z.string(),
  mac: z.string().optional(),
  /** The address before this replacement (the seed's, or an earlier replacement's). */
  previousIp: z.string(),
  at: z.string(),
});
export type PeerOverride = z.infer<typeof PeerOverrideSchema>;

export const PEER_OVERRIDE_FILE = 'peer.json';

export function peerOverrideFile(stateDir: string): string {
  return join(stateDir, PEER_OVERRIDE_FILE);
}

/**
 * A record the agent keeps in its state directory, or undefined when there is none. One that
 * does not parse is reported, naming the file and what `writer` writes there, never ignored.
 */
async function readStateRecord<T>(file: string, schema: z.ZodType<T>, writer: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    // Not the parser's message: it quotes the text, which may be a key.
    throw new GeminiError(`${file}: not JSON; expected the record ${writer} writes`, ExitCode.invalidInput);
  }
  const parsed = schema.safeParse(data);
  if (!parsed.success) throw new GeminiError(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'the record'}: ${i.message}`).join('; ')}; expected the record ${writer} writes`, ExitCode.invalidInput);
  return parsed.data;
}

/** The recorded override, or undefined when there is none. */
export async function readPeerOverride(stateDir: string): Promise<PeerOverride | undefined> {
  return readStateRecord(peerOverrideFile(stateDir), PeerOverrideSchema, 'geminik8s replace-node');
}

/** Record the override (0600, written whole or not at all). */
export async function writePeerOverride(stateDir: string, o: PeerOverride): Promise<void> {
  await writeFileAtomic(peerOverrideFile(stateDir), `${JSON.stringify(o, null, 2)}\n`, 0o600, { syncDir: true });
}

/**
 * The seed with a recorded peer override applied. An override for another cluster or for this
 * node itself, or one the cluster's rules refuse, is not applied: `ignored` says why.
 */
export function applyPeerOverride(seed: NodeSeed, o: PeerOverride | undefined): { seed: NodeSeed; ignored?: string } {
  if (!o) return { seed };
  if (o.cluster !== seed.cluster.name) return { seed, ignored: `it is for cluster ${o.cluster}, this node is in ${seed.cluster.name}` };
  const peer = peerOf(seed.cluster, seed.node);
  if (o.name !== peer.name) return { seed, ignored: `it names ${o.name}, but the peer is ${peer.name}` };
  const change = withNodeAddress(seed.cluster, o.name, o.ip, o.mac);
  if (!change.spec) return { seed, ignored: change.problems.join('; ') };
  return { seed: { ...seed, cluster: change.spec } };
}

/**
 * This node's certificate and key after `geminik8s certs rotate`, kept in the state directory
 * (0600): the seed still carries the ones it was flashed with.
 */
const TlsOverrideSchema = z.object({ cert: z.string(), key: z.string(), at: z.string() });
export type TlsOverride = z.infer<typeof TlsOverrideSchema>;

export const TLS_OVERRIDE_FILE = 'tls.json';

/**
 * Why `cert`/`key` cannot be this node's (another CA, name or cluster, an address of
 * `nodeCertHosts` it does not cover, expired, a key that does not match), or undefined.
 */
export function nodeCertProblem(spec: ClusterSpec, self: ClusterNode, ca: string, cert: string, key: string, now: Date): string | undefined {
  for (const host of nodeCertHosts(spec, self.name).filter((h) => isIP(h))) {
    const p = tlsMaterialProblem({ ca, cert, key }, { cluster: spec.name, name: self.name, host }, now);
    if (p) return p;
  }
  return undefined;
}

export async function readTlsOverride(stateDir: string): Promise<TlsOverride | undefined> {
  const o = await readStateRecord(join(stateDir, TLS_OVERRIDE_FILE), TlsOverrideSchema, 'geminik8s certs rotate');
  if (o) registerSecret(o.key);
  return o;
}

export async function writeTlsOverride(stateDir: string, o: TlsOverride): Promise<void> {
  await writeFileAtomic(join(stateDir, TLS_OVERRIDE_FILE), `${JSON.stringify(o)}\n`, 0o600, { syncDir: true });
}

/** The seed with a rotated certificate applied, unless it does not fit the seed's CA and this node, or the seed's own is newer (`ignored` says why). */
export function applyTlsOverride(seed: NodeSeed, o: TlsOverride | undefined, now: Date): { seed: NodeSeed; ignored?: string } {
  if (!o) return { seed };
  if (!seed.tls) return { seed, ignored: 'the seed has no TLS material' };
  const self = seed.cluster.nodes.find((n) => n.name === seed.node)!;
  const problem = nodeCertProblem(seed.cluster, self, seed.tls.ca, o.cert, o.key, now);
  if (problem) return { seed, ignored: problem };
  // A seed written after the rotation (new seeds from init --rotate-certs) carries the newer one.
  if (certFacts(seed.tls.cert).notBefore > certFacts(o.cert).notBefore) return { seed, ignored: "the seed's certificate is newer" };
  return { seed: { ...seed, tls: { ...seed.tls, cert: o.cert, key: o.key } } };
}

/** The agent's context at start: the seed, with the peer and certificate overrides from the state directory applied. */
export async function loadNodeContext(config: AgentConfig): Promise<{ ctx: NodeContext; override?: PeerOverride; ignored?: string; tlsIgnored?: string; tlsRotatedAt?: string }> {
  const seed = await loadSeedFile(config.seedFile);
  const override = await readPeerOverride(config.stateDir);
  const applied = applyPeerOverride(seed, override);
  const tls = await readTlsOverride(config.stateDir);
  const withTls = applyTlsOverride(applied.seed, tls, new Date());
  return {
    ctx: nodeContext(config, withTls.seed),
    ...(override ? { override } : {}),
    ...(applied.ignored ? { ignored: applied.ignored } : {}),
    ...(withTls.ignored ? { tlsIgnored: withTls.ignored } : {}),
    ...(tls && !withTls.ignored ? { tlsRotatedAt: tls.at } : {}),
  };
}
