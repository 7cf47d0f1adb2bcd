import test from 'ava';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan, spawnPlan } from '#common/exec.ts';
import { HarnessCluster } from '../../harness/cluster.ts';
import { blockPeer, flushRules, inNs, ipOf } from '#lab/netns.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { resultLine, runScenario, SCENARIOS, type ScenarioResult } from '../../harness/scenarios.ts';

// Two real PostgreSQL nodes with the real agent, in network namespaces: needs root.
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;
if (!canRun) console.warn('failover scenarios skipped: they need root for network namespaces (CI runs as root)');

// GEMINIK8S_SCENARIOS=regex runs only the matching scenarios (for working on one; some expect their predecessor).
const only = process.env.GEMINIK8S_SCENARIOS ? new RegExp(process.env.GEMINIK8S_SCENARIOS) : undefined;
const selected = SCENARIOS.filter((s) => !only || only.test(s.name));

let cluster: HarnessCluster;
const results: ScenarioResult[] = [];
let started = 0;
let clusterDir = '';
/** Whether the hooks and every test passed: only then does the 2 GB cluster directory go. */
let allPassed = false;
let deploy: { exited: Promise<number | string>; lines: string[]; errors: string[] } | undefined;

test.before(async (t) => {
  if (!canRun) return;
  t.timeout(300_000);
  started = Date.now();
  clusterDir = mkdtempSync(join(tmpdir(), 'gk-failover-'));
  cluster = new HarnessCluster(clusterDir);
  await cluster.start();
  // An operator following the fresh pair: started as the agents start, before either has bootstrapped.
  const lines: string[] = [];
  const errors: string[] = [];
  const p = spawnPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'deploy', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--watch', '--timeout', '10m']), { stdout: (l) => lines.push(l), stderr: (l) => errors.push(l) });
  deploy = { exited: p.exited, lines, errors };
  await cluster.waitFor('leader + synchronous standby after bootstrap', () => cluster.healthyPair(), 120_000);
  cluster.startTraffic(2400);
  await cluster.waitFor('first writes', async () => (cluster.acks.length > 10 ? true : undefined), 30_000);
  allPassed = true;
});

test.afterEach.always((t) => {
  if (!t.passed) allPassed = false;
});

test.after.always(async (t) => {
  if (!canRun || !cluster) return;
  t.timeout(120_000);
  await cluster.stop();
  for (const r of results) console.log(resultLine(r));
  for (const x of cluster.unexpectedExits) console.log(`agent of ${x.node} exited by itself at ${new Date(x.at).toISOString()} (${x.code}); restarted as systemd would`);
  console.log(`${results.length} scenarios in ${((Date.now() - started) / 1000).toFixed(0)} s; harness log: ${cluster.logFile}`);
  // Each run's nodes, WAL and logs take about 2 GB: kept after a failure (or with
  // GEMINIK8S_KEEP_TEMP=1) for a look, removed otherwise.
  if (allPassed && process.env.GEMINIK8S_KEEP_TEMP !== '1') {
    rmSync(clusterDir, { recursive: true, force: true, maxRetries: 3 });
    console.log(`removed ${clusterDir} (every test passed; GEMINIK8S_KEEP_TEMP=1 keeps it)`);
  } else {
    console.log(`kept ${clusterDir} for a look`);
  }
});

serial('geminik8s deploy --watch follows the fresh pair from its first look to up: one line per step change, in the order the pair comes up, then exit 0', async (t) => {
  t.timeout(660_000);
  const code = await deploy!.exited;
  t.log(deploy!.lines.join('\n'));
  t.is(code, 0, deploy!.errors.join('\n'));
  const at = (state: string, title: string) => deploy!.lines.findIndex((l) => new RegExp(`^\\[\\+\\d+\\.\\ds\\] ${state} +${title}`).test(l));
  // The first look comes while the pair bootstraps (the witness records a promotable standby
  // only seconds after initdb): some step is seen waiting before it is done.
  t.true(deploy!.lines.some((l) => / waiting /.test(l)), 'a step was seen waiting first');
  const order = ['PostgreSQL initialised', 'standby cloned and streaming', 'replication synchronous'].map((x) => at('done', x));
  t.true(order.every((i) => i >= 0), `every step done: ${order}`);
  t.true(order[0]! < order[1]! && order[1]! <= order[2]!, 'primary, then the clone, then sync');
  for (const title of ['node1: first boot done, agent up', 'node2: first boot done, agent up', 'VIP 10\\.77\\.0\\.50 on the leader', 'witness: lease held, standby promotable']) t.true(at('done', title) >= 0, title);
  t.true(at('done', 'PostgreSQL initialised') < at('done', 'witness: lease held'), 'the witness records a leader only once it writes');
  t.true(at('skipped', 'K3s Ready: the image has no Kubernetes layer') >= 0);
  t.regex(deploy!.lines.join('\n'), /^cluster harness is up in \d+\.\d s$/m);
  t.regex(deploy!.lines.join('\n'), /^cluster harness: HEALTHY \(leader node1\)$/m);
});

