import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createPeerPort } from '#agent/adapters/peer.ts';
import { createPgPort, inProgressMarker, livePostmasterPid } from '#agent/adapters/pg.ts';
import { nodeContext, type NodeContext } from '#agent/context.ts';
import type { LogPort } from '#agent/core/ports.ts';
import { controlStateCode, interruptedPromotion, pgCtlStartPlan, pgCtlStopPlan, withClient } from '#agent/postgres.ts';
import { runPlan } from '#common/exec.ts';
import { AgentConfigSchema } from '#common/schema/agent.ts';
import { pgHbaConf } from '#common/render/postgresql.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { NodeSeedSchema } from '#common/schema/seed.ts';
import { FAKE_SECRETS, loadFixtureCluster, tempDir } from '../helpers/fixtures.ts';
import { freePort } from '#lab/guest-cluster.ts';
import { hostPgBinDir } from '../helpers/host-pg.ts';

/**
 * The PgPort against a real PostgreSQL 15 on loopback (direct mode, pg_ctl as the postgres
 * user): needs root and the Debian postgresql-15 package; skipped otherwise. One node only:
 * the peer is 127.0.0.2, where nothing listens.
 */
const BIN = hostPgBinDir() ?? '/usr/lib/postgresql/15/bin';
const runnable = process.getuid?.() === 0 && existsSync(join(BIN, 'initdb'));
const maybe = runnable ? test.serial : test.skip;

async function context(root: string): Promise<NodeContext> {
  const cluster = await loadFixtureCluster();
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = cluster;
  const seed = NodeSeedSchema.parse({ apiVersion: API_VERSION, kind: 'NodeSeed', node: 'node1', cluster: { ...spec, postgresql: { ...spec.postgresql, port: await freePort(), sharedBuffers: '16MB' } }, secrets: FAKE_SECRETS });
  const stateDir = join(root, 'state');
  const config = AgentConfigSchema.parse({
    stateDir, seedFile: join(stateDir, 'seed.yaml'), listen: { host: '127.0.0.1', port: 0 },
    // The data directory's parents do not exist yet, as in a node image (Debian's layout, /var/lib/postgresql/N/main).
    postgresql: { binDir: BIN, dataDir: join(stateDir, 'pg', '17', 'main'), socketDir: join(root, 'sock'), confFragment: "listen_addresses = '127.0.0.1'" },
    serviceManager: 'direct', vip: { enabled: false },
  });
  const ctx = nodeContext(config, seed);
  // The fixture's durations are already milliseconds; parsing them again in the seed reads them as seconds.
  const failover = { ...ctx.spec.failover, checkInterval: 1000, checkTimeout: 800, fenceAfter: 4000, promoteAfter: 6000, degradeAfter: 5000 };
  return { ...ctx, spec: { ...ctx.spec, failover }, peer: { ...ctx.peer, ip: '127.0.0.2' } };
}

