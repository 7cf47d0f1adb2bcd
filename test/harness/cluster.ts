import { mkdirSync, writeFileSync, chmodSync, readFileSync, existsSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runPlan, spawnPlan, type RunningProcess } from '../../common/exec.ts';
import { kinePassword } from '../../common/render/k3s.ts';
import { API_VERSION } from '../../common/schema/image.ts';
import type { Secrets } from '../../common/schema/seed.ts';
import { buildAgent } from '../../agent/build.ts';
import { createTopology, destroyNamespaces, inNs, NET, type Topology } from './netns.ts';

export const PG_BIN = '/usr/lib/postgresql/15/bin';
const ROOT = new URL('../../', import.meta.url).pathname;

const SECRETS: Secrets = {
  k3sToken: 'harness-k3s-token-0123456789',
  postgresPassword: 'harness-postgres-password-0123',
  replicationPassword: 'harness-replication-password-0123',
  agentToken: 'harness-agent-token-0123456789',
};

export interface Ack {
  id: number;
  t: number;
}

export interface Sample {
  node: string;
  t: number;
  writable: boolean;
}

/** Credentials the writer uses through the VIP. */
export interface WriterLogin {
  user: string;
  password: string;
  database: string;
}

/**
 * Two nodes, a witness namespace, a writer through the VIP and write samplers on each node.
 * Subclasses bring the system under test (geminik8s, Patroni) and say who leads.
 */
export abstract class PairHarness {
  abstract readonly system: string;
  protected abstract startSystem(): Promise<void>;
  /** Start (or restart after power loss) the system's processes on one node. */
  abstract startNode(node: string): void;
  /** The node that is primary and advertised as such by the system. */
  abstract leader(): Promise<string | undefined>;
  abstract writerLogin(): WriterLogin;
  abstract superuserPassword(): string;

  topology!: Topology;
  readonly acks: Ack[] = [];
  readonly samples: Sample[] = [];
  /** The system's main process on each node (killed on power loss). */
  readonly agents = new Map<string, RunningProcess>();
  protected others: RunningProcess[] = [];
  private writer?: RunningProcess;
  readonly logFile: string;

  constructor(readonly dir: string, readonly prefix = `gk${process.pid % 100000}`) {
    this.logFile = join(dir, 'harness.log');
  }

  log(line: string): void {
    appendFileSync(this.logFile, `${new Date().toISOString()} ${line}\n`);
  }

  nodeDir(node: string): string {
    return join(this.dir, node);
  }

