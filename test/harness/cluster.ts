import { copyFileSync, mkdirSync, writeFileSync, chmodSync, readFileSync, readdirSync, readlinkSync, renameSync, existsSync, appendFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runPlan, spawnPlan, type RunningProcess } from '#common/exec.ts';
import { loadCluster, loadClusterTls, loadSecrets, SECRET_FILES, tlsFiles } from '#common/config.ts';
import type { TlsMaterial } from '#common/tls.ts';
import { kinePassword } from '#common/render/k3s.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { buildAgent } from '../../agent/build.ts';
import { clusterYamlText } from '#builder/init/cluster-file.ts';
import { buildClusterInput, validateClusterInput, type InitFlags } from '#builder/init/options.ts';
import { writeSecrets } from '#builder/init/secrets.ts';
import { writeClusterTls, writeWitnessCredentials } from '#builder/init/tls.ts';
import { SEED_FILE_IN_PARTITION } from '#builder/render/cloud-init.ts';
import { AGENT_WATCHDOG_SEC, agentUnit, renderSeedFiles } from '#builder/render/index.ts';
import { createTopology, destroyNamespaces, inNs, NET, type Topology } from '#lab/netns.ts';
import { bundleProbe } from '#lab/probes/bundle.ts';
import { hostPgBinDir } from '../helpers/host-pg.ts';

/** The host's PostgreSQL binaries (the newest installed major; GEMINIK8S_PG_BIN overrides). */
export const PG_BIN = hostPgBinDir() ?? '/usr/lib/postgresql/15/bin';
const ROOT = new URL('../../', import.meta.url).pathname;

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** A systemd time span as unit files write it (`90`, `1s`, `500ms`, `2min 30s`), in ms. */
export function timespanMs(text: string): number {
  const units: Record<string, number> = { '': 1000, us: 0.001, ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000 };
  let ms = 0;
  for (const part of text.trim().split(/\s+/)) {
    const m = /^(\d+(?:\.\d+)?)([a-z]*)$/.exec(part);
    if (!m || units[m[2]!] === undefined) throw new Error(`not a systemd time span: '${text}'`);
    ms += Number(m[1]) * units[m[2]!]!;
  }
  return ms;
}

/** The [Service] settings of a unit file (the last assignment of a key wins, as in systemd). */
export function serviceSettings(unitText: string): Map<string, string> {
  const settings = new Map<string, string>();
  let section = '';
  for (const raw of unitText.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) section = header[1]!;
    else if (section === 'Service' && line.includes('=')) settings.set(line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1));
  }
  return settings;
}

/**
 * What systemd does to a frozen or slow agent, read from the agent unit the image ships: the
 * signal its watchdog sends (WatchdogSignal=, SIGABRT by default), how long it then waits for
 * SIGKILL (TimeoutAbortSec=, by default TimeoutStopSec=), and how long a stop may take without
 * EXTEND_TIMEOUT_USEC (TimeoutStopSec=, Debian's DefaultTimeoutStopSec of 90 s by default).
 */
export const AGENT_UNIT_TIMEOUTS = (() => {
  const unit = serviceSettings(agentUnit().content);
  const stopMs = timespanMs(unit.get('TimeoutStopSec') ?? '90s');
  return {
    watchdogSignal: (unit.get('WatchdogSignal') ?? 'SIGABRT') as NodeJS.Signals,
    abortMs: unit.has('TimeoutAbortSec') ? timespanMs(unit.get('TimeoutAbortSec')!) : stopMs,
    stopMs,
  };
})();

/**
 * How long systemd lets geminik8s-postgresql.service stop (TimeoutStopSec=) before it SIGKILLs
 * what is left (KillMode=mixed), read from the unit's template.
 */
export const PG_UNIT_STOP_MS = timespanMs(serviceSettings(readFileSync(join(ROOT, 'templates/systemd/geminik8s-postgresql.service.hbs'), 'utf8')).get('TimeoutStopSec') ?? '90s');

export interface Ack {
  id: number;
  t: number;
}

/** One line of a node's write sampler (lab/probes/sampler.ts). */
export interface Sample {
  node: string;
  /** The probe ran in [t, end] (ms since the epoch); a writable probe committed inside it. */
  t: number;
  end: number;
  writable: boolean;
  reason?: string;
}


/** What fd `fd` of process `pid` is (`pipe:[inode]`), if it can be read. */
function pipeOf(pid: number, fd: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return undefined;
  }
}

/** The processes with `link` (a `pipe:[inode]`) open, as "pid comm": who keeps a pipe open. */
function pipeHolders(link: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      if (!readdirSync(`/proc/${pid}/fd`).some((fd) => pipeOf(Number(pid), Number(fd)) === link)) continue;
      out.push(`${pid} ${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}`);
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}

/** A JSON log line of an agent or the witness, with the time the harness received it. */
export interface LogEvent {
  source: string;
  at: number;
  e: Record<string, any>;
}

/**
 * Consecutive writable samples of one node further apart than this are not merged into one
 * writable span: nothing was observed in between.
 */
export const MAX_SPAN_GAP_MS = 1000;

/**
 * Per node, the periods it was seen accepting writes: each run of consecutive writable samples
 * (no non-writable sample between them, gaps below MAX_SPAN_GAP_MS) becomes one span from the
 * first probe's start to the last probe's end. A lone writable sample is its own window.
 */
export function writableSpans(samples: Sample[], since = 0): Map<string, [number, number][]> {
  const byNode = new Map<string, Sample[]>();
  for (const s of samples) {
    if (s.end < since) continue;
    const list = byNode.get(s.node) ?? [];
    list.push(s);
    byNode.set(s.node, list);
  }
  const spans = new Map<string, [number, number][]>();
  for (const [node, list] of byNode) {
    list.sort((a, b) => a.t - b.t);
    const out: [number, number][] = [];
    let open: [number, number] | undefined;
    for (const s of list) {
      if (!s.writable) {
        open = undefined;
        continue;
      }
      if (open && s.t - open[1] < MAX_SPAN_GAP_MS) open[1] = Math.max(open[1], s.end);
      else {
        open = [s.t, s.end];
        out.push(open);
      }
    }
    spans.set(node, out);
  }
  return spans;
}