serial('certificate rotation: with one node on a reissued certificate and the other on its old one, the pair stays healthy and replicates over TLS', async (t) => {
  t.timeout(300_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const follower = cluster.other(leader);
  const before = await cluster.servedCertificate(follower);
  t.truthy(before, 'the follower serves a certificate the CA verifies');
  await cluster.rotateCertsOn(follower);
  const after = await cluster.waitFor('the follower on its new certificate', async () => {
    const c = await cluster.servedCertificate(follower);
    return c && c !== before ? c : undefined;
  }, 120_000);
  t.not(after, before);
  await cluster.waitFor('a healthy pair again', () => cluster.healthyPair(), 180_000);
  t.regex(await cluster.sql(leader, 'SELECT s.ssl, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)', 'postgres') ?? '', new RegExp(`^t\\|/O=harness/CN=${follower}$`));
});

// Runs before the scenarios (serial tests run in file order): the pair is healthy then.
serial('every link between the parties is TLS from the cluster CA: replication with the standby\'s certificate, Kine-style writes through the VIP, the agent API; plaintext is refused', async (t) => {
  t.timeout(180_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const follower = cluster.other(leader);
  const replication = await cluster.sql(leader, 'SELECT s.ssl, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)', 'postgres');
  t.regex(replication ?? '', new RegExp(`^t\\|/O=harness/CN=${follower}$`), 'the standby streams over TLS with its own certificate');
  const writer = await cluster.sql(leader, "SELECT DISTINCT s.ssl, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'harness-writer'", 'postgres');
  t.is(writer, 't|/O=harness/CN=node1', 'the writer (as Kine on node1) reaches the primary over TLS with the node\'s certificate');
  const ip = cluster.config.nodes.find((n) => n.name === leader)!.ip;
  const plain = await runPlan(inNs(cluster.topology.clientNs, 'psql', [`host=${ip} user=kine dbname=kine sslmode=disable connect_timeout=5`, '-XAtqc', 'select 1'], { PGPASSWORD: cluster.writerLogin().password }), { allowFailure: true });
  t.not(plain.exitCode, 0);
  t.regex(plain.stderr, /pg_hba\.conf rejects connection .*user "kine", database "kine", no encryption/);
  const http = await runPlan(inNs(cluster.topology.clientNs, 'curl', ['-s', '-m', '5', '-o', '/dev/null', '-w', '%{http_code}', `http://${ip}:7443/healthz`]), { allowFailure: true });
  t.not(http.stdout, '200', 'the agent API does not answer plain HTTP');
  const https = await runPlan(inNs(cluster.topology.clientNs, 'curl', ['-s', '-m', '5', '--cacert', cluster.caFile, `https://${ip}:7443/healthz`]), { allowFailure: true });
  t.is(https.stdout, '{"ok":true}');
});

// Headless Chromium (Debian's chromium) is installed by scripts/install-host-deps.sh.
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
(CHROMIUM && canRun ? test.serial : test.serial.skip)('the status page in headless Chromium, from the client namespace: both nodes, roles, replication, the VIP holder, the witness, slots and transitions; a screenshot for docs/', async (t) => {
  t.timeout(300_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const follower = cluster.other(leader);
  const ip = cluster.config.nodes.find((n) => n.name === follower)!.ip;
  // Trust exactly the nodes' keys (Chromium takes no CA file; this pins instead of ignoring errors).
  const spki = await Promise.all(['node1', 'node2'].map(async (n) => (await runPlan({ cmd: 'sh', args: ['-c', `openssl x509 -in ${join(cluster.configDir, 'secrets', 'tls', `${n}.crt`)} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`] })).stdout.trim()));
  const dir = mkdtempSync(join(tmpdir(), 'gk-chromium-'));
  const url = `https://operator:${encodeURIComponent(cluster.secrets.readToken)}@${ip}:7443/ui`;
  const chromium = (...extra: string[]) => runPlan(inNs(cluster.topology.clientNs, CHROMIUM!, [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', `--user-data-dir=${join(dir, 'profile')}`,
    `--ignore-certificate-errors-spki-list=${spki.join(',')}`, '--virtual-time-budget=10000', '--window-size=1280,860', ...extra, url,
  ]), { allowFailure: true, timeoutMs: 180_000 });
  const dom = await chromium('--dump-dom');
  t.is(dom.exitCode, 0, dom.stderr.slice(-2000));
  const text = dom.stdout.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ');
  t.regex(text, /HEALTHY/);
  t.regex(dom.stdout, new RegExp(`data-node="${leader}"[\\s\\S]*role-leader|role-leader[\\s\\S]*data-node="${leader}"`));
  t.regex(text, new RegExp(`${leader} \\(${cluster.config.nodes.find((n) => n.name === leader)!.ip}\\) role leader`));
  t.regex(text, new RegExp(`${follower} \\(${ip}\\) role follower`));
  t.regex(text, /replication streaming, sync/);
  t.regex(text, /VIP held here/);
  t.regex(text, new RegExp(`lease holder ${leader} generation \\d+ promotable ${follower}`));
  t.regex(text, /slots /);
  t.regex(text, /Recent transitions .*(leader|follower)/);
  for (const secret of Object.values(cluster.secrets)) t.false(dom.stdout.includes(secret), 'no secret in the page');
  const shot = join(dir, 'status-page.png');
  const s = await chromium(`--screenshot=${shot}`);
  t.is(s.exitCode, 0, s.stderr.slice(-2000));
  t.true(statSync(shot).size > 10_000);
  if (process.env.UPDATE_SCREENSHOTS) copyFileSync(shot, join(ROOT, 'docs', 'img', 'status-page.png'));
  t.log(`screenshot: ${shot}`);
});

serial('geminik8s check: the bless health gate on both nodes now, item by item; a failing checks.d script on the follower makes it degraded (exit 8) until it passes again', async (t) => {
  t.timeout(300_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const follower = cluster.other(leader);
  const check = () => runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'check', '--cluster', join(cluster.configDir, 'cluster.yaml')]), { allowFailure: true, timeoutMs: 120_000 });
  const ok = await cluster.waitFor('check passes', async () => {
    const r = await check();
    return r.exitCode === 0 ? r : undefined;
  }, 120_000);
  t.log(ok.stdout);
  t.regex(ok.stdout, new RegExp(`^${leader} \\(leader\\): PASS$`, 'm'));
  t.regex(ok.stdout, /^ {2}\[ ok \] pair: primary accepting writes, standby streaming synchronously$/m);
  t.regex(ok.stdout, /^ {2}\[ ok \] pair: standby streaming synchronously from the leader$/m);
  t.regex(ok.stdout, new RegExp(`\\[ ok \\] witness: this node holds the lease .*promotable ${follower}`));
  t.regex(ok.stdout, /^cluster harness: HEALTHY$/m);
  const dir = join(cluster.nodeDir(follower), 'checks.d');
  mkdirSync(dir, { recursive: true });
  const script = join(dir, 'disk-space');
  writeFileSync(script, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  try {
    const bad = await cluster.waitFor('check sees the failing script', async () => {
      const r = await check();
      return r.exitCode === 8 ? r : undefined;
    }, 60_000);
    t.regex(bad.stdout, new RegExp(`^${follower} \\(follower\\): FAIL$`, 'm'));
    t.regex(bad.stdout, /^ {2}\[FAIL\] check:disk-space: failed \(exit 1\)$/m);
    t.regex(bad.stdout, /^cluster harness: DEGRADED$/m);
    t.regex(bad.stderr, new RegExp(`${follower} check:disk-space`));
  } finally {
    rmSync(script, { force: true });
  }
  await cluster.waitFor('check passes again', async () => ((await check()).exitCode === 0 ? true : undefined), 60_000);
});

serial('geminik8s preflight on the running pair, from the client namespace: each agent\'s host checks and clock over /v1/preflight, the VIP held by the leader (by its MAC), exit 0', async (t) => {
  t.timeout(300_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const r = await runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'preflight', '--cluster', join(cluster.configDir, 'cluster.yaml')]), { allowFailure: true, timeoutMs: 120_000 });
  t.log(r.stdout);
  t.is(r.exitCode, 0, r.stdout + r.stderr);
  for (const n of ['node1', 'node2']) {
    t.regex(r.stdout, new RegExp(`^\\[PASS\\] ${n} agent: answers at `, 'm'));
    t.regex(r.stdout, new RegExp(`^\\[PASS\\] ${n} link: eth0: operstate up, carrier on`, 'm'));
    t.regex(r.stdout, new RegExp(`^\\[PASS\\] ${n} address: `, 'm'));
    // One host clock: never off; a slow round trip on a loaded machine may only make it unsure (WARN).
    t.regex(r.stdout, new RegExp(`^\\[(PASS|WARN)\\] ${n} clock: [+-]\\d+ ms`, 'm'));
  }
  t.regex(r.stdout, /^\[(PASS|WARN)\] node1-node2 clocks: /m);
  t.regex(r.stdout, new RegExp(`^\\[PASS\\] vip: 10\\.77\\.0\\.50 is held by ${leader} \\([0-9a-f:]{17}\\): the cluster already runs$`, 'm'));
  t.regex(r.stdout, /^\[PASS\] witness: .* lease holder /m);
});

