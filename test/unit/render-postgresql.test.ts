import test from 'ava';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync, writeFileSync, appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { pgBinDir } from '#common/render/paths.ts';
import { pgHbaConf, pgIdentConf, pgTlsConf, postgresqlConf, postgresqlSettings, KINE_DATABASE, KINE_USER, PG_TLS_FILES } from '#common/render/postgresql.ts';
import { kineEndpoint, kinePassword, kinePgpass } from '#common/render/k3s.ts';
import type { Cluster, ClusterSpec } from '#common/schema/cluster.ts';
import { issueCa, issueLeaf, type TlsMaterial } from '#common/tls.ts';
import { nodeSubject } from '#builder/init/tls.ts';
import { FAKE_SECRETS, fakeCa, fakeTls, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';

// The rendered postgresql.conf fragment and pg_hba.conf, loaded by a real PostgreSQL server
// (the one installed on the test host): every setting accepted, every hba line parsed.

const major = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').map(Number).find((m) => existsSync(`${pgBinDir(m)}/postgres`)) : undefined;
const isRoot = process.getuid?.() === 0;

/** PostgreSQL refuses to run as root: drop to the postgres OS user when we are root. */
function asPg(bin: string, args: string[]): CommandPlan {
  const cmd = join(pgBinDir(major!), bin);
  return isRoot ? { cmd: 'runuser', args: ['-u', 'postgres', '--', cmd, ...args] } : { cmd, args };
}

function pgIds(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('no postgres OS user on this host (install postgresql-NN)');
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** What the agent does with the node's TLS material (agent/src/postgres.ts writePgTls): files the server's user owns, 0600, and the TLS settings. */
function writeTls(data: string, dir: string, material: TlsMaterial): void {
  mkdirSync(dir, { mode: 0o700 });
  const files: [string, string][] = [[PG_TLS_FILES.cert, material.cert], [PG_TLS_FILES.key, material.key], [PG_TLS_FILES.ca, material.ca]];
  for (const [name, text] of files) writeFileSync(join(dir, name), text, { mode: 0o600 });
  writeFileSync(join(data, 'conf.d', 'geminik8s-tls.conf'), pgTlsConf(dir));
  if (isRoot) {
    const { uid, gid } = pgIds();
    for (const p of [dir, ...files.map(([n]) => join(dir, n)), join(data, 'conf.d', 'geminik8s-tls.conf')]) chownSync(p, uid, gid);
  }
}

(major ? test.serial : test.serial.skip)('a real PostgreSQL accepts the rendered settings and pg_hba.conf', async (t) => {
  const cluster = await loadFixtureCluster();
  const dir = tempDir();
  const data = join(dir, 'data');
  const socket = join(dir, 'sock');
  mkdirSync(socket);
  if (isRoot) {
    const { uid, gid } = pgIds();
    chownSync(dir, uid, gid);
    chownSync(socket, uid, gid);
  }
  await runPlan(asPg('initdb', ['-D', data, '-U', 'postgres', '--auth-local=peer', '--auth-host=scram-sha-256', '--no-sync']));
  // What the agent does with these files (agent/src/postgres.ts writeNodeConfig).
  mkdirSync(join(data, 'conf.d'));
  writeFileSync(join(data, 'conf.d', 'geminik8s.conf'), postgresqlConf(cluster));
  appendFileSync(join(data, 'postgresql.conf'), "\ninclude_dir = 'conf.d'\n");
  writeFileSync(join(data, 'pg_hba.conf'), pgHbaConf(cluster, 'node1'));
  writeFileSync(join(data, 'pg_ident.conf'), pgIdentConf());
  if (isRoot) {
    const { uid, gid } = pgIds();
    for (const p of [join(data, 'conf.d'), join(data, 'conf.d', 'geminik8s.conf'), join(data, 'pg_hba.conf'), join(data, 'pg_ident.conf')]) chownSync(p, uid, gid);
  }
  // hostssl rows are an error unless the server has TLS: the node's certificate from the fixture CA.
  writeTls(data, join(dir, 'pgtls'), fakeTls('node1'));

  // postgres -C parses every configuration file and fails on any invalid value.
  const parsed = await runPlan(asPg('postgres', ['-D', data, '-C', 'wal_level']), { allowFailure: true });
  t.is(parsed.exitCode, 0, parsed.stderr);
  t.is(parsed.stdout.trim(), 'replica');

  // pg_hba.conf is parsed when the server starts; pg_hba_file_rules reports each line's error.
  // Only a private socket: no TCP port, nothing reachable from elsewhere.
  const port = String(20000 + Math.floor(Math.random() * 20000));
  const log = join(dir, 'pg.log');
  const start = await runPlan(asPg('pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', '-o', `-c listen_addresses= -c port=${port} -k ${socket}`, 'start']), { allowFailure: true });
  t.is(start.exitCode, 0, existsSync(log) ? readFileSync(log, 'utf8') : start.stderr);
  try {
    const q = async (sql: string) => (await runPlan(asPg('psql', ['-h', socket, '-p', port, '-U', 'postgres', '-d', 'postgres', '-XAtc', sql]))).stdout.replace(/\n+$/, '');
    t.is(await q('select count(*) from pg_hba_file_rules where error is not null'), '0');
    t.is(await q('select count(*) from pg_ident_file_mappings where error is not null'), '0');
    if (isRoot) {
      // The agent (root) administers the server as postgres over the socket, with no password;
      // any other operating-system user is refused.
      const agentSide = await runPlan({ cmd: join(pgBinDir(major!), 'psql'), args: ['-h', socket, '-p', port, '-U', 'postgres', '-d', 'postgres', '-XAtwc', 'select current_user'] }, { allowFailure: true });
      t.is(agentSide.exitCode, 0, agentSide.stderr);
      t.is(agentSide.stdout.trim(), 'postgres');
      chmodSync(dir, 0o711);
      chmodSync(socket, 0o777);
      const other = await runPlan({ cmd: 'runuser', args: ['-u', 'nobody', '--', join(pgBinDir(major!), 'psql'), '-h', socket, '-p', port, '-U', 'postgres', '-d', 'postgres', '-XAtwc', 'select 1'] }, { allowFailure: true });
      t.not(other.exitCode, 0);
      t.regex(other.stderr, /Peer authentication failed for user "postgres"/);
    }
    t.is(await q("select coalesce(string_agg(name || ': ' || error, '; '), '') from pg_file_settings where error is not null and sourcefile like '%geminik8s.conf' and name not in ('listen_addresses', 'port')"), '');
    const rules = await q("select type || ' ' || array_to_string(database, ',') || ' ' || array_to_string(user_name, ',') || ' ' || coalesce(address, '') || ' ' || auth_method || coalesce(' ' || array_to_string(options, ','), '') from pg_hba_file_rules order by line_number");
    t.deepEqual(rules.split('\n'), [
      'local all postgres  peer map=geminik8s',
      'local replication postgres  peer map=geminik8s',
      'local all all  scram-sha-256',
      'host all postgres 127.0.0.1 scram-sha-256',
      'hostssl replication replicator 192.168.10.12 scram-sha-256 clientcert=verify-ca',
      'hostssl postgres replicator 192.168.10.12 scram-sha-256 clientcert=verify-ca',
      'hostssl postgres postgres 192.168.10.12 scram-sha-256 clientcert=verify-ca',
      'host kine kine 127.0.0.1 scram-sha-256',
      'hostssl kine kine 192.168.10.0 scram-sha-256 clientcert=verify-ca',
      'host all all 0.0.0.0 reject',
      'host all all :: reject',
    ]);
    // Every rendered setting is in effect, as written (listen_addresses and port are overridden
    // above to keep this server private).
    for (const [name, value] of Object.entries(postgresqlSettings(cluster))) {
      if (name === 'listen_addresses' || name === 'port') continue;
      // TCP keepalives read 0 on this Unix-socket session; check they were applied from the file.
      const sql = name.startsWith('tcp_keepalives_')
        ? `select setting from pg_file_settings where name = '${name}' and applied and sourcefile like '%geminik8s.conf'`
        : `show ${name}`;
      t.is(await q(sql), String(value), name);
    }
  } finally {
    await runPlan(asPg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']), { allowFailure: true });
  }
});

(major ? test.serial : test.serial.skip)('the check is able to fail: PostgreSQL rejects an invalid setting value', async (t) => {
  const dir = tempDir();
  const data = join(dir, 'data');
  if (isRoot) {
    const { uid, gid } = pgIds();
    chownSync(dir, uid, gid);
  }
  await runPlan(asPg('initdb', ['-D', data, '-U', 'postgres', '--auth-local=peer', '--no-sync']));
  appendFileSync(join(data, 'postgresql.conf'), "\nwal_level = 'bogus'\n");
  const r = await runPlan(asPg('postgres', ['-D', data, '-C', 'wal_level']), { allowFailure: true });
  t.not(r.exitCode, 0);
  t.regex(r.stderr, /wal_level/);
});

(major ? test.serial : test.serial.skip)("Kine's DSN, password file and pg_hba.conf let Kine in with the derived password, through the VIP address", async (t) => {
  // The same cluster moved onto loopback: the "VIP" is 127.0.0.50, which the server listens on.
  const fixture = await loadFixtureCluster();
  const port = 20000 + Math.floor(Math.random() * 20000);
  const spec: ClusterSpec = {
    ...fixture,
    network: { ...fixture.network, gateway: '127.0.0.1', dns: [], vip: '127.0.0.50' },
    nodes: [{ name: 'node1', ip: '127.0.0.11' }, { name: 'node2', ip: '127.0.0.12' }],
    postgresql: { ...fixture.postgresql, port },
  };
  const dir = tempDir();
  const data = join(dir, 'data');
  const socket = join(dir, 'sock');
  mkdirSync(socket);
  if (isRoot) {
    const { uid, gid } = pgIds();
    chownSync(dir, uid, gid);
    chownSync(socket, uid, gid);
  }
  await runPlan(asPg('initdb', ['-D', data, '-U', 'postgres', '--auth-local=peer', '--auth-host=scram-sha-256', '--no-sync']));
  mkdirSync(join(data, 'conf.d'));
  writeFileSync(join(data, 'conf.d', 'geminik8s.conf'), postgresqlConf(spec));
  appendFileSync(join(data, 'postgresql.conf'), "\ninclude_dir = 'conf.d'\n");
  writeFileSync(join(data, 'pg_hba.conf'), pgHbaConf(spec, 'node1'));
  writeFileSync(join(data, 'pg_ident.conf'), pgIdentConf());
  if (isRoot) {
    const { uid, gid } = pgIds();
    for (const p of [join(data, 'conf.d'), join(data, 'conf.d', 'geminik8s.conf'), join(data, 'pg_hba.conf'), join(data, 'pg_ident.conf')]) chownSync(p, uid, gid);
  }
  // node1's certificate as init issues it for this cluster: it covers the VIP, which Kine dials.
  const ca = fakeCa();
  const node1 = await issueLeaf(ca, nodeSubject({ ...spec, name: 'site-a' } as Cluster, 'node1'));
  writeTls(data, join(dir, 'pgtls'), { ca: ca.cert, ...node1 });
  const log = join(dir, 'pg.log');
  const start = await runPlan(asPg('pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', '-o', `-c listen_addresses=127.0.0.50 -k ${socket}`, 'start']), { allowFailure: true });
  t.is(start.exitCode, 0, existsSync(log) ? readFileSync(log, 'utf8') : start.stderr);
  try {
    const admin = (sql: string) => runPlan(asPg('psql', ['-h', socket, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-XAtc', sql]));
    // What the bootstrap leader does for Kine (agent/src/postgres.ts), with the derived password.
    await admin(`create role ${KINE_USER} login password '${kinePassword(FAKE_SECRETS.postgresPassword)}'`);
    await admin(`create database ${KINE_DATABASE} owner ${KINE_USER}`);
    const pgpass = join(dir, 'kine.pgpass');
    writeFileSync(pgpass, kinePgpass(spec, kinePassword(FAKE_SECRETS.postgresPassword)), { mode: 0o600 });
    const rendered = kineEndpoint(spec);
    t.is(rendered, `postgres://kine@127.0.0.50:${port}/kine?sslmode=verify-full&sslrootcert=/var/lib/geminik8s/pgtls/ca.crt&sslcert=/var/lib/geminik8s/pgtls/node.crt&sslkey=/var/lib/geminik8s/pgtls/node.key`);
    // On a node the agent keeps these files there; here they are the test's copies (the
    // client runs as this user, and libpq wants the key to be its own, 0600).
    const caFile = join(dir, 'kine-ca.crt');
    writeFileSync(caFile, ca.cert);
    writeFileSync(join(dir, 'kine.crt'), node1.cert);
    writeFileSync(join(dir, 'kine.key'), node1.key, { mode: 0o600 });
    const dsn = rendered.replace('/var/lib/geminik8s/pgtls/ca.crt', caFile).replace('/var/lib/geminik8s/pgtls/node.crt', join(dir, 'kine.crt')).replace('/var/lib/geminik8s/pgtls/node.key', join(dir, 'kine.key'));
    const psql = join(pgBinDir(major!), 'psql');
    const ok = await runPlan({ cmd: psql, args: [dsn, '-XAtc', 'select current_user, inet_server_addr()'], env: { PGPASSFILE: pgpass, PGCONNECT_TIMEOUT: '5' } }, { allowFailure: true });
    t.is(ok.exitCode, 0, ok.stderr);
    t.is(ok.stdout.trim(), 'kine|127.0.0.50');
    // verify-full: a CA that did not issue the server's certificate gets no connection.
    const stranger = join(dir, 'stranger-ca.crt');
    writeFileSync(stranger, (await issueCa('site-a')).cert);
    const unverified = await runPlan({ cmd: psql, args: [dsn.replace(caFile, stranger), '-XAtc', 'select 1'], env: { PGPASSFILE: pgpass, PGCONNECT_TIMEOUT: '5' } }, { allowFailure: true });
    t.not(unverified.exitCode, 0);
    t.regex(unverified.stderr, /certificate verify failed/);
    // Without the password file Kine gets nowhere: the DSN itself carries no secret.
    const denied = await runPlan({ cmd: psql, args: [dsn, '-XAtwc', 'select 1'], env: { PGPASSFILE: join(dir, 'none'), PGCONNECT_TIMEOUT: '5' } }, { allowFailure: true });
    t.not(denied.exitCode, 0);
    t.regex(denied.stderr, /password/);
    // Kine may not reach other databases, and nobody else may use Kine's path.
    const other = await runPlan({ cmd: psql, args: [dsn.replace('/kine?', '/postgres?'), '-XAtwc', 'select 1'], env: { PGPASSFILE: pgpass, PGCONNECT_TIMEOUT: '5' } }, { allowFailure: true });
    t.regex(other.stderr, /pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "kine", database "postgres"/);
  } finally {
    await runPlan(asPg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']), { allowFailure: true });
  }
});