/**
 * Dual-writable evidence: writable samples of one node whose window intersects a writable span
 * of another node, and the total time two nodes' writable spans overlap. Interleaved samples
 * (A writable at 0 and 200 ms, B at 100 and 300 ms) count, because each node's span covers the
 * other's samples; two spans that merely come close do not.
 */
export function dualWritable(samples: Sample[], since = 0): { samples: number; overlapMs: number } {
  const spans = writableSpans(samples, since);
  const intersects = (a0: number, a1: number, b: [number, number]): boolean => a0 <= b[1] && b[0] <= a1;
  let count = 0;
  for (const s of samples) {
    if (!s.writable || s.end < since) continue;
    const other = [...spans.entries()].filter(([n]) => n !== s.node).flatMap(([, l]) => l);
    if (other.some((b) => intersects(s.t, s.end, b))) count++;
  }
  let overlapMs = 0;
  const nodes = [...spans.keys()];
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      for (const a of spans.get(nodes[i]!)!) {
        for (const b of spans.get(nodes[j]!)!) overlapMs += Math.max(0, Math.min(a[1], b[1]) - Math.max(a[0], b[0]));
      }
    }
  }
  return { samples: count, overlapMs };
}

/**
 * Each change of the node that accepts writes, from `since` on, as its own sampler saw it (over
 * its loopback, so a bad network between the nodes does not hide it): a writable span (see
 * writableSpans) that starts on a node other than the last one to start one. Counted by spans,
 * not samples, so two nodes writable at once (interleaved samples) make one change, not one per
 * sample. `first` is the writer before `since`.
 */
export function writerChanges(samples: Sample[], since: number, first: string): { at: number; from: string; to: string }[] {
  const starts = [...writableSpans(samples.filter((x) => x.t >= since), since).entries()]
    .flatMap(([node, spans]) => spans.map(([start]) => ({ node, start })))
    .sort((a, b) => a.start - b.start);
  const changes: { at: number; from: string; to: string }[] = [];
  let current = first;
  for (const { node, start } of starts) {
    if (node === current) continue;
    changes.push({ at: start, from: current, to: node });
    current = node;
  }
  return changes;
}

/** Credentials the writer uses through the VIP. */
export interface WriterLogin {
  user: string;
  password: string;
  database: string;
  /** TLS as Kine has it: the CA to verify the server with (verify-full through the VIP) and a node's certificate; unset: no TLS. */
  tls?: { caFile: string; certFile: string; keyFile: string };
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
  /** JSON log lines of the agents and the witness, parsed (see spawnJsonLogged). */
  readonly events: LogEvent[] = [];
  /** The system's main process on each node (killed on power loss). */
  readonly agents = new Map<string, RunningProcess>();
  protected others: RunningProcess[] = [];
  /** The write sampler of each node: the harness's instrument, not part of the node. */
  protected samplers = new Map<string, RunningProcess>();
  private writer?: RunningProcess;
  readonly logFile: string;

  constructor(readonly dir: string, readonly prefix = `gk${process.pid % 100000}`) {
    this.logFile = join(dir, 'harness.log');
  }

  /**
   * Where the VIP's packets go, into the harness log: each node's addresses and static local
   * routes (a drop's refusing route), and the client's neighbour entry for the VIP.
   */
  async logVipState(why: string): Promise<void> {
    const show = async (ns: string, args: string[]): Promise<string> => {
      const r = await runPlan({ cmd: 'ip', args: ['-n', ns, ...args] }, { allowFailure: true });
      return (r.stdout || r.stderr).trim().replace(/\s*\n\s*/g, ' | ');
    };
    this.log(`[harness] VIP state (${why}):`);
    for (const [node, ns] of Object.entries(this.topology.nodeNs)) {
      this.log(`[harness]   ${node} addresses: ${await show(ns, ['-4', '-o', 'addr', 'show', 'dev', 'eth0'])}`);
      this.log(`[harness]   ${node} static local routes: ${(await show(ns, ['route', 'show', 'table', 'local', 'proto', 'static'])) || 'none'}`);
    }
    this.log(`[harness]   client neighbour for ${NET.vip}: ${(await show(this.topology.clientNs, ['neigh', 'show', NET.vip])) || 'none'}`);
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
    await this.bundleProbes();
    await this.startSystem();
  }

