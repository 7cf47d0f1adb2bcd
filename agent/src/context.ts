import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { parseSeed } from '../../common/config.ts';
import { ExitCode, GeminiError, ValidationError } from '../../common/errors.ts';
import { registerSecret } from '../../common/log.ts';
import { AgentConfigSchema, type AgentConfig } from '../../common/schema/agent.ts';
import { bootstrapLeaderOf, peerOf, witnessTarget, type ClusterNode, type ClusterSpec, type WitnessTarget } from '../../common/schema/cluster.ts';
import type { NodeSeed, Secrets } from '../../common/schema/seed.ts';
import type { TlsMaterial } from '../../common/tls.ts';

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

export async function loadAgentConfig(file: string): Promise<AgentConfig> {
  const text = await readText(file, 'agent config');
  const parsed = AgentConfigSchema.safeParse(parse(text, { version: '1.1' }) ?? {});
  if (!parsed.success) {
    throw new ValidationError(parsed.error.issues.map((i) => ({ file, path: i.path.join('.'), message: i.message })));
  }
  return parsed.data;
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