  async start(): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    chmodSync(this.dir, 0o755);
    this.topology = await createTopology(this.prefix);
    await this.startSystem();
  }

  protected spawnLogged(name: string, plan: Parameters<typeof spawnPlan>[0], onStdout?: (l: string) => void): RunningProcess {
    return spawnPlan(plan, {
      stdout: (l) => {
        onStdout?.(l);
        if (!onStdout) this.log(`[${name}] ${l}`);
      },
      stderr: (l) => this.log(`[${name}!] ${l}`),
    });
  }

  /** Start the writer through the VIP and a sampler on each node. */
  startTraffic(maxSeconds = 900): void {
    const login = this.writerLogin();
    this.writer = this.spawnLogged('writer', inNs(this.topology.clientNs, 'node', ['--import', 'tsx', join(ROOT, 'test/harness/writer.ts'), NET.vip, '5432', login.user, login.password, login.database, String(maxSeconds), '50']), (l) => {
      try {
        const m = JSON.parse(l) as { ack?: number; t: number; error?: string };
        if (m.ack) this.acks.push({ id: m.ack, t: m.t });
        else if (m.error) this.log(`[writer] ${m.error}`);
      } catch {
        this.log(`[writer?] ${l}`);
      }
    });
    for (const n of NET.nodes) {
      this.others.push(this.spawnLogged(`sampler-${n.name}`, inNs(this.topology.nodeNs[n.name]!, 'node', ['--import', 'tsx', join(ROOT, 'test/harness/sampler.ts'), n.name, '5432', this.superuserPassword(), String(maxSeconds)]), (l) => {
        try {
          this.samples.push(JSON.parse(l) as Sample);
        } catch {
          this.log(`[sampler?] ${l}`);
        }
      }));
    }
  }

  /** Run SQL on a node's local PostgreSQL from inside its namespace (works while partitioned). */
  async sql(node: string, query: string, database = this.writerLogin().database): Promise<string | undefined> {
    const r = await runPlan(inNs(this.topology.nodeNs[node]!, 'psql', ['-h', '127.0.0.1', '-U', 'postgres', '-d', database, '-XAtq', '-c', query], { PGPASSWORD: this.superuserPassword(), PGCONNECT_TIMEOUT: '2' }), { allowFailure: true, timeoutMs: 10_000 });
    return r.exitCode === 0 ? r.stdout.trim() : undefined;
  }

  other(node: string): string {
    return NET.nodes.find((n) => n.name !== node)!.name;
  }

  /** Leader + synchronous standby, as pg_stat_replication on the leader reports it. */
  async healthyPair(): Promise<string | undefined> {
    const leader = await this.leader();
    if (!leader) return undefined;
    const sync = await this.sql(leader, `SELECT sync_state FROM pg_stat_replication WHERE application_name = '${this.other(leader)}'`, 'postgres');
    return sync === 'sync' ? leader : undefined;
  }

  async waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn().catch(() => undefined);
      if (v !== undefined && v !== false) return v as T;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; see ${this.logFile}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** Simulated power loss: every process of the node dies at once and its NIC goes dark. */
  async powerOff(node: string): Promise<void> {
    const { linkDown } = await import('./netns.ts');
    await linkDown(this.topology, node);
    const pids = await runPlan({ cmd: 'ip', args: ['netns', 'pids', this.topology.nodeNs[node]!] }, { allowFailure: true });
    for (const pid of pids.stdout.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
    this.agents.delete(node);
    // The VIP was on the dead box's NIC; a rebooted box comes up without it.
    await runPlan(inNs(this.topology.nodeNs[node]!, 'ip', ['addr', 'del', `${NET.vip}/${NET.prefix}`, 'dev', 'eth0']), { allowFailure: true });
  }

  async powerOn(node: string): Promise<void> {
    const { linkUp } = await import('./netns.ts');
    await linkUp(this.topology, node);
    this.startNode(node);
  }

  /** Acknowledged ids missing from a node's table. */
  async missingAcks(node: string, upTo = this.acks.length): Promise<number[]> {
    const acked = this.acks.slice(0, upTo).map((a) => a.id);
    if (acked.length === 0) return [];
    const present = await this.sql(node, `SELECT id FROM harness_writes WHERE id <= ${Math.max(...acked)}`);
    if (present === undefined) throw new Error(`cannot query ${node}`);
    const have = new Set(present.split('\n').filter(Boolean).map(Number));
    return acked.filter((id) => !have.has(id));
  }

  /** Number of moments (200 ms buckets) in which both nodes accepted a write. */
  dualPrimarySamples(since = 0): number {
    const buckets = new Map<number, Set<string>>();
    for (const s of this.samples) {
      if (!s.writable || s.t < since) continue;
      const b = Math.floor(s.t / 200);
      for (const k of [b, b + 1]) {
        const set = buckets.get(k) ?? new Set<string>();
        set.add(s.node);
        buckets.set(k, set);
      }
    }
    let dual = 0;
    for (const set of buckets.values()) if (set.size > 1) dual++;
    return Math.ceil(dual / 2);
  }

  async stop(): Promise<void> {
    this.writer?.kill('SIGKILL');
    for (const p of [...this.agents.values(), ...this.others]) p.kill('SIGKILL');
    await destroyNamespaces(this.prefix);
  }
}

/** Two geminik8s nodes with a lease witness. */
export class HarnessCluster extends PairHarness {
  override readonly system = 'geminik8s';
  private agentBundle = '';

  protected async startSystem(): Promise<void> {
    this.agentBundle = await buildAgent(join(this.dir, 'agent.mjs'));
    const tokenFile = join(this.dir, 'witness-token');
    writeFileSync(tokenFile, SECRETS.agentToken, { mode: 0o600 });
    this.others.push(this.spawnLogged('witness', inNs(this.topology.witnessNs, 'node', [this.agentBundle, 'witness', '--listen', `${NET.gateway}:${NET.witnessPort}`, '--token-file', tokenFile, '--state-dir', join(this.dir, 'witness-state')])));
    for (const n of NET.nodes) this.writeNodeFiles(n.name);
    for (const n of NET.nodes) this.startAgent(n.name);
  }