maybe('pg adapter on a real PostgreSQL: bootstrap, status, sync waiters, refusals, fence, start as standby', async (t) => {
  const root = tempDir('gk-pg-');
  chmodSync(root, 0o755); // the postgres user walks into it
  const ctx = await context(root);
  const lines: string[] = [];
  const log: LogPort = { info: () => undefined, debug: () => undefined, warn: (_f, m) => lines.push(m), error: (_f, m) => lines.push(m) };
  const pg = createPgPort(ctx, log);
  const data = ctx.config.postgresql.dataDir;
  try {
    t.like(await pg.status(), { up: false });
    await pg.initPrimary('');
    t.false(existsSync(inProgressMarker(ctx)));
    t.deepEqual(await pg.disk(), { hasData: true, standbySignal: false });
    const st = await pg.status();
    t.like(st, { up: true, inRecovery: false, timeline: 1, synchronousStandbyNames: '', readOnly: false, syncWaiters: 0 });
    t.is(typeof st.lsn, 'bigint');
    t.true(st.lsn! > 0n);
    t.is(st.standby, undefined);
    await t.throwsAsync(pg.initPrimary(''), { message: /refusing to initdb/ });

    // Never a standby underneath a running primary.
    await t.throwsAsync(pg.configureStandby(), { message: /running here as a primary/ });
    t.false(existsSync(join(data, 'standby.signal')));

    // Synchronous replication to a standby that is not there: a write waits, and is counted.
    for (let i = 0; i < 10; i++) {
      await pg.setSyncStandby('"node2"');
      t.is((await pg.status()).synchronousStandbyNames, '"node2"', `round ${i}`);
      await pg.setSyncStandby('');
      t.is((await pg.status()).synchronousStandbyNames, '', `round ${i}`);
    }
    await pg.setSyncStandby('"node2"');
    const write = withClient(ctx, '127.0.0.1', (c) => c.query('CREATE TABLE waits_for_sync (x int)'), 30_000);
    let waiters = 0;
    for (let i = 0; i < 100 && waiters === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      waiters = (await pg.status()).syncWaiters ?? 0;
    }
    t.is(waiters, 1, 'the write waits for the synchronous standby');
    await pg.setSyncStandby('');
    await write;
    t.is((await pg.status()).syncWaiters, 0, 'degrading releases it');

    // A server that stops answering mid-query (its backend frozen, as behind a cut link): our own
    // deadline ends the call, not TCP after minutes. statement_timeout cannot: the server is frozen.
    let frozen: number | undefined;
    const t0 = performance.now();
    await t.throwsAsync(
      withClient(ctx, '127.0.0.1', async (c) => {
        frozen = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
        process.kill(frozen, 'SIGSTOP');
        return c.query('SELECT 1');
      }, 500),
      { message: /did not answer within 2500 ms/ },
    );
    const took = performance.now() - t0;
    if (frozen) process.kill(frozen, 'SIGCONT');
    t.true(took < 10_000, `withClient gave up after ${Math.round(took)} ms`);

    // The kept session's backend learns of a reload by a signal from the postmaster: once
    // setReadOnly returns, its own status (and every new backend) must already see the change.
    for (let i = 0; i < 25; i++) {
      await pg.setReadOnly(true);
      t.true((await pg.status()).readOnly, `read-only not seen after setReadOnly(true), round ${i}`);
      await pg.setReadOnly(false);
      t.false((await pg.status()).readOnly, `still read-only after setReadOnly(false), round ${i}`);
    }
    await pg.ensurePeerSlot();
    t.is(await withClient(ctx, '127.0.0.1', async (c) => (await c.query(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'geminik8s_node2'`)).rows[0].n), 1);

    // Fence: resolves only once nothing runs.
    await pg.fence();
    t.like(await pg.status(), { up: false });
    t.is(livePostmasterPid(data), undefined);
    await pg.start();
    t.like(await pg.status(), { up: true, inRecovery: false });
    await pg.start(); // no-op when up

    // The checks keep one connection (a switchover polls them inside its write pause): two
    // checks are one backend of ours, not two.
    const ours = async (): Promise<number[]> => withClient(ctx, '127.0.0.1', async (c) =>
      (await c.query(`SELECT coalesce(array_agg(pid ORDER BY pid), '{}') AS p FROM pg_stat_activity WHERE application_name = 'geminik8s-agent' AND pid <> pg_backend_pid()`)).rows[0].p as number[]);
    await pg.status();
    const kept = await ours();
    t.is(kept.length, 1, 'one kept connection');
    await pg.status();
    await pg.setReadOnly(false);
    t.deepEqual(await ours(), kept, 'the same backend answered the next check and read-only');
    // Its backend ended from outside, or the server restarted under it: the next check still
    // says up (a new connection), never a failed check that the loop would act on.
    await withClient(ctx, '127.0.0.1', (c) => c.query('SELECT pg_terminate_backend($1)', [kept[0]]));
    t.like(await pg.status(), { up: true, inRecovery: false });
    t.notDeepEqual(await ours(), kept);
    await pg.status();
    await runPlan(pgCtlStopPlan(ctx, 'fast'));
    await runPlan(pgCtlStartPlan(ctx));
    t.like(await pg.status(), { up: true, inRecovery: false }, 'a check right after a restart under the kept connection');

    // The peer's check (is its PostgreSQL a primary?) keeps its TCP connection too: here the
    // "peer" is this server on 127.0.0.1, so our backends are the local check's and the peer check's.
    const peerPort = createPeerPort({ ...ctx, peer: { ...ctx.peer, ip: '127.0.0.1' } });
    t.deepEqual(await peerPort.pg(), { ok: true, primary: true });
    const withPeer = await ours();
    t.is(withPeer.length, 2);
    t.deepEqual(await peerPort.pg(), { ok: true, primary: true });
    t.deepEqual(await ours(), withPeer, 'the peer check kept its connection');
    await runPlan(pgCtlStopPlan(ctx, 'fast'));
    t.deepEqual(await peerPort.pg(), { ok: false });
    await runPlan(pgCtlStartPlan(ctx));
    t.deepEqual(await peerPort.pg(), { ok: true, primary: true }, 'and connects again once the server is back');
    await pg.stop();
    t.like(await pg.status(), { up: false });
    await pg.stop(); // no-op when down

    // Every start writes what the seed says: an older pg_hba.conf (an image from before a rule,
    // a pair from before TLS) and a restore's leftover recovery settings do not survive it.
    writeFileSync(join(data, 'pg_hba.conf'), 'local all all trust\n');
    writeFileSync(join(data, 'conf.d', 'geminik8s-restore.conf'), "recovery_target = 'immediate'\n");
    await pg.start();
    t.is(readFileSync(join(data, 'pg_hba.conf'), 'utf8'), pgHbaConf(ctx.spec, 'node1'));
    t.false(existsSync(join(data, 'conf.d', 'geminik8s-restore.conf')));
    await pg.stop();

    // Under systemd the fast shutdown is SIGINT to the postmaster itself, no systemctl run (here
    // there is no such unit: a systemctl call would fail, be logged and end in an immediate
    // shutdown). A clean shutdown of a server a switchover left read-only.
    await pg.start();
    await pg.setReadOnly(true);
    await createPgPort({ ...ctx, config: { ...ctx.config, serviceManager: 'systemd' } }, log).stop();
    t.like(await pg.status(), { up: false });
    t.regex(execFileSync(join(BIN, 'pg_controldata'), ['-D', data], { encoding: 'utf8' }), /Database cluster state:\s+shut down\n/);

    // Rejoin and clone need the peer as a primary; without it nothing is touched.
    await t.throwsAsync(pg.rejoin(), { message: /refusing to rejoin: the peer's PostgreSQL .* does not answer .*; nothing was changed/ });
    await t.throwsAsync(pg.clone(), { message: /refusing to clone/ });
    t.deepEqual(await pg.disk(), { hasData: true, standbySignal: false });
    t.deepEqual(readdirSync(ctx.config.stateDir).filter((n) => n.includes('pre-rejoin')), []);

    // Stopped: becomes a standby of the (absent) peer, and starts as one.
    await pg.configureStandby();
    t.deepEqual(await pg.disk(), { hasData: true, standbySignal: true });
    await pg.start();
    // configureStandby cleared the switchover's read-only: promoted later, it takes writes at once.
    t.like(await pg.status(), { up: true, inRecovery: true, receiverStreaming: false, synchronousStandbyNames: '', readOnly: false });
    await pg.configureStandby(); // a running standby may be re-configured
    // Promoted on the adapter's kept connection: it returns once the server is out of recovery.
    await pg.promote();
    t.like(await pg.status(), { up: true, inRecovery: false });
    await t.throwsAsync(pg.promote(), { message: /recovery is not in progress/ });
    await pg.fence();
    t.like(await pg.status(), { up: false });
    t.deepEqual(lines, []);
  } finally {
    await pg.fence().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
});

maybe('pg adapter: a bootstrap interrupted before its end leaves no usable data', async (t) => {
  const root = tempDir('gk-pg-');
  chmodSync(root, 0o755);
  const ctx = await context(root);
  const pg = createPgPort(ctx, { info: () => undefined, debug: () => undefined, warn: () => undefined, error: () => undefined });
  try {
    mkdirSync(ctx.config.stateDir, { recursive: true });
    // An initdb that cannot start the server (the port is taken) fails after initdb ran.
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(ctx.spec.postgresql.port, '127.0.0.1', r));
    try {
      await t.throwsAsync(pg.initPrimary(''));
    } finally {
      blocker.close();
    }
    t.true(existsSync(join(ctx.config.postgresql.dataDir, 'PG_VERSION')));
    t.deepEqual(await pg.disk(), { hasData: false, standbySignal: false }, 'the marker says the directory is unfinished');
  } finally {
    await pg.fence().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
});

maybe('pg adapter: a promotion that died after PostgreSQL removed standby.signal starts as a standby again and is promoted onto a new timeline; a crashed primary stays a primary', async (t) => {
  const root = tempDir('gk-pg-');
  chmodSync(root, 0o755);
  const ctx = await context(root);
  const warnings: string[] = [];
  const pg = createPgPort(ctx, { info: () => undefined, debug: () => undefined, warn: (_f, m) => warnings.push(m), error: (_f, m) => warnings.push(m) });
  const data = ctx.config.postgresql.dataDir;
  const controlState = (): string => /Database cluster state:\s+(.+)\n/.exec(execFileSync(join(BIN, 'pg_controldata'), ['-D', data], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }))![1]!;
  const kept = async (): Promise<number> => withClient(ctx, '127.0.0.1', async (c) => (await c.query('SELECT count(*)::int AS n FROM kept')).rows[0].n as number);
  try {
    await pg.initPrimary('');
    await withClient(ctx, '127.0.0.1', (c) => c.query('CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)'));
    await pg.stop();
    t.is(controlState(), 'shut down');
    t.is(controlStateCode(data), 1, 'pg_control read directly agrees with pg_controldata');
    await pg.configureStandby();
    await pg.start();
    t.like(await pg.status(), { up: true, inRecovery: true, timeline: 1 });

    // What a server killed between "selected new timeline ID" and its end-of-recovery record
    // leaves: pg_control still says archive recovery, and standby.signal is already gone.
    await pg.fence();
    t.is(controlState(), 'in archive recovery');
    rmSync(join(data, 'standby.signal'));
    t.true(interruptedPromotion(data));
    t.deepEqual(await pg.disk(), { hasData: true, standbySignal: true }, 'the server starts as a standby');
    await pg.start();
    t.true(existsSync(join(data, 'standby.signal')));
    t.like(await pg.status(), { up: true, inRecovery: true, timeline: 1 }, 'a standby, not a primary on the old timeline');
    t.regex(warnings.join('\n'), /stopped inside a promotion/);
    await pg.promote();
    t.like(await pg.status(), { up: true, inRecovery: false, timeline: 2 });
    t.is(await kept(), 1);

    // A standby shut down cleanly whose standby.signal went: the same.
    await pg.stop();
    await pg.configureStandby();
    await pg.start();
    await pg.stop();
    t.is(controlState(), 'shut down in recovery');
    rmSync(join(data, 'standby.signal'));
    t.true(interruptedPromotion(data));
    await pg.start();
    t.like(await pg.status(), { up: true, inRecovery: true });
    await pg.promote();
    t.like(await pg.status(), { up: true, inRecovery: false, timeline: 3 });

    // A primary that crashed is no promotion: it starts as a primary, as before.
    await pg.fence();
    t.is(controlState(), 'in production');
    t.false(interruptedPromotion(data));
    t.deepEqual(await pg.disk(), { hasData: true, standbySignal: false });
    await pg.start();
    t.like(await pg.status(), { up: true, inRecovery: false, timeline: 3 });
    t.false(existsSync(join(data, 'standby.signal')));
    t.is(await kept(), 1);
  } finally {
    await pg.fence().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
});
