import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runPlan } from '#common/exec.ts';
import { PairHarness, PG_BIN, type WriterLogin } from './cluster.ts';
import { inNs, NET } from '#lab/netns.ts';

const PASSWORDS = { superuser: 'patroni-superuser-password-01', replication: 'patroni-replication-password-01' };

/**
 * Patroni timings. `defaults` is what Patroni ships (ttl 30, loop_wait 10, retry_timeout 10),
 * the reference the issue compares against.
 */
export const PATRONI_PROFILES = {
  defaults: { ttl: 30, loop_wait: 10, retry_timeout: 10 },
  tuned: { ttl: 10, loop_wait: 2, retry_timeout: 4 },
} as const;

/** Patroni with a single etcd in the witness namespace; a role-change callback moves the VIP. */
export class PatroniCluster extends PairHarness {
  override readonly system = 'patroni';
  private uid = 0;
  private gid = 0;

  constructor(dir: string, readonly profile: keyof typeof PATRONI_PROFILES = 'defaults', prefix?: string) {
    super(dir, prefix);
  }

  writerLogin(): WriterLogin {
    return { user: 'postgres', password: PASSWORDS.superuser, database: 'postgres' };
  }

  superuserPassword(): string {
    return PASSWORDS.superuser;
  }

  protected async startSystem(): Promise<void> {
    const ids = (await runPlan({ cmd: 'id', args: ['-u', 'postgres'] })).stdout.trim();
    this.uid = Number(ids);
    this.gid = Number((await runPlan({ cmd: 'id', args: ['-g', 'postgres'] })).stdout.trim());
    const etcdDir = join(this.dir, 'etcd');
    mkdirSync(etcdDir, { recursive: true, mode: 0o700 });
    this.others.push(this.spawnLogged('etcd', inNs(this.topology.witnessNs, 'etcd', [
      '--name', 'witness', '--data-dir', etcdDir,
      '--listen-client-urls', `http://${NET.gateway}:2379`, '--advertise-client-urls', `http://${NET.gateway}:2379`,
      '--listen-peer-urls', 'http://127.0.0.1:2380', '--initial-advertise-peer-urls', 'http://127.0.0.1:2380',
      '--initial-cluster', 'witness=http://127.0.0.1:2380', '--initial-cluster-state', 'new',
    ])));
    await this.waitFor('etcd', async () => {
      const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-sf', '-m', '1', `http://${NET.gateway}:2379/health`]), { allowFailure: true });
      return r.exitCode === 0 ? true : undefined;
    }, 30_000);
    for (const n of NET.nodes) this.writeNodeFiles(n.name, n.ip);
    for (const n of NET.nodes) this.startNode(n.name);
  }

  private writeNodeFiles(node: string, ip: string): void {
    const dir = this.nodeDir(node);
    mkdirSync(join(dir, 'run'), { recursive: true });
    for (const d of [dir, join(dir, 'run')]) {
      chmodSync(d, 0o755);
      chownSync(d, this.uid, this.gid);
    }
    // The VIP follows the primary through Patroni's callback, as vip-manager setups do.
    const callback = join(dir, 'vip-callback.sh');
    writeFileSync(callback, `#!/bin/sh
# Patroni calls: <script> <action> <role> <cluster>
case "$2" in
  master|primary) ip addr add ${NET.vip}/${NET.prefix} dev eth0 2>/dev/null; arping -U -c 3 -w 2 -I eth0 ${NET.vip} >/dev/null 2>&1 & ;;
  *) ip addr del ${NET.vip}/${NET.prefix} dev eth0 2>/dev/null ;;
esac
exit 0
`, { mode: 0o755 });
    const t = PATRONI_PROFILES[this.profile];
    const config = {
      scope: 'harness',
      name: node,
      restapi: { listen: `${ip}:8008`, connect_address: `${ip}:8008` },
      etcd3: { hosts: [`${NET.gateway}:2379`] },
      bootstrap: {
        dcs: {
          ...t,
          maximum_lag_on_failover: 1048576,
          synchronous_mode: true,
          postgresql: { use_pg_rewind: true, use_slots: true, parameters: { wal_log_hints: 'on', hot_standby: 'on', max_wal_senders: 10, max_replication_slots: 10, wal_keep_size: '512MB' } },
        },
        initdb: [{ encoding: 'UTF8' }, 'data-checksums'],
      },
      postgresql: {
        listen: '0.0.0.0:5432',
        connect_address: `${ip}:5432`,
        data_dir: join(dir, 'pgdata'),
        bin_dir: PG_BIN,
        pgpass: join(dir, 'pgpass'),
        authentication: { superuser: { username: 'postgres', password: PASSWORDS.superuser }, replication: { username: 'replicator', password: PASSWORDS.replication } },
        parameters: { unix_socket_directories: join(dir, 'run') },
        pg_hba: [
          'local all all trust',
          'host all all 127.0.0.1/32 md5',
          // Patroni reads its own timeline and LSN over a replication connection to itself
          // before it takes over; without this rule a rejoined replica never counts as healthiest.
          'host replication replicator 127.0.0.1/32 md5',
          `host replication replicator ${NET.gateway.replace(/\.\d+$/, '.0')}/${NET.prefix} md5`,
          `host all all ${NET.gateway.replace(/\.\d+$/, '.0')}/${NET.prefix} md5`,
        ],
        callbacks: { on_start: callback, on_stop: callback, on_role_change: callback },
      },
    };
    const file = join(dir, 'patroni.yml');
    writeFileSync(file, stringify(config), { mode: 0o600 });
    chownSync(file, this.uid, this.gid);
  }

  startNode(node: string): void {
    // Patroni runs PostgreSQL, which refuses root; the callback needs CAP_NET_ADMIN for the VIP.
    const plan = inNs(this.topology.nodeNs[node]!, 'setpriv', [
      '--reuid=postgres', '--regid=postgres', '--init-groups', '--inh-caps=+net_admin,+net_raw', '--ambient-caps=+net_admin,+net_raw',
      'patroni', join(this.nodeDir(node), 'patroni.yml'),
    ]);
    this.agents.set(node, this.spawnLogged(`patroni-${node}`, plan));
  }

  /**
   * A leader whose standby streams as `sync` and which Patroni itself counts as its synchronous
   * standby (`sync_standby` in `GET /cluster`, i.e. named in its /sync key). In
   * synchronous_mode only that node may take over; pg_stat_replication alone turns `sync` up
   * to a loop_wait earlier, and a leader lost in that window stays lost ("not the healthiest
   * node"), as it should.
   */
  override async healthyPair(): Promise<string | undefined> {
    const leader = await super.healthyPair();
    if (!leader) return undefined;
    const other = this.other(leader);
    const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-sf', '-m', '2', `http://${NET.nodes.find((n) => n.name === leader)!.ip}:8008/cluster`]), { allowFailure: true });
    if (r.exitCode !== 0) return undefined;
    const members = (JSON.parse(r.stdout) as { members?: { name: string; role: string }[] }).members ?? [];
    return members.some((m) => m.name === other && m.role === 'sync_standby') ? leader : undefined;
  }

  /** The node Patroni's REST API reports as primary and whose PostgreSQL is not in recovery. */
  async leader(): Promise<string | undefined> {
    for (const n of NET.nodes) {
      const r = await runPlan(inNs(this.topology.clientNs, 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-m', '2', `http://${n.ip}:8008/primary`]), { allowFailure: true });
      if (r.stdout.trim() === '200') return n.name;
    }
    return undefined;
  }
}