  private writeNodeFiles(node: string): void {
    const dir = this.nodeDir(node);
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o755);
    const cluster = {
      name: 'harness',
      network: { interface: 'eth0', prefix: NET.prefix, gateway: NET.gateway, dns: [], vip: NET.vip },
      nodes: NET.nodes.map((n) => ({ name: n.name, ip: n.ip })),
      witness: { type: 'lease', url: `http://${NET.gateway}:${NET.witnessPort}` },
      postgresql: { syncPolicy: 'degrade' },
    };
    writeFileSync(join(dir, 'seed.yaml'), stringify({ apiVersion: API_VERSION, kind: 'NodeSeed', node, cluster, secrets: SECRETS }), { mode: 0o600 });
    writeFileSync(
      join(dir, 'agent.yaml'),
      stringify({
        seedFile: join(dir, 'seed.yaml'),
        stateDir: join(dir, 'state'),
        postgresql: { binDir: PG_BIN, dataDir: join(dir, 'pgdata'), socketDir: join(dir, 'run') },
        serviceManager: 'direct',
        checksDir: join(dir, 'checks.d'),
      }),
    );
  }

  writerLogin(): WriterLogin {
    return { user: 'kine', password: kinePassword(SECRETS.postgresPassword), database: 'kine' };
  }

  superuserPassword(): string {
    return SECRETS.postgresPassword;
  }

  startNode(node: string): void {
    this.startAgent(node);
  }

  startAgent(node: string): void {
    const plan = inNs(this.topology.nodeNs[node]!, 'node', [this.agentBundle, 'run', '--config', join(this.nodeDir(node), 'agent.yaml')], { GEMINIK8S_LOG_LEVEL: process.env.GEMINIK8S_LOG_LEVEL ?? 'info' });
    this.agents.set(node, this.spawnLogged(node, plan));
  }

  /** GET /v1/status of a node's agent, from inside the client namespace. */
  async status(node: string): Promise<Record<string, any> | undefined> {
    const ip = NET.nodes.find((n) => n.name === node)!.ip;
    const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-sf', '-m', '2', '-H', `Authorization: Bearer ${SECRETS.agentToken}`, `http://${ip}:7443/v1/status`]), { allowFailure: true });
    if (r.exitCode !== 0) return undefined;
    return JSON.parse(r.stdout) as Record<string, any>;
  }

  lastSwitchoverMs?: number;

  /** POST /v1/switchover to a node's agent, from inside the client namespace. */
  async switchover(node: string): Promise<{ ok: boolean; reason: string; tookMs: number } | undefined> {
    const ip = NET.nodes.find((n) => n.name === node)!.ip;
    const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-s', '-m', '30', '-X', 'POST', '-H', `Authorization: Bearer ${SECRETS.agentToken}`, `http://${ip}:7443/v1/switchover`]), { allowFailure: true });
    return r.stdout ? (JSON.parse(r.stdout) as { ok: boolean; reason: string; tookMs: number }) : undefined;
  }

  /** The node whose agent reports leader and whose PostgreSQL is primary. */
  async leader(): Promise<string | undefined> {
    for (const n of NET.nodes) {
      const s = await this.status(n.name);
      if (s?.role === 'leader' && s.postgres?.role === 'primary') return n.name;
    }
    return undefined;
  }

  override async healthyPair(): Promise<string | undefined> {
    const leader = await super.healthyPair();
    if (!leader) return undefined;
    const follower = await this.status(this.other(leader));
    if (follower?.role !== 'follower') return undefined;
    // Healthy means automatic failover is possible: the witness records the standby as promotable.
    const ls = await this.status(leader);
    return ls?.lease?.promotable === this.other(leader) ? leader : undefined;
  }

  /** PIDs of a node's PostgreSQL postmaster (from postmaster.pid). */
  postmasterPid(node: string): number | undefined {
    const file = join(this.nodeDir(node), 'pgdata', 'postmaster.pid');
    if (!existsSync(file)) return undefined;
    return Number(readFileSync(file, 'utf8').split('\n')[0]);
  }
}
