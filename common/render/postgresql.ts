import { join } from 'node:path';
import type { ClusterSpec } from '../schema/cluster.ts';
import { peerOf } from '../schema/cluster.ts';
import { intToIp, networkOf } from '../schema/units.ts';

/** The PostgreSQL role used for streaming replication. */
export const REPLICATION_USER = 'replicator';
/** Kine's role and database. */
export const KINE_USER = 'kine';
export const KINE_DATABASE = 'kine';

/** The replication slot a node's standby streams through (slot names allow [a-z0-9_]). */
export function slotNameFor(node: string): string {
  return `geminik8s_${node.replaceAll('-', '_')}`;
}

/**
 * Settings both nodes carry in `conf.d/geminik8s.conf`. Settings that change with the role
 * (synchronous_standby_names, primary_conninfo, primary_slot_name) are not here: the agent
 * manages them in postgresql.auto.conf with ALTER SYSTEM, because they move on failover.
 */
export function postgresqlSettings(spec: ClusterSpec): Record<string, string | number> {
  return {
    listen_addresses: '*',
    port: spec.postgresql.port,
    max_connections: spec.postgresql.maxConnections,
    shared_buffers: spec.postgresql.sharedBuffers,
    password_encryption: 'scram-sha-256',
    wal_level: 'replica',
    // pg_rewind needs hint bits WAL-logged (data checksums are also enabled at initdb).
    wal_log_hints: 'on',
    max_wal_senders: 10,
    max_replication_slots: 10,
    wal_keep_size: '512MB',
    hot_standby: 'on',
    hot_standby_feedback: 'on',
    synchronous_commit: 'on',
    // A walsender sends WAL in messages of up to 128 kB, and the receiver counts only whole
    // messages as heard. At 5 s a link under 26 kB/s could never deliver one: after every
    // reconnect (which restarts at the segment's start) the standby timed out again, for good
    // (200 ± 100 ms with 5 % loss carries about 13 kB/s). Safety never waits on these: commits
    // that wait on a silent standby are degraded by the agent after degradeAfter.
    wal_receiver_timeout: '30s',
    wal_sender_timeout: '30s',
    wal_receiver_status_interval: '1s',
    wal_retrieve_retry_interval: '1s',
    archive_mode: 'off',
    // No logical replication here (Kine and the standby use physical streaming): without workers
    // there is no launcher, whose exit a fast shutdown waited for after every backend had gone
    // (64-177 ms of a switchover's write pause under TCG), and whose start every boot paid.
    max_logical_replication_workers: 0,
    // A standby that was a primary must be able to follow the new timeline after pg_rewind.
    recovery_target_timeline: 'latest',
    log_line_prefix: '%m [%p] %q%u@%d ',
    log_connections: 'on',
    log_disconnections: 'on',
    tcp_keepalives_idle: 5,
    tcp_keepalives_interval: 2,
    tcp_keepalives_count: 3,
    // How long a connection may take to send its startup packet and authenticate. One that
    // arrives during a shutdown and sends nothing holds the postmaster that long (a
    // scratch PostgreSQL 15: 61.6 s at the default 60 s, 6.5 s at 5 s). A writer's connection
    // left half-open when the VIP moved away did that to a fenced old leader in the failover
    // suite: its stop took 62.6 s, and its rejoin waited for it. Kine, the peer and the agent
    // authenticate in well under a second, a loaded TCG guest in a few.
    authentication_timeout: '10s',
  };
}

function confValue(v: string | number): string {
  return typeof v === 'number' ? String(v) : `'${v.replaceAll("'", "''")}'`;
}

/** `postgresql.conf` fragment text, one `name = value` a line, sorted. */
export function postgresqlConf(spec: ClusterSpec): string {
  const lines = Object.entries(postgresqlSettings(spec))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k} = ${confValue(v)}`);
  return `# geminik8s: shared PostgreSQL settings for cluster ${spec.name}.\n# Role-dependent settings live in postgresql.auto.conf, managed by geminik8s-agent.\n${lines.join('\n')}\n`;
}

/** The pg_ident.conf map the local `postgres` rule uses. */
export const PEER_MAP = 'geminik8s';

/**
 * `pg_ident.conf`: who may be `postgres` over the local socket. The agent runs as root and
 * administers its own server there: peer authentication costs no SCRAM exchange (slow under
 * emulation, and the health check connects every second) and needs no password on the host.
 */
export function pgIdentConf(osUser = 'postgres'): string {
  const users = [...new Set(['root', osUser, 'postgres'])];
  return `# geminik8s: operating-system users that may connect as the postgres role over the local socket.\n${users.map((u) => `${PEER_MAP} ${u} postgres`).join('\n')}\n`;
}

