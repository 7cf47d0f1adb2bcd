import { appendFileSync, chmodSync, chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { PairHarness, PG_BIN, type WriterLogin } from './cluster.ts';
import { inNs, NET } from '#lab/netns.ts';

/**
 * pg_auto_failover timings. `defaults` is what it ships: the monitor's health checks every 5 s
 * (timeout 5 s, 2 retries 2 s apart), a node unhealthy after 20 s without a report, a promotion
 * held for `primary_demote_timeout` 30 s, and the keeper's `network_partition_timeout` 20 s (a
 * primary cut from the monitor and its standby demotes itself after it; it must stay below the
 * monitor's demote timeout). `tuned` scales them to geminik8s's detection (a leader fences by
 * 4 s, the lease expires after 6 s), keeping that order.
 */
export const PGAF_PROFILES = {
  defaults: {
    monitor: {},
    keeper: {},
  },
  tuned: {
    monitor: {
      'pgautofailover.health_check_period': 1000,
      'pgautofailover.health_check_timeout': 1000,
      'pgautofailover.health_check_max_retries': 1,
      'pgautofailover.health_check_retry_delay': 500,
      'pgautofailover.node_considered_unhealthy_timeout': 4000,
      'pgautofailover.primary_demote_timeout': 6000,
    },
    keeper: { 'timeout.network_partition_timeout': 4 },
  },
} as const satisfies Record<string, { monitor: Record<string, number>; keeper: Record<string, number> }>;

const SUBNET = `${NET.gateway.replace(/\.\d+$/, '.0')}/${NET.prefix}`;
const MONITOR_URI = `postgres://autoctl_node@${NET.gateway}:5432/pg_auto_failover?sslmode=disable`;

/**
 * pg_auto_failover (Debian's postgresql-15-auto-failover): its monitor in the witness namespace,
 * a keeper per node. Clients of pg_auto_failover connect with a multi-host connection string
 * and `target_session_attrs=read-write`, so the writer tries both nodes and keeps the one that
 * is not read-only (there is no VIP to move). Every member runs as `postgres` with its own
 * socket directory bound over /var/run/postgresql inside its namespace's mount namespace.
 */
export class PgAutoFailoverCluster extends PairHarness {
  override readonly system = 'pg_auto_failover';

  constructor(dir: string, readonly profile: keyof typeof PGAF_PROFILES = 'defaults', prefix?: string) {
    super(dir, prefix);
  }

  writerLogin(): WriterLogin {
    return { user: 'postgres', password: 'unused-trust-auth', database: 'postgres' };
  }

  superuserPassword(): string {
    return 'unused-trust-auth';
  }

  override writerHosts(): string {
    return NET.nodes.map((n) => n.ip).join(',');
  }

  private memberDir(member: string): string {
    return join(this.dir, member);
  }

  /** `cmd` as postgres in `ns`, with `member`'s socket directory and pg_autoctl's configuration. */
  private asPostgres(ns: string, member: string, cmd: string, args: string[]): CommandPlan {
    const dir = this.memberDir(member);
    const quoted = [cmd, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    return inNs(ns, 'sh', ['-c', `mount --bind '${join(dir, 'run')}' /var/run/postgresql && exec setpriv --reuid=postgres --regid=postgres --init-groups env HOME='${dir}' XDG_CONFIG_HOME='${join(dir, 'config')}' XDG_DATA_HOME='${join(dir, 'data')}' XDG_RUNTIME_DIR='${join(dir, 'xdg-run')}' PATH='${PG_BIN}:/usr/bin:/bin' ${quoted}`]);
  }

  private prepare(member: string): void {
    const dir = this.memberDir(member);
    for (const d of [dir, join(dir, 'run'), join(dir, 'config'), join(dir, 'data'), join(dir, 'xdg-run')]) {
      mkdirSync(d, { recursive: true });
      chmodSync(d, 0o755);
      chownSync(d, this.uid, this.gid);
    }
  }

  private uid = 0;
  private gid = 0;

  /** SQL through a member's socket directory, as postgres (local trust). */
  private async localSql(member: string, database: string, sql: string): Promise<string> {
    const r = await runPlan({ cmd: 'setpriv', args: ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN, 'psql'), '-h', join(this.memberDir(member), 'run'), '-U', 'postgres', '-d', database, '-XAtq', '-c', sql] }, { timeoutMs: 30_000 });
    return r.stdout.trim();
  }

  protected async startSystem(): Promise<void> {
    this.uid = Number((await runPlan({ cmd: 'id', args: ['-u', 'postgres'] })).stdout.trim());
    this.gid = Number((await runPlan({ cmd: 'id', args: ['-g', 'postgres'] })).stdout.trim());
    const t = PGAF_PROFILES[this.profile];
    this.prepare('monitor');
    const monitorData = join(this.memberDir('monitor'), 'pgdata');
    this.others.push(this.spawnLogged('monitor', this.asPostgres(this.topology.witnessNs, 'monitor', 'pg_autoctl', [
      'create', 'monitor', '--pgdata', monitorData, '--pgport', '5432', '--hostname', NET.gateway, '--auth', 'trust', '--no-ssl', '--pgctl', join(PG_BIN, 'pg_ctl'), '--run',
    ])));
    await this.waitFor('the pg_auto_failover monitor', async () => {
      const r = await runPlan(inNs(this.topology.clientNs, join(PG_BIN, 'psql'), [MONITOR_URI, '-XAtqc', 'SELECT 1'], { PGCONNECT_TIMEOUT: '2' }), { allowFailure: true });
      return r.exitCode === 0 && r.stdout.trim() === '1' ? true : undefined;
    }, 120_000, 1000);
    if (Object.keys(t.monitor).length > 0) {
      for (const [k, v] of Object.entries(t.monitor)) await this.localSql('monitor', 'pg_auto_failover', `ALTER SYSTEM SET ${k} = ${v}`);
      await this.localSql('monitor', 'pg_auto_failover', 'SELECT pg_reload_conf()');
    }
    this.log(`monitor settings: ${await this.localSql('monitor', 'pg_auto_failover', "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name LIKE 'pgautofailover.%'")}`);
    // node1 first (it becomes the primary), then node2 clones it.
    for (const n of NET.nodes) {
      await this.createNode(n.name, n.ip);
      this.startNode(n.name);
      await this.waitFor(`${n.name} registered and running`, async () => {
        const s = await this.states();
        const state = s.find((x) => x.name === n.name)?.reported;
        return state === (n === NET.nodes[0] ? 'single' : 'secondary') || state === 'primary' ? true : undefined;
      }, 300_000, 1000);
    }
  }

  private async createNode(node: string, ip: string): Promise<void> {
    this.prepare(node);
    const pgdata = join(this.memberDir(node), 'pgdata');
    await runPlan(this.asPostgres(this.topology.nodeNs[node]!, node, 'pg_autoctl', [
      'create', 'postgres', '--pgdata', pgdata, '--pgport', '5432', '--hostname', ip, '--name', node, '--monitor', MONITOR_URI,
      '--auth', 'trust', '--no-ssl', '--pgctl', join(PG_BIN, 'pg_ctl'), '--dbname', 'postgres', '--username', 'postgres',
    ]), { timeoutMs: 600_000 });
    if (node === NET.nodes[0]!.name) {
      // The harness's writer, samplers and queries connect over TCP from the LAN and 127.0.0.1;
      // the standby clones these rules with the data directory.
      appendFileSync(join(pgdata, 'pg_hba.conf'), `host all all 127.0.0.1/32 trust\nhost all all ${SUBNET} trust\nhost replication all ${SUBNET} trust\n`);
      await this.localSql(node, 'postgres', 'SELECT pg_reload_conf()').catch(() => undefined);
    }
    for (const [k, v] of Object.entries(PGAF_PROFILES[this.profile].keeper)) {
      await runPlan(this.asPostgres(this.topology.nodeNs[node]!, node, 'pg_autoctl', ['config', 'set', '--pgdata', pgdata, k, String(v)]), { timeoutMs: 30_000 });
    }
  }

  startNode(node: string): void {
    const pgdata = join(this.memberDir(node), 'pgdata');
    this.agents.set(node, this.spawnLogged(`keeper-${node}`, this.asPostgres(this.topology.nodeNs[node]!, node, 'pg_autoctl', ['run', '--pgdata', pgdata])));
  }

  /** The monitor's view: each node's name and its reported and assigned states. */
  async states(): Promise<{ name: string; reported: string; assigned: string }[]> {
    const r = await runPlan(inNs(this.topology.clientNs, join(PG_BIN, 'psql'), [MONITOR_URI, '-XAtqF', ' ', '-c', 'SELECT nodename, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid'], { PGCONNECT_TIMEOUT: '2' }), { allowFailure: true, timeoutMs: 10_000 });
    if (r.exitCode !== 0) return [];
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => {
      const [name, reported, assigned] = l.split(' ');
      return { name: name!, reported: reported!, assigned: assigned! };
    });
  }

  /** The node the monitor reports as primary (or wait_primary) whose PostgreSQL accepts writes. */
  async leader(): Promise<string | undefined> {
    for (const s of await this.states()) {
      if (!['primary', 'wait_primary', 'single'].includes(s.reported)) continue;
      if ((await this.sql(s.name, 'SHOW transaction_read_only', 'postgres')) === 'off') return s.name;
    }
    return undefined;
  }

  /**
   * A primary whose standby is synchronous. pg_auto_failover names it pgautofailover_standby_<id>
   * and writes `ANY 1 (...)`, so pg_stat_replication says `quorum` rather than `sync`.
   */
  override async syncPair(): Promise<string | undefined> {
    const leader = await this.leader();
    if (!leader) return undefined;
    // Any streaming row: a second connection of the same standby can linger in "startup" beside
    // the streaming one (seen for 5 minutes after a lossy network healed), which a one-row
    // comparison read as "not synchronous" forever.
    const sync = await this.sql(leader, "SELECT coalesce(bool_or(sync_state IN ('sync', 'quorum')), false) FROM pg_stat_replication WHERE application_name LIKE 'pgautofailover_standby_%' AND state = 'streaming'", 'postgres');
    return sync === 't' ? leader : undefined;
  }
}