  /**
   * The writer and the samplers, bundled once to plain JavaScript: started with tsx, each would
   * transpile on start, three CPU-heavy starts at once that on a 2-core machine delay the agents'
   * checks enough to fence a healthy leader.
   */
  private async bundleProbes(): Promise<void> {
    for (const name of ['writer', 'sampler'] as const) await bundleProbe(name, join(this.dir, `${name}.mjs`));
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

  /** Like spawnLogged, and every JSON stdout line is also kept in `events`. */
  protected spawnJsonLogged(name: string, plan: Parameters<typeof spawnPlan>[0]): RunningProcess {
    return this.spawnLogged(name, plan, (l) => {
      this.log(`[${name}] ${l}`);
      if (!l.startsWith('{')) return;
      try {
        this.events.push({ source: name, at: Date.now(), e: JSON.parse(l) as Record<string, any> });
      } catch {
        // not JSON after all
      }
    });
  }

  /** Events of one source (an agent's node name, or `witness`) received at or after `since` that match. */
  eventsOf(source: string, since: number, match: (e: Record<string, any>) => boolean = () => true): LogEvent[] {
    return this.events.filter((x) => x.source === source && x.at >= since && match(x.e));
  }

  /**
   * How a node's agent rejoined at or after `since`: its rejoin line that says what pg_rewind
   * copied (the adapter's), else the first that names the method (the controller's has no copy figure).
   */
  rejoinOf(node: string, since: number): Record<string, any> | undefined {
    const rejoins = this.eventsOf(node, since, (e) => e.event === 'rejoin' && typeof e.method === 'string');
    return (rejoins.find((r) => typeof r.e.copiedMB === 'number') ?? rejoins[0])?.e;
  }

  /**
   * Bytes `node`'s NIC has received since its namespace was made (the kernel's counter, which a
   * power loss here does not reset: the link goes down on the bridge side). The difference across
   * a rejoin is what the node fetched to rejoin, whichever system did it, plus the little WAL the
   * writer added meanwhile.
   */
  async nicReceivedBytes(node: string): Promise<number> {
    const r = await runPlan({ cmd: 'ip', args: ['-n', this.topology.nodeNs[node]!, '-s', '-j', 'link', 'show', 'dev', 'eth0'] });
    const bytes = (JSON.parse(r.stdout) as { stats64?: { rx?: { bytes?: number } } }[])[0]?.stats64?.rx?.bytes;
    if (typeof bytes !== 'number') throw new Error(`no receive counter for ${node}'s eth0 in: ${r.stdout.slice(0, 200)}`);
    return bytes;
  }

  /** The tools `node`'s system ran to rejoin at or after `since`, from this harness's log (see rejoinToolsIn). */
  rejoinToolsOf(node: string, since: number): string[] {
    return rejoinToolsIn(readFileSync(this.logFile, 'utf8'), node, since);
  }

  /** Where the writer connects: the VIP, or a comma-separated list it tries for a writable node. */
  writerHosts(): string {
    return NET.vip;
  }

  /** Start the writer through the VIP (or the system's host list) and a sampler on each node. */
  startTraffic(maxSeconds = 900, timeouts?: { connectMs: number; queryMs: number }): void {
    const login = this.writerLogin();
    const env = {
      ...(login.tls ? { WRITER_CA_FILE: login.tls.caFile, WRITER_CERT_FILE: login.tls.certFile, WRITER_KEY_FILE: login.tls.keyFile } : {}),
      ...(timeouts ? { WRITER_CONNECT_TIMEOUT_MS: String(timeouts.connectMs), WRITER_QUERY_TIMEOUT_MS: String(timeouts.queryMs) } : {}),
    };
    this.writer = this.spawnLogged('writer', inNs(this.topology.clientNs, 'node', [join(this.dir, 'writer.mjs'), this.writerHosts(), '5432', login.user, login.password, login.database, String(maxSeconds), '50'], env), (l) => {
      try {
        const m = JSON.parse(l) as { ack?: number; t: number; error?: string };
        if (m.ack) this.acks.push({ id: m.ack, t: m.t });
        else if (m.error) this.log(`[writer] ${m.error}`);
      } catch {
        this.log(`[writer?] ${l}`);
      }
    });
    for (const n of NET.nodes) {
      this.samplers.set(n.name, this.spawnLogged(`sampler-${n.name}`, inNs(this.topology.nodeNs[n.name]!, 'node', [join(this.dir, 'sampler.mjs'), n.name, '5432', this.superuserPassword(), String(maxSeconds)]), (l) => {
        try {
          const sample = JSON.parse(l) as Sample;
          sample.end ??= sample.t;
          this.samples.push(sample);
        } catch {
          this.log(`[sampler?] ${l}`);
        }
      }));
    }
  }

  /** Run SQL on a node's local PostgreSQL from inside its namespace (works while partitioned). */
  async sql(node: string, query: string, database = this.writerLogin().database): Promise<string | undefined> {
    const r = await runPlan(inNs(this.topology.nodeNs[node]!, 'psql', ['-h', '127.0.0.1', '-U', 'postgres', '-d', database, '-XAtq', '-c', query], { PGPASSWORD: this.superuserPassword(), PGCONNECT_TIMEOUT: '2' }), { allowFailure: true, timeoutMs: 10_000 });
    if (r.exitCode === 0) return r.stdout.trim();
    // The caller sees only "no answer"; the reason goes to the harness log for the post-mortem.
    this.log(`[sql] ${node}: psql exited ${r.exitCode}: ${r.stderr.trim().split('\n').slice(-2).join(' | ')} (query: ${query.slice(0, 80)})`);
    return undefined;
  }

  other(node: string): string {
    return NET.nodes.find((n) => n.name !== node)!.name;
  }

  /** `pgbench -i` at `scale` (about 15 MB a unit) into the writer's database on a node, from inside its namespace. */
  async pgbenchInit(node: string, scale: number): Promise<void> {
    await runPlan(inNs(this.topology.nodeNs[node]!, join(PG_BIN, 'pgbench'), ['-i', '-q', '-s', String(scale), '-h', '127.0.0.1', '-U', 'postgres', this.writerLogin().database], { PGPASSWORD: this.superuserPassword() }), { timeoutMs: 3 * 3600_000 });
  }

  /** Leader + synchronous standby, as pg_stat_replication on the leader reports it. */
  async syncPair(): Promise<string | undefined> {
    const leader = await this.leader();
    if (!leader) return undefined;
    // Any streaming row: a second connection of the standby may linger beside the streaming one.
    const sync = await this.sql(leader, `SELECT coalesce(bool_or(sync_state = 'sync'), false) FROM pg_stat_replication WHERE application_name = '${this.other(leader)}' AND state = 'streaming'`, 'postgres');
    return sync === 't' ? leader : undefined;
  }

  /** The leader of a pair ready for an automatic failover by the system's own rule; by default, syncPair. */
  async healthyPair(): Promise<string | undefined> {
    return this.syncPair();
  }

  /** Poll `fn` every `intervalMs` until it gives a value (not undefined, not false). */
  async waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 400): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn().catch(() => undefined);
      if (v !== undefined && v !== false) return v as T;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; see ${this.logFile}`);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /**
   * Simulated power loss: every process of the node dies at once and its NIC goes dark. The
   * node's write sampler is spared: it is the harness's probe, and keeps reporting the node as
   * not writable while it is off (and as whatever it is once it is back).
   */
  async powerOff(node: string): Promise<void> {
    const { linkDown } = await import('#lab/netns.ts');
    await linkDown(this.topology, node);
    const pids = await runPlan({ cmd: 'ip', args: ['netns', 'pids', this.topology.nodeNs[node]!] }, { allowFailure: true });
    const sampler = this.samplers.get(node)?.pid;
    for (const pid of pids.stdout.split('\n').filter(Boolean)) {
      if (Number(pid) === sampler) continue;
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
    const { linkUp } = await import('#lab/netns.ts');
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

  /**
   * Writable samples of one node that fall inside a period in which the other node was seen
   * writable (see dualWritable): 0 unless two nodes accepted writes at the same time.
   */
  dualPrimarySamples(since = 0): number {
    return dualWritable(this.samples, since).samples;
  }

  /** Wait for a sample of every node that started after now; the nodes that were writable in it. */
  async writableNow(timeoutMs = 15_000): Promise<string[]> {
    const after = Date.now();
    const latest = await this.waitFor('a fresh write sample of each node', async () => {
      const fresh = NET.nodes.map((n) => [...this.samples].reverse().find((s) => s.node === n.name && s.t > after));
      return fresh.every(Boolean) ? (fresh as Sample[]) : undefined;
    }, timeoutMs);
    return latest.filter((s) => s.writable).map((s) => s.node);
  }

  async stop(): Promise<void> {
    this.writer?.kill('SIGKILL');
    for (const p of [...this.agents.values(), ...this.samplers.values(), ...this.others]) p.kill('SIGKILL');
    await destroyNamespaces(this.prefix);
  }
}

/**
 * The flags a site would give `geminik8s init` for the harness's network: two nodes, their IPs,
 * the VIP, prefix and gateway, and the witness in its own namespace. Nothing else: timings,
 * syncPolicy and the rest are init's defaults. The interface is init's default (eth0), which is
 * also what the harness names each namespace's NIC, so no override is needed.
 */
export function harnessInitFlags(): { flags: InitFlags; given: Set<string> } {
  const flags: InitFlags = {
    name: 'harness',
    node1Ip: NET.nodes[0].ip,
    node2Ip: NET.nodes[1].ip,
    vip: NET.vip,
    prefix: String(NET.prefix),
    gateway: NET.gateway,
    witness: `${NET.gateway}:${NET.witnessPort}`,
  };
  const given = new Set(['--name', '--node1-ip', '--node2-ip', '--vip', '--prefix', '--gateway', '--witness']);
  return { flags, given };
}

/** What the witness has on disk for the harness cluster (its fsynced record). */
export interface WitnessRecord {
  generation: number;
  holder: string | null;
  promotable: string | null;
  ttlMs: number;
  timeline: number | null;
}

/** Two geminik8s nodes with a lease witness, configured by the code `geminik8s init` runs. */
export class HarnessCluster extends PairHarness {
  override readonly system = 'geminik8s';
  private agentBundle = '';
  private witnessProc?: RunningProcess;
  /** The cluster as `geminik8s init` wrote and `geminik8s validate` reads it. */
  config!: Cluster;
  secrets!: Secrets;

  get configDir(): string {
    return join(this.dir, 'site');
  }

  get witnessStateDir(): string {
    return join(this.dir, 'witness-state');
  }

  /** The witness's credentials as `geminik8s witness credentials` writes them. */
  get witnessTlsDir(): string {
    return join(this.dir, 'witness-tls');
  }

  /** The CA certificate operators verify the agents with (init's secrets/tls/ca.crt). */
  get caFile(): string {
    return tlsFiles(join(this.configDir, this.config.secretsDir), 'ca').cert;
  }

  /** Each node's TLS material from init, as its seed carries it. */
  private readonly tls = new Map<string, TlsMaterial>();

  /**
   * systemd's watchdog for each running agent, emulated (the unit has WatchdogSec= and
   * NotifyAccess=all): the period (WATCHDOG_USEC, lowered by the agent at start) and the last
   * WATCHDOG=1 on the node's notify socket. Past the period the agent gets the unit's
   * WatchdogSignal, SIGKILL after TimeoutAbortSec if it is still there (AGENT_UNIT_TIMEOUTS),
   * and what systemd does next follows as for any other exit (see startAgent).
   *
   * The clock runs in the node's notify receiver, a process of its own as systemd is, not on
   * this process's event loop: a test that blocks this loop for a second (reading a 50 MB backup
   * file) used to run the check before the pings queued meanwhile, and killed a live leader.
   * A stop's clock (TimeoutStopSec, EXTEND_TIMEOUT_USEC) runs there too.
   */
  private readonly receivers = new Map<string, RunningProcess>();
  /** Agents the watchdog killed, with when. */
  readonly watchdogKills: { node: string; at: number; silentMs: number }[] = [];

  /**
   * Tell `node`'s notify receiver what to time: agent `pid`'s watchdog with `periodMs` (running),
   * its stop with `stopMs` (stopping: no watchdog then, as under systemd), or nothing.
   */
  private setUnitClock(node: string, clock: { pid: number; periodMs: number } | { pid: number; stopMs: number } | undefined): void {
    const line = !clock ? 'disarm' : 'periodMs' in clock ? `arm ${clock.pid} ${clock.periodMs}` : `stop ${clock.pid} ${clock.stopMs}`;
    this.receivers.get(node)?.stdin?.write(`${line}\n`);
  }

  private notifySocket(node: string): string {
    return join(this.nodeDir(node), 'notify.sock');
  }

  /**
   * A datagram receiver on the node's notify socket (Node has no unix datagram sockets; the
   * agent sends through its python3 helper or systemd-notify, as under systemd), one line per
   * message, and the agent unit's clocks. On its stdin `arm PID PERIOD_MS` (the watchdog), `stop
   * PID STOP_MS` (a stop's TimeoutStopSec, which EXTEND_TIMEOUT_USEC pushes back, never forward)
   * or `disarm`; it prints `!expired PID SILENT_MS PERIOD_MS` when a watched agent has been silent
   * too long, `!stop-expired PID` when a stop ran past its deadline.
   */
  private startNotifyReceiver(node: string): void {
    const path = this.notifySocket(node);
    rmSync(path, { force: true });
    const receiver = [
      'import os, select, socket, sys, time',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      's.bind(sys.argv[1])',
      'now = lambda: time.monotonic() * 1000',
      'watch = None  # [pid, period ms, last ping]',
      'stop = None  # [pid, deadline]',
      "pending = b''",
      'while True:',
      '    ready = select.select([s, 0], [], [], 0.02)[0]',
      '    if 0 in ready:',
      '        data = os.read(0, 4096)',
      '        if not data: sys.exit(0)',
      '        pending += data',
      "        while b'\\n' in pending:",
      "            line, pending = pending.split(b'\\n', 1)",
      '            w = line.split()',
      "            watch = [int(w[1]), float(w[2]), now()] if w and w[0] == b'arm' else None",
      "            stop = [int(w[1]), now() + float(w[2])] if w and w[0] == b'stop' else None",
      '    if s in ready:',
      "        msg = s.recv(65536).decode('utf-8', 'replace')",
      '        for f in msg.split(chr(10)):',
      "            if watch and f == 'WATCHDOG=1': watch[2] = now()",
      "            if watch and f.startswith('WATCHDOG_USEC='): watch[1], watch[2] = int(f[14:]) / 1000, now()",
      "            if stop and f.startswith('EXTEND_TIMEOUT_USEC='): stop[1] = max(stop[1], now() + int(f[20:]) / 1000)",
      "        print(msg.replace(chr(10), '|'), flush=True)",
      '    if watch and now() - watch[2] > watch[1]:',
      "        print('!expired %d %d %d' % (watch[0], now() - watch[2], watch[1]), flush=True)",
      '        watch = None',
      '    if stop and now() > stop[1]:',
      "        print('!stop-expired %d' % stop[0], flush=True)",
      '        stop = None',
    ].join('\n');
    const p = spawnPlan({ cmd: 'python3', args: ['-c', receiver, path] }, {
      stdin: true,
      stderr: (l) => this.log(`[notify-${node}!] ${l}`),
      stdout: (line) => {
        const expired = /^!expired (\d+) (\d+) (\d+)$/.exec(line);
        if (expired) {
          this.watchdogExpired(node, Number(expired[1]), Number(expired[2]), Number(expired[3]));
          return;
        }
        const stopExpired = /^!stop-expired (\d+)$/.exec(line);
        if (stopExpired) {
          this.stopExpired(node, Number(stopExpired[1]));
          return;
        }
        // As systemd: a new period applies from now, and an extension gives a later stop
        // deadline, never an earlier one (service_extend_timeout); the receiver keeps both clocks.
        for (const field of line.split('|')) {
          const usec = /^WATCHDOG_USEC=(\d+)$/.exec(field);
          if (usec && this.agents.has(node)) this.log(`[harness] ${node}: watchdog period ${Number(usec[1]) / 1000} ms`);
        }
      },
    });
    this.receivers.set(node, p);
    this.others.push(p);
  }

  /** A stop of agent `pid` passed TimeoutStopSec, extensions included: SIGKILL, as systemd does. */
  private stopExpired(node: string, pid: number): void {
    const p = this.agents.get(node);
    if (this.stopping || !p || p.pid !== pid) return;
    this.stopTimeoutKills.push({ node, at: Date.now() });
    this.log(`[harness] ${node}: the agent's stop passed TimeoutStopSec (${AGENT_UNIT_TIMEOUTS.stopMs} ms, extended by EXTEND_TIMEOUT_USEC): SIGKILL, as systemd would`);
    p.kill('SIGKILL');
  }

  /** The receiver's clock ran out for agent `pid`: what systemd does then, if that agent still runs. */
  private watchdogExpired(node: string, pid: number, silentMs: number, periodMs: number): void {
    const p = this.agents.get(node);
    if (this.stopping || !p || p.pid !== pid) return;
    const now = Date.now();
    this.watchdogKills.push({ node, at: now, silentMs });
    const { watchdogSignal, abortMs } = AGENT_UNIT_TIMEOUTS;
    this.log(`[harness] ${node}: watchdog: no WATCHDOG=1 for ${silentMs} ms (period ${periodMs} ms): ${watchdogSignal} to the agent (the unit's WatchdogSignal), as systemd would`);
    signalProcess(p.pid, watchdogSignal);
    let gone = false;
    void p.processExited.then(() => (gone = true));
    if (watchdogSignal !== 'SIGKILL') {
      // A stopped process keeps any other signal pending: systemd's SIGKILL after TimeoutAbortSec ends it.
      setTimeout(() => {
        if (gone || this.stopping) return;
        this.log(`[harness] ${node}: agent pid ${p.pid} still there ${abortMs} ms after ${watchdogSignal} (TimeoutAbortSec): SIGKILL, as systemd would`);
        p.kill('SIGKILL');
      }, abortMs).unref();
      return;
    }
    setTimeout(() => {
      if (gone) return;
      let stat = 'no /proc entry';
      try {
        stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8').trim();
      } catch {
        // gone without an exit event
      }
      this.log(`[harness] ${node}: agent pid ${p.pid} has not exited 3 s after the watchdog's SIGKILL: ${stat}`);
    }, 3000).unref();
  }

  /**
   * `geminik8s init --name harness --node1-ip … --node2-ip … --vip … --prefix … --gateway …
   * --witness GATEWAY:7444 --config-dir DIR`, through init's own functions: defaults + flags,
   * validation, the commented cluster.yaml and the secrets directory. Then, as `geminik8s seed`
   * does, the file is loaded and validated again and each node's seed rendered from it.
   */
  private async init(): Promise<void> {
    const { flags, given } = harnessInitFlags();
    const { input, flagIssues } = buildClusterInput(flags);
    const { cluster, issues } = validateClusterInput(input, given);
    if (flagIssues.length || issues.length || !cluster) throw new Error(`geminik8s init refused the harness flags: ${JSON.stringify([...flagIssues, ...issues])}`);
    mkdirSync(this.configDir, { recursive: true });
    const clusterFile = join(this.configDir, 'cluster.yaml');
    writeFileSync(clusterFile, clusterYamlText(input));
    const secretsDir = join(this.configDir, cluster.secretsDir);
    await writeSecrets(secretsDir, { rotate: false });
    await writeClusterTls(secretsDir, cluster, { rotate: false });
    await this.reloadConfig();
    this.secrets = await loadSecrets(secretsDir);
    // What an operator copies to the witness box: `geminik8s witness credentials --out DIR`.
    await writeWitnessCredentials(clusterFile, { out: this.witnessTlsDir });
    if (this.config.witness.type !== 'lease') throw new Error(`init --witness gave a ${this.config.witness.type} witness, expected lease`);
    const { network, nodes, witness, postgresql, failover } = this.config;
    this.log(`cluster from init: ${JSON.stringify({ network, nodes, witness, postgresql, failover })}`);
  }

  protected async startSystem(): Promise<void> {
    await this.init();
    this.agentBundle = await buildAgent(join(this.dir, 'agent.mjs'));
    this.startWitness();
    for (const n of NET.nodes) this.writeNodeFiles(n.name);
    for (const n of NET.nodes) this.startNotifyReceiver(n.name);
    for (const n of NET.nodes) this.startAgent(n.name);
  }

  /** `geminik8s witness serve` in the witness namespace; the token file is init's agent token. */
  startWitness(): void {
    const url = new URL((this.config.witness as { url: string }).url);
    const tokenFile = join(this.configDir, this.config.secretsDir, SECRET_FILES.witnessToken);
    const p = this.spawnJsonLogged('witness', inNs(this.topology.witnessNs, 'node', [this.agentBundle, 'witness', '--listen', `${url.hostname}:${url.port}`, '--token-file', tokenFile, '--tls-dir', this.witnessTlsDir, '--state-dir', this.witnessStateDir]));
    this.witnessProc = p;
    void p.exited.then(() => {
      if (this.witnessProc === p) this.witnessProc = undefined;
    });
  }

  witnessRunning(): boolean {
    return this.witnessProc !== undefined;
  }

  /** SIGKILL the witness process and wait until it is gone. */
  async killWitness(): Promise<void> {
    const p = this.witnessProc;
    if (!p) return;
    p.kill('SIGKILL');
    await p.exited;
    this.witnessProc = undefined;
  }

  /** The witness's durable record of the harness cluster, read from its state directory. */
  witnessRecord(): WitnessRecord | undefined {
    const file = join(this.witnessStateDir, `${this.config.name}.json`);
    try {
      return JSON.parse(readFileSync(file, 'utf8')) as WitnessRecord;
    } catch {
      return undefined;
    }
  }

  /** The node's seed, rendered from cluster.yaml exactly as `geminik8s seed` renders it; node-local paths in agent.yaml. */
  private writeNodeFiles(node: string): void {
    const dir = this.nodeDir(node);
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o755);
    const seed = renderSeedFiles(this.config, node, this.secrets, this.tls.get(node)).find((f) => f.path === SEED_FILE_IN_PARTITION);
    if (!seed) throw new Error(`renderSeedFiles produced no ${SEED_FILE_IN_PARTITION}`);
    writeFileSync(join(dir, 'seed.yaml'), seed.content, { mode: 0o600 });
    writeFileSync(
      join(dir, 'agent.yaml'),
      stringify({
        seedFile: join(dir, 'seed.yaml'),
        stateDir: join(dir, 'state'),
        postgresql: { binDir: PG_BIN, dataDir: join(dir, 'pgdata'), socketDir: join(dir, 'run') },
        serviceManager: 'direct',
        checksDir: join(dir, 'checks.d'),
        vip: { releaseFile: this.vipReleaseFile(node) },
      }),
    );
  }

  writerLogin(): WriterLogin {
    // Kine runs on a node and shows that node's certificate: node1's here.
    const node1 = tlsFiles(join(this.configDir, this.config.secretsDir), NET.nodes[0].name);
    return { user: 'kine', password: kinePassword(this.secrets.postgresPassword), database: 'kine', tls: { caFile: this.caFile, certFile: node1.cert, keyFile: node1.key } };
  }

  superuserPassword(): string {
    return this.secrets.postgresPassword;
  }

  startNode(node: string): void {
    this.startAgent(node);
  }

  /**
   * Agent processes the harness ends on purpose (crash, power loss, stop): not restarted by the
   * supervisor emulation. By process, not pid: pids wrap here within minutes (pid_max 32768).
   */
  private deliberate = new WeakSet<RunningProcess>();
  private stopping = false;
  /** Agents that exited by themselves, with when and how (systemd would have restarted them; so does the harness). */
  readonly unexpectedExits: { node: string; at: number; code: number | string }[] = [];

  /**
   * Start the agent. Like geminik8s-agent.service (Restart=always, RestartSec=2, PostgreSQL
   * BindsTo= the agent, ExecStopPost= release-vip), an agent that exits by itself is followed by
   * the stop of its PostgreSQL and the VIP, and started again 2 s later. Such exits are recorded
   * in `unexpectedExits` and logged.
   */
  startAgent(node: string): void {
    if (this.agents.has(node)) {
      this.log(`[harness] ${node}: its agent runs already (pid ${this.agents.get(node)!.pid}); not starting a second one`);
      return;
    }
    const plan = inNs(this.topology.nodeNs[node]!, 'node', [this.agentBundle, 'run', '--config', join(this.nodeDir(node), 'agent.yaml')], {
      GEMINIK8S_LOG_LEVEL: process.env.GEMINIK8S_LOG_LEVEL ?? 'info',
      NOTIFY_SOCKET: this.notifySocket(node),
      WATCHDOG_USEC: String(AGENT_WATCHDOG_SEC * 1_000_000),
    });
    const p = this.spawnJsonLogged(node, plan);
    this.agents.set(node, p);
    this.setUnitClock(node, { pid: p.pid, periodMs: AGENT_WATCHDOG_SEC * 1000 });
    const pipe = pipeOf(p.pid, 1);
    // systemd acts on the main PID's exit, not on its output closing: a child that inherited the
    // agent's stdout would otherwise keep a dead agent unnoticed and its PostgreSQL running.
    void p.processExited.then(async (code) => {
      const lingering = setTimeout(() => this.log(`[harness] ${node}: agent pid ${p.pid} exited (${code}) but its stdout (${pipe ?? 'unknown'}) is still open 5 s later, held by: ${pipe ? pipeHolders(pipe).join('; ') || 'nobody found' : 'unknown'}`), 5000);
      void p.exited.then(() => clearTimeout(lingering));
      if (this.stopping || this.deliberate.has(p) || this.agents.get(node) !== p) return;
      this.unexpectedExits.push({ node, at: Date.now(), code });
      this.log(`[harness] ${node}: the agent exited by itself (${code}); as systemd would: PostgreSQL stops (BindsTo=), release-vip (ExecStopPost=), restart in 2 s (Restart=always)`);
      this.agents.delete(node);
      await this.stopServiceAfterAgent(node);
      await new Promise((r) => setTimeout(r, 2000));
      if (!this.stopping && !this.agents.has(node)) this.startAgent(node);
    });
  }

  /** What systemd does once the agent unit is down: PostgreSQL stops (BindsTo=, KillSignal=SIGINT), then ExecStopPost= release-vip. */
  private async stopServiceAfterAgent(node: string): Promise<void> {
    const pm = this.postmasterPid(node);
    if (pm && processAlive(pm)) {
      signalProcess(pm, 'SIGINT');
      // A fast shutdown also waits for every connection still reading its startup packet: one
      // left half-open when the VIP moved away waits out authentication_timeout (60 s). As
      // systemd does, wait TimeoutStopSec, then SIGKILL, and go on in any case.
      const gone = await this.waitFor(`${node}: postmaster ${pm} gone`, async () => (processAlive(pm) ? undefined : true), PG_UNIT_STOP_MS).catch(() => false);
      if (!gone) {
        this.log(`[harness] ${node}: postmaster ${pm} still there ${PG_UNIT_STOP_MS} ms after SIGINT (the PostgreSQL unit's TimeoutStopSec): SIGKILL, as systemd would`);
        signalProcess(pm, 'SIGKILL');
        await this.waitFor(`${node}: postmaster ${pm} gone after SIGKILL`, async () => (processAlive(pm) ? undefined : true), 30_000).catch(() => this.log(`[harness] ${node}: postmaster ${pm} still there 30 s after SIGKILL`));
      }
    }
    // The unit's own ExecStopPost script, on the release file this node's agent wrote at its start.
    const script = join(ROOT, 'overlays', NODE_PATHS.releaseVipScript);
    await runPlan(inNs(this.topology.nodeNs[node]!, '/bin/sh', [script, this.vipReleaseFile(node), this.agentBundle, join(this.nodeDir(node), 'agent.yaml')]), { allowFailure: true, timeoutMs: 30_000 });
  }

  /** The node's `vip.releaseFile`: its agent writes it, ExecStopPost (release-vip.sh) reads it. */
  private vipReleaseFile(node: string): string {
    return join(this.nodeDir(node), 'run', 'vip');
  }

  /**
   * A clean stop, as systemd does it at a reboot: SIGTERM to the agent; once it has exited,
   * SIGINT to PostgreSQL (its unit is ordered Before= the agent's, so it stops after it) and
   * ExecStopPost= release-vip. Start the node again with powerOn.
   */
  async cleanStop(node: string, opts: { freeze?: boolean } = {}): Promise<void> {
    await this.endAgent(node, 'SIGTERM', opts.freeze ? 'stopped (agent SIGTERM, then frozen with SIGSTOP; PostgreSQL SIGINT once it was gone)' : 'stopped cleanly (agent SIGTERM; PostgreSQL SIGINT once it has exited)', opts);
  }

  /** Agents whose stop passed TimeoutStopSec and were SIGKILLed, with when. */
  readonly stopTimeoutKills: { node: string; at: number }[] = [];

  override async powerOff(node: string): Promise<void> {
    const p = this.agents.get(node);
    if (p) this.deliberate.add(p);
    await super.powerOff(node);
  }

  override async stop(): Promise<void> {
    this.stopping = true;
    await super.stop();
  }

  /**
   * The agent process dies (kill -9) and what `geminik8s-agent.service` does about it follows,
   * since the harness runs the agent without systemd (serviceManager direct): PostgreSQL stops
   * through its BindsTo= (KillSignal=SIGINT, a fast shutdown), and ExecStopPost= runs
   * release-vip.sh. Restart=always with RestartSec=2 is up to the caller (restartAgent).
   */
  async crashAgent(node: string): Promise<void> {
    await this.endAgent(node, 'SIGKILL', 'agent killed (SIGKILL); stopping PostgreSQL as BindsTo= would, then ExecStopPost= release-vip');
  }

  /** End a node's agent on purpose with `signal`, then what systemd does after the unit. */
  private async endAgent(node: string, signal: 'SIGKILL' | 'SIGTERM', what: string, opts: { freeze?: boolean } = {}): Promise<void> {
    const p = this.agents.get(node);
    if (!p) throw new Error(`no agent process for ${node}`);
    this.deliberate.add(p);
    // systemd stops a unit's watchdog once the unit leaves "running" (service_set_state): a
    // stopping agent is not killed for the pings its shutdown no longer sends. Its stop has
    // TimeoutStopSec instead, pushed back by EXTEND_TIMEOUT_USEC (startNotifyReceiver).
    this.setUnitClock(node, signal === 'SIGTERM' ? { pid: p.pid, stopMs: AGENT_UNIT_TIMEOUTS.stopMs } : undefined);
    // Signals sent directly: execa's kill() follows a SIGTERM with its own SIGKILL 5 s later,
    // which systemd does not (it waits TimeoutStopSec).
    signalProcess(p.pid, signal);
    // A freeze inside the stop (SIGSTOP at once, before or while its handler runs).
    if (opts.freeze) signalProcess(p.pid, 'SIGSTOP');
    await p.processExited;
    this.setUnitClock(node, undefined);
    this.agents.delete(node);
    this.log(`[harness] ${node}: ${what}`);
    await this.stopServiceAfterAgent(node);
  }

  /**
   * Last resort of the harness, after a scenario left a node that does not rejoin by itself: stop
   * its agent and PostgreSQL, move its data directory aside (kept for inspection) and start the
   * agent, which finds no data and clones the leader. Logged loudly; the scenario has failed already.
   */
  async recloneNode(node: string): Promise<void> {
    this.log(`[harness] REPAIR: ${node} does not rejoin by itself; moving its data directory aside and letting its agent clone the leader`);
    if (this.agents.has(node)) await this.crashAgent(node);
    else await this.stopServiceAfterAgent(node);
    const data = join(this.nodeDir(node), 'pgdata');
    if (existsSync(data)) renameSync(data, `${data}.broken-${Date.now()}`);
    this.startAgent(node);
  }

  /**
   * `geminik8s init --force --rotate-certs` (every certificate reissued from the kept CA), then
   * a new seed for `node` only and its agent restarted: the rollout's halfway point, one node
   * on its new certificate, the other still on its old one.
   */
  async rotateCertsOn(node: string): Promise<void> {
    const clusterFile = join(this.configDir, 'cluster.yaml');
    await writeClusterTls(join(this.configDir, this.config.secretsDir), this.config, { rotate: true });
    this.tls.set(node, (await loadClusterTls(clusterFile, this.config, node))!);
    this.writeNodeFiles(node);
    await this.restartAgent(node);
  }

  /** The certificate a node's agent API serves now, as PEM (read from inside the client namespace). */
  async servedCertificate(node: string): Promise<string | undefined> {
    const ip = this.ipOf(node);
    // stdin closed at once: s_client prints the handshake and leaves.
    const r = await runPlan({ ...inNs(this.topology.clientNs, 'openssl', ['s_client', '-connect', `${ip}:7443`, '-CAfile', this.caFile, '-verify_return_error']), input: '' }, { allowFailure: true, timeoutMs: 10_000 });
    return /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0];
  }

  /** A node's address as cluster.yaml gives it now (replace-node moves it). */
  ipOf(node: string): string {
    return this.config.nodes.find((n) => n.name === node)!.ip;
  }

  /** Read cluster.yaml and the node certificates again, after a command changed them. */
  async reloadConfig(): Promise<void> {
    const clusterFile = join(this.configDir, 'cluster.yaml');
    this.config = await loadCluster(clusterFile);
    for (const n of this.config.nodes) this.tls.set(n.name, (await loadClusterTls(clusterFile, this.config, n.name))!);
  }

  /**
   * A new box in place of a powered-off node, as after `geminik8s replace-node`: an empty disk
   * (the old node directory is kept aside for inspection), its NIC at the address cluster.yaml
   * now gives, the seed file from `seedDir` (what the operator puts on its config partition),
   * then power on.
   */
  async replaceBox(node: string, oldIp: string, seedDir: string): Promise<void> {
    if (this.agents.has(node)) throw new Error(`${node} still runs: power it off before it is replaced`);
    await this.reloadConfig();
    const dir = this.nodeDir(node);
    const aside = `${dir}.replaced-${Date.now()}`;
    renameSync(dir, aside);
    this.writeNodeFiles(node);
    copyFileSync(join(seedDir, SEED_FILE_IN_PARTITION), join(dir, 'seed.yaml'));
    chmodSync(join(dir, 'seed.yaml'), 0o600);
    this.startNotifyReceiver(node);
    const { linkUp, readdressNode } = await import('#lab/netns.ts');
    await readdressNode(this.topology, node, oldIp, this.ipOf(node));
    await linkUp(this.topology, node);
    this.log(`[harness] ${node}: a new box at ${this.ipOf(node)} (was ${oldIp}); the old disk is ${aside}`);
    this.startAgent(node);
  }

  /** crashAgent, then systemd's restart after RestartSec=2. */
  async restartAgent(node: string): Promise<void> {
    await this.crashAgent(node);
    await new Promise((r) => setTimeout(r, 2000));
    this.startAgent(node);
  }

  /** GET /v1/status of a node's agent, from inside the client namespace. */
  async status(node: string): Promise<Record<string, any> | undefined> {
    const ip = this.ipOf(node);
    const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-sf', '-m', '2', '--cacert', this.caFile, '-H', `Authorization: Bearer ${this.secrets.readToken}`, `https://${ip}:7443/v1/status`]), { allowFailure: true });
    if (r.exitCode !== 0) return undefined;
    return JSON.parse(r.stdout) as Record<string, any>;
  }

  lastSwitchoverMs?: number;

  /** POST /v1/switchover to a node's agent, from inside the client namespace. */
  async switchover(node: string, timeoutSeconds = 30): Promise<{ ok: boolean; reason: string; tookMs: number } | undefined> {
    const ip = this.ipOf(node);
    const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-s', '-m', String(timeoutSeconds), '--cacert', this.caFile, '-X', 'POST', '-H', `Authorization: Bearer ${this.secrets.adminToken}`, `https://${ip}:7443/v1/switchover`]), { allowFailure: true, timeoutMs: (timeoutSeconds + 10) * 1000 });
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
    // Healthy means the leader takes writes (not left read-only), and automatic failover is
    // possible: the witness records the standby as promotable.
    const ls = await this.status(leader);
    return ls?.lease?.promotable === this.other(leader) && ls.postgres?.readOnly === false ? leader : undefined;
  }

  /** PIDs of a node's PostgreSQL postmaster (from postmaster.pid). */
  postmasterPid(node: string): number | undefined {
    const file = join(this.nodeDir(node), 'pgdata', 'postmaster.pid');
    if (!existsSync(file)) return undefined;
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  }

  /** A child of the node's postmaster whose title contains `title` (e.g. `walreceiver`, `startup`). */
  postgresChild(node: string, title: string): number | undefined {
    const pm = this.postmasterPid(node);
    if (!pm) return undefined;
    // Children by their parent pid (field 4 of /proc/<pid>/stat).
    const children = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pm;
      } catch {
        return false;
      }
    });
    for (const c of children) {
      try {
        const cmd = readFileSync(`/proc/${c}/cmdline`, 'utf8').replaceAll('\0', ' ');
        if (cmd.includes(title)) return Number(c);
      } catch {
        // gone
      }
    }
    return undefined;
  }
}