/** The files of PostgreSQL's TLS directory: the node's certificate and key (server and client) and the cluster CA. */
export const PG_TLS_FILES = { cert: 'node.crt', key: 'node.key', ca: 'ca.crt' } as const;

/** Where the agent keeps PostgreSQL's copy of the node's TLS files (owned by the PostgreSQL user, 0600). */
export function pgTlsDir(stateDir: string): string {
  return join(stateDir, 'pgtls');
}

/** Server TLS settings (`conf.d/geminik8s-tls.conf`): the node's certificate, clients verified against the cluster CA. */
export function pgTlsConf(dir: string): string {
  const settings: [string, string][] = [
    ['ssl', 'on'],
    ['ssl_cert_file', join(dir, PG_TLS_FILES.cert)],
    ['ssl_key_file', join(dir, PG_TLS_FILES.key)],
    ['ssl_ca_file', join(dir, PG_TLS_FILES.ca)],
    ['ssl_min_protocol_version', 'TLSv1.2'],
  ];
  return `# geminik8s: TLS with the cluster CA (secrets/tls/ from geminik8s init).\n${settings.map(([k, v]) => `${k} = ${confValue(v)}`).join('\n')}\n`;
}

/**
 * libpq connection parameters for a node's own connections to its peer (replication,
 * pg_basebackup, pg_rewind): the peer's certificate must be the cluster CA's and name the
 * address dialled (verify-full), and the node shows its own certificate.
 */
export function libpqTlsParams(dir: string): Record<'sslmode' | 'sslrootcert' | 'sslcert' | 'sslkey', string> {
  return { sslmode: 'verify-full', sslrootcert: join(dir, PG_TLS_FILES.ca), sslcert: join(dir, PG_TLS_FILES.cert), sslkey: join(dir, PG_TLS_FILES.key) };
}

/**
 * `pg_hba.conf`: local administration by peer auth (root and the PostgreSQL user, pg_ident.conf), replication only from the peer node,
 * Kine from the nodes' subnet, everything else rejected. With TLS (the default) every connection
 * from another address must use TLS and show a client certificate from the cluster CA (the
 * peer's for replication, pg_rewind and health checks; a node's for Kine).
 */
export function pgHbaConf(spec: ClusterSpec, node: string): string {
  const peer = peerOf(spec, node);
  const self = spec.nodes.find((n) => n.name === node)!;
  const subnet = `${intToIp(networkOf(self.ip, spec.network.prefix))}/${spec.network.prefix}`;
  const tls = !spec.agent.insecurePlaintext;
  const remote = tls ? 'hostssl' : 'host';
  const peerAuth = tls ? 'scram-sha-256 clientcert=verify-ca' : 'scram-sha-256';
  const rows: [string, string, string, string, string][] = [
    ['local', 'all', 'postgres', '', `peer map=${PEER_MAP}`],
    // The agent's own base backups (geminik8s backup) stream over the local socket.
    ['local', 'replication', 'postgres', '', `peer map=${PEER_MAP}`],
    ['local', 'all', 'all', '', 'scram-sha-256'],
    ['host', 'all', 'postgres', '127.0.0.1/32', 'scram-sha-256'],
    [remote, 'replication', REPLICATION_USER, `${peer.ip}/32`, peerAuth],
    // pg_rewind and the agent's health checks connect to the peer's regular databases.
    [remote, 'postgres', REPLICATION_USER, `${peer.ip}/32`, peerAuth],
    [remote, 'postgres', 'postgres', `${peer.ip}/32`, peerAuth],
    ['host', KINE_DATABASE, KINE_USER, '127.0.0.1/32', 'scram-sha-256'],
    // Kine on either node, through the VIP: with the node's certificate.
    [remote, KINE_DATABASE, KINE_USER, subnet, peerAuth],
    ['host', 'all', 'all', '0.0.0.0/0', 'reject'],
    ['host', 'all', 'all', '::/0', 'reject'],
  ];
  const width = [7, 12, 11, 18];
  const text = rows
    .map((r) => {
      const cols = r[0] === 'local' ? [r[0], r[1], r[2], r[4]] : r;
      if (r[0] === 'local') return `${cols[0]!.padEnd(width[0]!)} ${cols[1]!.padEnd(width[1]!)} ${cols[2]!.padEnd(width[2]! + width[3]! + 1)} ${cols[3]}`;
      return `${r[0].padEnd(width[0]!)} ${r[1].padEnd(width[1]!)} ${r[2].padEnd(width[2]!)} ${r[3].padEnd(width[3]!)} ${r[4]}`;
    })
    .join('\n');
  return `# geminik8s: client authentication for ${node} (peer ${peer.name} ${peer.ip}).\n# TYPE   DATABASE     USER        ADDRESS            METHOD\n${text}\n`;
}