serial('geminik8s status and failover on the running pair, from the client namespace: table, json, exit codes, a refused, a dry and a real switchover', async (t) => {
  t.timeout(300_000);
  const run = (...args: string[]) =>
    runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'status', '--cluster', join(cluster.configDir, 'cluster.yaml'), ...args]), { allowFailure: true, timeoutMs: 120_000 });
  await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const healthy = await run('--output', 'json');
  t.is(healthy.exitCode, 0, healthy.stderr);
  const s = JSON.parse(healthy.stdout) as { health: string; leader: string; nodes: { name: string; role: string; pg: { role: string; syncState: string | null } }[]; witness: { holder: string; promotable: string } };
  t.is(s.health, 'healthy');
  const leader = s.nodes.find((n) => n.role === 'leader')!;
  const follower = s.nodes.find((n) => n.role === 'follower')!;
  t.is(s.leader, leader.name);
  t.like(leader.pg, { role: 'primary', syncState: 'sync' });
  t.like(s.witness, { holder: leader.name, promotable: follower.name });
  const table = await run();
  t.log(table.stdout);
  t.is(table.exitCode, 0);
  t.regex(table.stdout, new RegExp(`^${leader.name}\\s+leader\\s+\\d+\\s+primary\\s+\\d+\\s+\\S+\\s+read-write\\s+sync`, 'm'));
  t.regex(table.stdout, /HEALTHY/);
  for (const secret of Object.values(cluster.secrets)) t.false(`${table.stdout}${table.stderr}`.includes(secret));
  // geminik8s failover: refused to the leader itself, a dry run changes nothing, then the real one.
  const cmd = (...args: string[]) =>
    runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'failover', '--cluster', join(cluster.configDir, 'cluster.yaml'), ...args]), { allowFailure: true, timeoutMs: 300_000 });
  const self = await cmd('--to', leader.name);
  t.is(self.exitCode, 5, self.stderr);
  t.regex(self.stderr, /already the leader/);
  const dry = await cmd('--to', follower.name, '--dry-run');
  t.is(dry.exitCode, 0, dry.stderr);
  t.regex(dry.stdout, new RegExp(`switchover ${leader.name} -> ${follower.name}`));
  t.is(await cluster.leader(), leader.name, 'a dry run changes nothing');
  const real = await cmd('--to', follower.name, '--wait', '--timeout', '2m');
  t.log(real.stdout);
  t.is(real.exitCode, 0, real.stderr);
  t.regex(real.stdout, new RegExp(`HEALTHY \\(leader ${follower.name}\\)`));
  t.deepEqual(await cluster.missingAcks(follower.name), [], 'every acknowledged write is on the new leader');
  // One node's agent gone (the old leader, now the follower): degraded (exit 8), and the table
  // says which node does not answer.
  await cluster.waitFor('a healthy pair after the switchover', () => cluster.healthyPair(), 120_000);
  await cluster.crashAgent(leader.name);
  try {
    const degraded = await run();
    t.is(degraded.exitCode, 8, degraded.stdout);
    t.regex(degraded.stdout, new RegExp(`^${leader.name}\\s+unreachable`, 'm'));
    t.regex(degraded.stderr, /is degraded/);
  } finally {
    cluster.startAgent(leader.name);
  }
  await cluster.waitFor('a healthy pair again', () => cluster.healthyPair(), 120_000);
});