/** The process exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/**
 * What shows that a tool ran, in the systems' own words: its output (`pg_rewind: …`), its
 * command line, Patroni's "running pg_rewind" and "created using basebackup", the agent's
 * rejoin event. A plan that merely names a tool ("first try to rewind; if that fails, do a
 * pg_basebackup", pg_auto_failover) does not count.
 */
const TOOL_RAN: Record<string, RegExp> = {
  pg_rewind: /pg_rewind: |running pg_rewind|bin\/pg_rewind |"method":"pg_rewind"|"rewindError"/,
  pg_basebackup: /pg_basebackup: |bin\/pg_basebackup |created using basebackup|"method":"pg_basebackup"/,
};

/**
 * Which of `pg_rewind` and `pg_basebackup` a harness log shows `node`'s system running at or
 * after `since` (ms), in the order first seen. Lines are `<ISO time> [<name>] …` or
 * `[<name>!] …` (stderr), where the name is the node's (the agent's) or a process of a system
 * on it (`patroni-node1`, `keeper-node1`); the other node's lines may name this one and do not count.
 */
export function rejoinToolsIn(log: string, node: string, since: number): string[] {
  const tools: string[] = [];
  const tagged = new RegExp(`^\\S+ \\[(?:[a-z]+-)?${node}!?\\] `);
  for (const line of log.split('\n')) {
    if (!(Date.parse(line.slice(0, 24)) >= since) || !tagged.test(line)) continue;
    for (const [tool, ran] of Object.entries(TOOL_RAN)) if (ran.test(line) && !tools.includes(tool)) tools.push(tool);
  }
  return tools;
}

/** The longest time between two consecutive instants of `times` (ascending, ms); 0 for fewer than two. */
export function longestGap(times: number[]): number {
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
  return gap;
}