serial('geminik8s backup on the running pair, from the client namespace: encrypted and verified with pg_verifybackup, refused on the follower, retention; a wrong key, a flipped byte and a truncated file are refused', async (t) => {
  t.timeout(600_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 120_000);
  const follower = cluster.other(leader);
  const dir = tempDir('gk-backups-');
  const cli = (...args: string[]) => runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), ...args]), { allowFailure: true, timeoutMs: 600_000 });
  const key = join(dir, 'backup.key');
  writeFileSync(key, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const acked = cluster.acks.length;
  const enc = await cli('backup', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--output', join(dir, 'one.gkbackup'), '--encryption-key', key, '--verify');
  t.log(enc.stdout);
  t.is(enc.exitCode, 0, enc.stderr);
  t.regex(enc.stdout, new RegExp(`one\\.gkbackup: [\\d.]+ MB from ${leader} .* MB/s, AES-256-GCM`));
  t.regex(enc.stdout, /verified: \d+ files, [\d.]+ MB match the manifest; \S*pg_verifybackup passed/);
  const file = join(dir, 'one.gkbackup');
  t.is(statSync(file).mode & 0o777, 0o600);
  const bytes = readFileSync(file);
  for (const secret of Object.values(cluster.secrets)) t.false(bytes.includes(Buffer.from(secret)), 'no secret in clear in an encrypted backup');
  t.true(acked > 0);
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.')), [], 'no partial or scratch file left');

  // The follower's agent refuses: a backup is of the leader's primary.
  const ip = cluster.config.nodes.find((n) => n.name === follower)!.ip;
  const refused = await runPlan(inNs(cluster.topology.clientNs, 'curl', ['-s', '-m', '20', '--cacert', cluster.caFile, '-X', 'POST', '-H', `Authorization: Bearer ${cluster.secrets.adminToken}`, `https://${ip}:7443/v1/backup`]), { allowFailure: true });
  t.regex(refused.stdout, /not the leader: back up from the leader's primary/);

  // Damaged copies, each refused with exit 6 and its reason; the right key passes.
  const verify = (f: string, k = key) => cli('check-backup', f, '--encryption-key', k);
  t.is((await verify(file)).exitCode, 0);
  const other = join(dir, 'other.key');
  writeFileSync(other, randomBytes(32).toString('hex'), { mode: 0o600 });
  const wrong = await verify(file, other);
  t.is(wrong.exitCode, 6, wrong.stderr);
  t.regex(wrong.stderr, /wrong --encryption-key/);
  const flipped = Buffer.from(bytes);
  flipped[Math.floor(flipped.length / 2)]! ^= 0x01;
  writeFileSync(join(dir, 'flipped.bin'), flipped, { mode: 0o600 });
  const f = await verify(join(dir, 'flipped.bin'));
  t.is(f.exitCode, 6, f.stderr);
  t.regex(f.stderr, /does not authenticate: the file is damaged or was altered/);
  writeFileSync(join(dir, 'truncated.bin'), bytes.subarray(0, bytes.length - 1000), { mode: 0o600 });
  const tr = await verify(join(dir, 'truncated.bin'));
  t.is(tr.exitCode, 6, tr.stderr);
  t.regex(tr.stderr, /truncated/);
  const nokey = await cli('check-backup', file);
  t.is(nokey.exitCode, 2);
  t.regex(nokey.stderr, /encrypted \(key id [0-9a-f]{16}\): give its key with --encryption-key/);
  rmSync(join(dir, 'flipped.bin'));
  rmSync(join(dir, 'truncated.bin'));

  // Retention: two more (unencrypted) backups keeping 2; the oldest goes, other files stay.
  writeFileSync(join(dir, 'notes.txt'), 'not a backup\n');
  for (const name of ['two.gkbackup', 'three.gkbackup']) {
    const r = await cli('backup', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--output', join(dir, name), '--retention', '2');
    t.is(r.exitCode, 0, r.stderr);
  }
  t.deepEqual(readdirSync(dir).sort(), ['backup.key', 'notes.txt', 'other.key', 'three.gkbackup', 'two.gkbackup']);
  const again = await cli('backup', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--output', join(dir, 'two.gkbackup'));
  t.is(again.exitCode, 5, 'an existing file is not replaced without --force');
  const plain = await cli('check-backup', join(dir, 'three.gkbackup'));
  t.is(plain.exitCode, 0, plain.stderr);
  await cluster.waitFor('a healthy pair after the backups', () => cluster.healthyPair(), 120_000);
});

for (const scenario of selected) {
  serial(`failover: ${scenario.name}`, async (t) => {
    t.timeout(600_000);
    const r = await runScenario(cluster, scenario);
    results.push(r);
    t.log(resultLine(r));
    t.deepEqual(r.writesLost, [], 'every acknowledged write is on the current primary');
    t.is(r.dualPrimarySamples, 0, 'two writable primaries never coexisted');
    t.is(r.dualOverlapMs, 0, 'the writable periods of the two nodes never overlapped');
    t.deepEqual(r.writableAtEnd, [r.leaderAfter], 'exactly one writable primary at the end: the leader');
    if (scenario.expect === 'failover') t.not(r.leaderAfter, r.leaderBefore, 'the follower took over');
    if (scenario.expect === 'same') t.is(r.leaderAfter, r.leaderBefore, 'the leader kept its role');
    t.deepEqual(r.failures, [], 'the scenario\'s own checks');
  });
}

// Last: a restore takes the pair back in time on purpose, which no scenario after it expects.
serial('geminik8s restore on the running pair: a damaged, mis-keyed or truncated file is refused with nothing touched; a dry run changes nothing; the real one brings back the tables as they were, on a new timeline, with the follower re-cloned and synchronous', async (t) => {
  t.timeout(900_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 180_000);
  const follower = cluster.other(leader);
  const dir = tempDir('gk-restore-');
  const clusterFile = join(cluster.configDir, 'cluster.yaml');
  const cli = (...args: string[]) => runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), ...args]), { allowFailure: true, timeoutMs: 900_000 });
  const key = join(dir, 'backup.key');
  writeFileSync(key, randomBytes(32).toString('hex'), { mode: 0o600 });
  const probe = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM restore_probe";
  // A psql that gets no answer (a connect timeout on a loaded machine) says nothing about the data: ask again.
  const probeOf = (node: string) => cluster.waitFor(`the probe table's digest on ${node}`, () => cluster.sql(node, probe), 60_000);
  t.truthy(await cluster.sql(leader, 'CREATE TABLE restore_probe (id int PRIMARY KEY, v text NOT NULL); INSERT INTO restore_probe SELECT g, md5(g::text) FROM generate_series(1, 5000) g; SELECT 1'));
  const before = await probeOf(leader);
  t.truthy(before);
  const ackedBefore = cluster.acks.length;
  const file = join(dir, 'b.gkbackup');
  const b = await cli('backup', '--cluster', clusterFile, '--output', file, '--encryption-key', key);
  t.is(b.exitCode, 0, b.stderr);
  // Everything after the backup is what the restore discards.
  t.truthy(await cluster.sql(leader, "UPDATE restore_probe SET v = 'changed' WHERE id % 2 = 0; INSERT INTO restore_probe SELECT g, 'later' FROM generate_series(5001, 6000) g; SELECT 1"));
  const changed = await probeOf(leader);
  t.not(changed, before);
  // A switchover after the backup: the pair moves to a timeline the backup never saw, and the
  // restore lands on the other node. Its new timeline must be past that one, never equal to it.
  const sw = await cluster.switchover(leader);
  t.true(sw?.ok, sw?.reason);
  const target = await cluster.waitFor('a healthy pair led by the other node', async () => ((await cluster.healthyPair()) === follower ? follower : undefined), 180_000);
  const standby = cluster.other(target);
  const timelineOf = async (node: string) => Number(await cluster.waitFor(`${node}'s timeline`, () => cluster.sql(node, 'SELECT timeline_id FROM pg_control_checkpoint()', 'postgres'), 60_000));
  await cluster.sql(target, 'CHECKPOINT', 'postgres');
  const timelineBefore = await timelineOf(target);
  t.true(timelineBefore > 1);

  // Refused before anything is touched: each case leaves the data and the timeline as they are.
  const restore = (...args: string[]) => cli('restore', '--cluster', clusterFile, ...args);
  const other = join(dir, 'other.key');
  writeFileSync(other, randomBytes(32).toString('hex'), { mode: 0o600 });
  const bytes = readFileSync(file);
  const flipped = Buffer.from(bytes);
  flipped[bytes.length - 5000]! ^= 0x40;
  writeFileSync(join(dir, 'flipped'), flipped, { mode: 0o600 });
  writeFileSync(join(dir, 'truncated'), bytes.subarray(0, Math.floor(bytes.length * 0.9)), { mode: 0o600 });
  for (const [name, args, why] of [
    ['wrong key', ['--backup-file', file, '--encryption-key', other, '--force'], /wrong --encryption-key/],
    ['flipped byte', ['--backup-file', join(dir, 'flipped'), '--encryption-key', key, '--force'], /does not authenticate/],
    ['truncated', ['--backup-file', join(dir, 'truncated'), '--encryption-key', key, '--force'], /truncated/],
  ] as const) {
    const r = await restore(...args);
    t.is(r.exitCode, 6, `${name}: ${r.stderr}`);
    t.regex(r.stderr, why, name);
    t.is(await probeOf(target), changed, `${name}: nothing touched`);
  }
  const dry = await restore('--backup-file', file, '--encryption-key', key, '--dry-run');
  t.is(dry.exitCode, 0, dry.stderr);
  t.regex(dry.stdout, new RegExp(`restore onto ${target}:`));
  const noForce = await restore('--backup-file', file, '--encryption-key', key);
  t.is(noForce.exitCode, 5, noForce.stderr);
  t.regex(noForce.stderr, /discards every write made after .*give --force/);
  t.is(await probeOf(target), changed, 'a dry run and a refused restore change nothing');
  t.is(await timelineOf(target), timelineBefore);

  const real = await restore('--backup-file', file, '--encryption-key', key, '--force');
  t.log(real.stdout);
  t.is(real.exitCode, 0, real.stderr);
  t.regex(real.stdout, new RegExp(`${target}: restored; PostgreSQL is a primary on timeline \\d+; the replaced data directory is kept as \\S+\\.pre-restore-`));
  t.regex(real.stdout, new RegExp(`${standby}: re-cloned from ${target}`));
  t.regex(real.stdout, new RegExp(`HEALTHY \\(leader ${target}\\)`));
  t.is(await probeOf(target), before, 'the table is as it was at the backup');
  t.true((await timelineOf(target)) > timelineBefore, `a timeline this cluster never used (was ${timelineBefore}, now ${await timelineOf(target)})`);
  t.deepEqual(await cluster.missingAcks(target, ackedBefore), [], 'every write acknowledged before the backup is back');
  await cluster.waitFor('a healthy pair after the restore', () => cluster.healthyPair(), 180_000);
  t.is(await probeOf(standby), before, 'the re-cloned standby has the restored data');
  const writes = cluster.acks.length;
  await cluster.waitFor('writes through the VIP again', async () => (cluster.acks.length > writes + 5 ? true : undefined), 120_000);
});

serial('geminik8s certs rotate on the running pair: each node gets a new key and certificate, the follower first, swapped in by its running agent; the API and PostgreSQL serve the new ones with no agent or PostgreSQL restart and the same leader; a restarted agent keeps the rotated one', async (t) => {
  t.timeout(600_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 180_000);
  const follower = cluster.other(leader);
  const nodes = [follower, leader];
  const pgServed = async (node: string) => {
    const r = await runPlan({ ...inNs(cluster.topology.clientNs, 'openssl', ['s_client', '-starttls', 'postgres', '-connect', `${cluster.ipOf(node)}:5432`, '-CAfile', cluster.caFile, '-verify_return_error']), input: '' }, { allowFailure: true, timeoutMs: 20_000 });
    return /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0];
  };
  const before = Object.fromEntries(await Promise.all(nodes.map(async (n) => [n, { api: await cluster.servedCertificate(n), pg: await pgServed(n), agent: cluster.agents.get(n)?.pid, postmaster: cluster.postmasterPid(n) }] as const)));
  for (const n of nodes) t.truthy(before[n]!.api && before[n]!.pg, `${n} serves a certificate on its API and PostgreSQL`);
  const writes = cluster.acks.length;
  const r = await runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'certs', 'rotate', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--json']), { allowFailure: true, timeoutMs: 600_000 });
  t.is(r.exitCode, 0, r.stderr);
  t.log(r.stderr.trim().split('\n').slice(-6).join('\n'));
  const out = JSON.parse(r.stdout) as { rotated: { node: string; fingerprint: string; k3s?: string }[] };
  t.deepEqual(out.rotated.map((x) => x.node), nodes, 'the follower first, the leader last');
  for (const x of out.rotated) t.regex(x.k3s ?? '', /no Kubernetes layer/);
  for (const n of nodes) {
    const api = await cluster.servedCertificate(n);
    const pg = await pgServed(n);
    t.not(api, before[n]!.api, `${n}: the API serves a new certificate`);
    t.is(pg, api, `${n}: PostgreSQL serves the same new certificate`);
    t.is(api!.replace(/\s/g, ''), readFileSync(join(cluster.configDir, 'secrets', 'tls', `${n}.crt`), 'utf8').replace(/\s/g, ''), `${n}: the one now in secrets/tls`);
    t.is(cluster.agents.get(n)?.pid, before[n]!.agent, `${n}: the agent did not restart`);
    t.is(cluster.postmasterPid(n), before[n]!.postmaster, `${n}: PostgreSQL did not restart`);
  }
  t.is(await cluster.healthyPair(), leader, 'the same leader, healthy');
  await cluster.waitFor('writes through the VIP after the rotation', async () => (cluster.acks.length > writes + 5 ? true : undefined), 60_000);
  const replication = await cluster.sql(leader, 'SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)', 'postgres');
  t.is(replication, 't');
  // The seed on disk still has the old certificate: a restarted agent uses the rotated one.
  const rotated = await cluster.servedCertificate(follower);
  await cluster.restartAgent(follower);
  await cluster.waitFor('a healthy pair after the follower\'s agent restarted', async () => ((await cluster.healthyPair()) === leader ? true : undefined), 180_000);
  t.is(await cluster.servedCertificate(follower), rotated, 'the restarted agent serves the rotated certificate, not the seed\'s');
  t.is(cluster.dualPrimarySamples(), 0);
});

// After the restore, and last of all: a forced failover loses writes on purpose.
serial('geminik8s failover --force: the leader degraded, then lost power. Refused without --accept-data-loss, nothing changed; with it the standby leads once the old lease has expired; the writes lost are exactly some the old leader acknowledged alone; it comes back fenced and rejoins', async (t) => {
  t.timeout(900_000);
  const leader = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 180_000);
  const follower = cluster.other(leader);
  // The restore before this test discarded writes on purpose: count only what comes after it.
  const since = Math.max(0, ...cluster.acks.map((a) => a.id));
  const force = (...args: string[]) =>
    runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'failover', '--cluster', join(cluster.configDir, 'cluster.yaml'), '--to', follower, '--force', ...args]), { allowFailure: true, timeoutMs: 300_000 });
  // With a writing leader --force is refused: a planned switchover loses nothing.
  const early = await force('--accept-data-loss');
  t.is(early.exitCode, 5, early.stderr);
  t.regex(early.stderr, new RegExp(`${leader} leads a writable primary: use a planned switchover`));
  // Replication cut: the leader degrades (recording nobody promotable first) and acknowledges alone.
  await blockPeer(cluster.topology, leader, ipOf(follower), true);
  try {
    await cluster.waitFor('the witness recording nobody promotable', async () => (cluster.witnessRecord()?.promotable === null ? true : undefined), 60_000);
    const aloneFrom = cluster.acks.length;
    await cluster.waitFor('writes acknowledged by the degraded leader alone', async () => (cluster.acks.length > aloneFrom + 20 ? true : undefined), 60_000);
    const generation = cluster.witnessRecord()!.generation;
    await cluster.powerOff(leader);
    const aloneTo = cluster.acks.length;
    const refused = await force();
    t.is(refused.exitCode, 5, refused.stderr);
    t.regex(refused.stderr, new RegExp(`records nobody as promotable, not ${follower}: .* Give --accept-data-loss`));
    t.like(cluster.witnessRecord(), { holder: leader, generation, promotable: null }, 'a refused force changes nothing at the witness');
    t.is((await cluster.status(follower))?.role, 'follower');
    // The old lease may still run at the witness for a few seconds: each try before it expires is
    // refused for that reason alone.
    const tries: string[] = [];
    const forced = await cluster.waitFor('a forced failover', async () => {
      const r = await force('--accept-data-loss', '--wait', '--timeout', '2m');
      if (r.exitCode === 0) return r;
      tries.push(r.stderr);
      if (!/holds the lease for \d+ ms more: it may still be writing/.test(r.stderr)) throw new Error(`refused for another reason (exit ${r.exitCode}): ${r.stderr}`);
      return undefined;
    }, 120_000, 1000);
    t.log(forced.stdout, tries.length ? `${tries.length} tries refused while the old lease ran` : '');
    t.regex(forced.stdout, new RegExp(`forced failover ${leader} -> ${follower} \\(acknowledged writes may be lost\\)`));
    t.like(cluster.witnessRecord(), { holder: follower, generation: generation + 2 });
    t.deepEqual(await cluster.writableNow(), [follower]);
    const lost = (await cluster.missingAcks(follower, aloneTo)).filter((id) => id > since);
    const alone = new Set(cluster.acks.slice(aloneFrom - 200 < 0 ? 0 : aloneFrom - 200, aloneTo).map((a) => a.id));
    t.log(`${lost.length} acknowledged writes lost: ${aloneTo - aloneFrom} acknowledged by ${leader} after the witness recorded nobody promotable, plus the commits that were waiting for the standby when the degrade released them`);
    t.true(lost.length > 0, 'the degraded leader acknowledged writes its standby never received');
    t.deepEqual(lost.filter((id) => !alone.has(id)), [], 'only writes from around the cut onwards are lost');
    const writes = cluster.acks.length;
    await cluster.waitFor(`writes through the VIP on ${follower}`, async () => (cluster.acks.length > writes + 5 ? true : undefined), 120_000);
    t.deepEqual(await cluster.missingAcks(follower, cluster.acks.length).then((m) => m.filter((id) => id > Math.max(...cluster.acks.slice(0, aloneTo).map((a) => a.id)))), [], 'nothing acknowledged after the force is lost');
  } finally {
    await flushRules(cluster.topology, leader);
  }
  // The old leader returns: refused its old lease, it rejoins the new timeline as the standby.
  await cluster.powerOn(leader);
  const back = await cluster.waitFor('a healthy pair led by the forced node', async () => ((await cluster.healthyPair()) === follower ? follower : undefined), 300_000);
  t.is(back, follower);
  t.is(cluster.dualPrimarySamples(), 0, 'two writable primaries never coexisted');
  const s = await cluster.status(leader);
  t.is(s?.role, 'follower');
  t.log(`${leader} rejoined through ${s?.lastRejoin?.method ?? '?'}`);
});

// Last: it gives a node a new address, which the cut helpers (fixed addresses) do not follow.
serial('geminik8s replace-node: refused while the old box answers, nothing changed; once it is dead and the survivor leads, the survivor takes the new address without a PostgreSQL restart (pg_hba reloaded, a fresh slot) while writes go on; the new box from the written seed clones it and the pair is synchronous again, losing nothing', async (t) => {
  t.timeout(900_000);
  const old = await cluster.waitFor('a healthy pair', () => cluster.healthyPair(), 300_000);
  const survivor = cluster.other(old);
  // Earlier tests (restore, --force) discard writes on purpose: count only what comes after this point, synchronous from here.
  const since = Math.max(0, ...cluster.acks.map((a) => a.id));
  const clusterFile = join(cluster.configDir, 'cluster.yaml');
  const oldIp = cluster.ipOf(old);
  const newIp = '10.77.0.21';
  const seedOut = join(cluster.dir, `seed-${old}-replacement`);
  const replace = (...args: string[]) =>
    runPlan(inNs(cluster.topology.clientNs, 'node', [join(ROOT, 'bin/geminik8s.js'), 'replace-node', '--cluster', clusterFile, '--old', old, '--new-ip', newIp, '--seed-out', seedOut, ...args]), { allowFailure: true, timeoutMs: 180_000 });
  const before = readFileSync(clusterFile, 'utf8');
  const early = await replace();
  t.is(early.exitCode, 5, early.stderr);
  t.regex(early.stderr, new RegExp(`${old}'s agent answers at ${oldIp.replaceAll('.', '\\.')} \\(role leader\\): replace-node is for a box that is gone`));
  t.is(readFileSync(clusterFile, 'utf8'), before, 'cluster.yaml unchanged');
  t.false(existsSync(seedOut), 'no seed written');

  // The leader's box dies for good: its synchronous standby takes over by itself.
  await cluster.powerOff(old);
  await cluster.waitFor(`${survivor} leading`, async () => ((await cluster.leader()) === survivor ? true : undefined), 180_000);
  const postmaster = cluster.postmasterPid(survivor);
  t.truthy(postmaster);
  const r = await replace();
  t.is(r.exitCode, 0, r.stderr);
  t.log(r.stdout);
  t.regex(r.stderr, new RegExp(`${survivor}: ${old} moved from ${oldIp.replaceAll('.', '\\.')} to ${newIp.replaceAll('.', '\\.')}: pg_hba\\.conf reloaded, its old replication slot dropped and a new one made`));
  t.is(cluster.postmasterPid(survivor), postmaster, 'the survivor did not restart PostgreSQL');
  const backups = readdirSync(cluster.configDir).filter((f) => f.startsWith('cluster.yaml.bak-'));
  t.is(backups.length, 1);
  t.is(readFileSync(join(cluster.configDir, backups[0]!), 'utf8'), before, 'the previous cluster.yaml is kept');
  t.is(readFileSync(clusterFile, 'utf8'), before.replace(`ip: ${oldIp}`, `ip: ${newIp}`), 'only the address changed in cluster.yaml');
  t.is(await cluster.sql(survivor, `SELECT count(*) FROM pg_hba_file_rules WHERE address = '${newIp}'`, 'postgres'), '3', 'pg_hba admits the new address (replication, pg_rewind, health checks)');
  t.is(await cluster.sql(survivor, `SELECT count(*) FROM pg_hba_file_rules WHERE address = '${oldIp}'`, 'postgres'), '0', 'and no longer the old one');
  t.like(JSON.parse(readFileSync(join(cluster.nodeDir(survivor), 'state', 'peer.json'), 'utf8')), { name: old, ip: newIp, previousIp: oldIp }, 'recorded for the survivor\'s next start');
  // Asking again changes nothing at the survivor.
  const again = await replace('--force');
  t.is(again.exitCode, 0, again.stderr);
  t.regex(again.stderr, new RegExp(`${old} is at ${newIp.replaceAll('.', '\\.')} already: nothing to change`));
  const writes = cluster.acks.length;
  await cluster.waitFor(`writes on ${survivor} through the replacement`, async () => (cluster.acks.length > writes + 5 ? true : undefined), 120_000);

  await cluster.replaceBox(old, oldIp, seedOut);
  await cluster.waitFor(`a healthy pair: ${survivor} leading, the new ${old} its synchronous standby`, async () => ((await cluster.healthyPair()) === survivor ? true : undefined), 600_000);
  const s = await cluster.status(old);
  t.is(s?.role, 'follower');
  t.is(cluster.postmasterPid(survivor), postmaster, 'still the same postmaster on the survivor');
  t.is(await cluster.sql(survivor, `SELECT host(client_addr) || ' ' || sync_state FROM pg_stat_replication WHERE application_name = '${old}'`, 'postgres'), `${newIp} sync`);
  const upTo = cluster.acks.length;
  t.deepEqual((await cluster.missingAcks(survivor, upTo)).filter((id) => id > since), [], 'the survivor lost nothing');
  const missingOnNew = await cluster.waitFor(`the new ${old} to have replayed every acknowledged write`, async () => {
    const m = (await cluster.missingAcks(old, upTo)).filter((id) => id > since);
    return m.length === 0 ? m : undefined;
  }, 60_000);
  t.deepEqual(missingOnNew, []);
  t.is(cluster.dualPrimarySamples(), 0, 'two writable primaries never coexisted');
});
