import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan, spawnPlan, type RunningProcess } from '#common/exec.ts';
import { buildAgent } from '../../../agent/build.ts';
import { partitionOffset } from '#common/install/media.ts';
import { bootVm, GuestShell, parseMarkerFields, READY_MARKER, type Vm } from '#qemu/index.ts';
import { longestGap } from '../../harness/cluster.ts';
import { bundleProbe } from '#lab/probes/bundle.ts';
import { inNs } from '#lab/netns.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { testImage, upgradeBundle, type BuiltImage } from '#lab/test-image.ts';
import { freePort, initGuestCluster, until } from '#lab/guest-cluster.ts';
import { agentJournalAt, arpOwners, createGuestLan, destroyGuestLan, GUEST_PG_BIN, guestSql, guestUptime, startLanWitness, startVipWriter, type GuestLan } from '#lab/guest-lan.ts';

// Two QEMU guests from the same test image (Kubernetes layer off), each with its own seed
// written onto its config partition by `geminik8s seed --into`, on a private L2: a bridge in a
// network namespace this suite makes, each guest on a tap device there (QEMU runs in that
// namespace). The witness runs on the host side of that bridge, in the namespace, from the same
// agent bundle the image ships (`geminik8s-agent witness`): a third box on the guests' network
// without a third TCG guest, which would take a whole boot and a third of the 2 CPUs. The test
// reads the guests through a root shell on their virtio console (the test image's
// boot.debugShell), never through the network; the writer reaches the VIP from the host side.
const BOOT_TIMEOUT = 12 * 60_000;
// The shell answers once the guest's console is free of boot output; on a loaded 2-core host
// with TCG that took more than 120 s, so wait as long as a boot may take.
const SHELL_TIMEOUT = BOOT_TIMEOUT;
const NET = { node1: '192.168.77.11', node2: '192.168.77.12', vip: '192.168.77.50', host: '192.168.77.1', prefix: 24 };
const MAC = { node1: '52:54:00:77:00:11', node2: '52:54:00:77:00:12', bad: '52:54:00:77:00:13' };
const WITNESS = `${NET.host}:7444`;
const LAN_NS = 'gk-e2e-lan';
const PG = GUEST_PG_BIN;
const DATA = '/var/lib/postgresql/17/main';

let img: BuiltImage;
let clusterDir: string;
let lan: GuestLan;
/** The agent bundle (the witness runs from it), the writer, the witness's state. */
let work: string;
let witness: RunningProcess | undefined;
let witnessLog: string[] = [];
const vms: Vm[] = [];
const shells: GuestShell[] = [];
/** What the pair test leaves running for the failover test. */
let pair: { node1: Vm; node2: Vm; s1: GuestShell; s2: GuestShell; disk1: string; logDir: string } | undefined;

async function nodeDisk(node: string): Promise<string> {
  const out = join(tempDir(`gk-e2e-${node}-`), `${node}.raw`);
  const r = await cli('seed', '--cluster', join(clusterDir, 'cluster.yaml'), '--node', node, '--into', img.raw, '--out', out);
  if (r.code !== 0) throw new Error(`seed --into for ${node} failed: ${r.stderr}`);
  // A disk larger than the image, as a box's is: PERSISTENT grows into it on first boot, with
  // room for an uploaded upgrade bundle beside the database (the image's own 512 MiB is tight).
  await runPlan({ cmd: 'truncate', args: ['-s', '+1G', out] });
  return out;
}

const sql = guestSql;
const uptime = guestUptime;
const lanNic = (node: 'node1' | 'node2') => ({ netns: lan.ns, networks: [{ kind: 'tap' as const, ifname: lan.taps[node]!, mac: MAC[node] }] });

/** `geminik8s-agent witness` on the host side of the bridge, with the credentials init's cluster gave it. */
async function startWitness(): Promise<void> {
  const w = await startLanWitness(lan, clusterDir, WITNESS, join(work, 'witness-state'), await buildAgent(join(work, 'agent.mjs')));
  witness = w.proc;
  witnessLog = w.lines;
}

/** The witness's durable record of the pair (its fsynced file). */
const witnessRecord = (): { generation: number; holder: string | null; promotable: string | null } => JSON.parse(readFileSync(join(work, 'witness-state', 'e2e.json'), 'utf8'));



test.before(async (t) => {
  img = await testImage('test-amd64.yaml', (m) => t.log(m));
  lan = await createGuestLan(LAN_NS, { ip: NET.host, prefix: NET.prefix }, ['node1', 'node2']);
  clusterDir = await initGuestCluster('e2e', NET, MAC, WITNESS);
  work = tempDir('gk-e2e-cluster-run-');
  await bundleProbe('writer', join(work, 'writer.mjs'));
  await startWitness();
});

test.after.always(async () => {
  for (const s of shells.splice(0)) s.close();
  for (const vm of vms.splice(0)) await vm.stop();
  witness?.kill('SIGKILL');
  if (lan) await destroyGuestLan(lan);
});

async function stopAll(): Promise<void> {
  pair = undefined;
  for (const s of shells.splice(0)) s.close();
  for (const vm of vms.splice(0)) await vm.stop();
}

/** On failure, what the agents said: the tail of each open guest's agent and PostgreSQL journal. */
async function dumpJournals(t: { log: (...v: unknown[]) => void }): Promise<void> {
  for (const [i, s] of shells.entries()) {
    const r = await s.run('journalctl -b -u geminik8s-agent -u geminik8s-postgresql --no-pager -o cat | tail -n 60').catch((err: Error) => ({ code: -1, output: `(no journal: ${err.message})` }));
    t.log(`guest shell ${i + 1} journal:\n${r.output}`);
  }
  t.log(`witness:\n${witnessLog.slice(-40).join('\n')}`);
}

test.serial('two nodes from one image: leader primary, follower synchronous, VIP on the leader, a write through the VIP on both, hostmeta agreed, the witness\'s lease with the leader, follower rejoins after a reboot without a re-clone', async (t) => {
  try {
    await pairTest(t);
  } catch (err) {
    await dumpJournals(t);
    // Two TCG guests left running starved the next test's guest of CPU.
    await stopAll();
    throw err;
  }
});

// The rolling upgrade took 9 min 40 s here on 2026-12-05 (470 s of it `geminik8s upgrade`, each
// node's 318 MB bundle uploaded at 8-9 MB/s; 2-3 MB/s while the agents started programs every
// round). .ci/run leaves it out (GEMINIK8S_E2E_ROLLING_UPGRADE=0) while CI is over its 50
// minutes; run it with this suite.
const ROLLING = process.env.GEMINIK8S_E2E_ROLLING_UPGRADE !== '0';

test.serial('the leader guest powered off: the follower promotes through its systemd units and the witness, the VIP answers with its MAC, a writer through the VIP resumes with no acknowledged write lost; the old leader boots again and rejoins as synchronous standby', async (t) => {
  if (!pair) {
    t.fail('the pair test left no running pair');
    return;
  }
  try {
    pair = await failoverTest(t, pair);
  } catch (err) {
    await dumpJournals(t);
    await stopAll();
    throw err;
  }
});

test.serial('a clean reboot of the leader (systemctl reboot): its agent hands over to the synchronous standby while its PostgreSQL still runs (the units\' order), no acknowledged write lost; it returns as synchronous standby without a re-clone, and `geminik8s failover --to` hands back', async (t) => {
  if (!pair) {
    t.fail('the failover test left no running pair');
    return;
  }
  try {
    // The healthy pair it leaves (node2 leading) goes on to the rolling upgrade.
    pair = await leaderRebootTest(t, pair);
    if (!ROLLING) await stopAll();
  } catch (err) {
    await dumpJournals(t);
    await stopAll();
    throw err;
  }
});

(ROLLING ? test.serial : test.serial.skip)('geminik8s upgrade from the host side of the LAN: the follower, then the leader after its switchover, each staged through its agent API, rebooted and blessed on 0.2.0; never both nodes down, no acknowledged write lost', async (t) => {
  if (!pair) {
    t.fail('the failover test left no running pair');
    return;
  }
  try {
    await rollingUpgradeTest(t, pair);
  } catch (err) {
    await dumpJournals(t);
    throw err;
  } finally {
    await stopAll();
  }
});

async function pairTest(t: import('ava').ExecutionContext): Promise<void> {
  const [disk1, disk2] = await Promise.all([nodeDisk('node1'), nodeDisk('node2')]);
  const logDir = tempDir('gk-e2e-cluster-logs-');
  const started = Date.now();
  const node1 = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk1, format: 'raw', write: true, console: true, name: 'node1', serialLog: join(logDir, 'node1.log'), ...lanNic('node1') });
  vms.push(node1);
  const node2 = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk2, format: 'raw', write: true, console: true, name: 'node2', serialLog: join(logDir, 'node2.log'), ...lanNic('node2') });
  vms.push(node2);
  t.log(`serial logs in ${logDir}`);

  const [r1, r2] = await Promise.all([node1.waitFor(READY_MARKER, BOOT_TIMEOUT), node2.waitFor(READY_MARKER, BOOT_TIMEOUT)]);
  t.log(`node1: ${r1.line}`);
  t.log(`node2: ${r2.line}`);
  // A first boot from a seed: cloud-init applies it (the initramfs gate lets it run).
  for (const vm of [node1, node2]) t.regex(vm.log(), /geminik8s: cloud-init run: instance geminik8s-e2e-node\d-\w+ is not applied yet/);
  const s1 = await GuestShell.open(node1.consoleSocket!, SHELL_TIMEOUT);
  shells.push(s1);
  const s2 = await GuestShell.open(node2.consoleSocket!, SHELL_TIMEOUT);
  shells.push(s2);
  // QEMU gives every guest a virtio entropy device; the image's modprobe.d keeps its module out
  // (PID 1 spent 3.5 s inserting it before its first unit).
  t.regex(await s1.check("grep -lx 0x0004 /sys/bus/virtio/devices/*/device | wc -l"), /^[1-9]/m, 'the guest has a virtio entropy device (virtio device ID 4)');
  t.is((await s1.check('test -e /sys/module/virtio_rng && echo loaded || echo absent')).trim(), 'absent', 'and its module was not loaded');
  t.regex(node1.log(), /geminik8s: initramfs: first boot check done/, 'the initramfs logs its steps to the kernel log');
  // The image's sysctl.d: ARP answered only for an interface's own addresses, which the agent's
  // refusing route after a VIP drop needs.
  t.is((await s1.check('sysctl -n net.ipv4.conf.all.arp_ignore')).trim(), '1');

  const syncState = await until('node2 to stream synchronously', 8 * 60_000, async () => {
    const row = await sql(s1, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication");
    return /streaming sync/.test(row) ? row : undefined;
  });
  const readyGuest = await uptime(s1);
  t.log(`cluster ready (both nodes up, synchronous replication): ${((Date.now() - started) / 1000).toFixed(0)} s wall, node1 guest uptime ${readyGuest.toFixed(0)} s; ${syncState}`);
  t.regex(syncState, /^node2 streaming sync$/);
  t.is(await sql(s1, 'select pg_is_in_recovery()'), 'f', 'node1 is the primary');
  t.is(await sql(s2, 'select pg_is_in_recovery()'), 't', 'node2 is a standby');
  t.is(await sql(s2, 'select status from pg_stat_wal_receiver'), 'streaming');
  t.regex(await sql(s2, 'select slot_name from pg_stat_wal_receiver'), /\S+/, 'the follower streams through a replication slot');

  t.regex(await s1.check('ip -color=never -o -4 addr show dev eth0'), new RegExp(`inet ${NET.vip.replaceAll('.', '\\.')}/`), 'the VIP is on the leader');
  t.notRegex(await s2.check('ip -color=never -o -4 addr show dev eth0'), new RegExp(`inet ${NET.vip.replaceAll('.', '\\.')}/`), 'and not on the follower');
  // What the agent unit's ExecStopPost (release-vip.sh) reads on each node: the VIP on eth0.
  for (const s of [s1, s2]) t.regex((await s.check('cat /run/geminik8s/vip')).trim(), new RegExp(`^${NET.vip.replaceAll('.', '\\.')} \\d+ eth0$`));
  await s2.check(`ping -c 2 -W 3 ${NET.vip}`);
  const neigh = await s2.check(`ip -color=never neigh show ${NET.vip}`);
  t.regex(neigh, new RegExp(MAC.node1), 'the VIP answers with the leader\'s MAC');

  // Through the VIP from the follower, as the agent would: TLS verify-full (the leader's
  // certificate must cover the VIP), node2's client certificate (pg_hba asks the peer for it),
  // the password from the node's pgpass: no secret on the command line.
  const tls = 'sslmode=verify-full sslrootcert=/var/lib/geminik8s/pgtls/ca.crt sslcert=/var/lib/geminik8s/pgtls/node.crt sslkey=/var/lib/geminik8s/pgtls/node.key';
  const viaVip = (extra: string) => `runuser -u postgres -- env PGPASSFILE=/var/lib/geminik8s/pgpass ${PG}/psql -XtA "host=${NET.vip} user=postgres dbname=postgres ${extra}"`;
  await s2.check(`${viaVip(tls)} -c "create table e2e_probe(v text); insert into e2e_probe values ('through-the-vip')"`);
  t.regex(await s2.check(`${viaVip(tls)} -c "select ssl, client_dn from pg_stat_ssl where pid = pg_backend_pid()"`), /^t\|\/O=e2e\/CN=node2$/m, 'TLS, and the server saw node2\'s certificate');
  const plain = await s2.run(`${viaVip('sslmode=disable')} -c "select 1"`);
  t.not(plain.code, 0);
  t.regex(plain.output, /pg_hba\.conf rejects connection for host "192\.168\.77\.12", user "postgres", database "postgres", no encryption/, 'plain TCP from the peer is refused');
  const seen = await until('the row on the follower', 60_000, async () => {
    const v = await sql(s2, 'select v from e2e_probe').catch(() => '');
    return v === 'through-the-vip' ? v : undefined;
  });
  t.is(seen, 'through-the-vip');

  const meta1 = JSON.parse(await s1.check('cat /var/lib/geminik8s/hostmeta.json'));
  const meta2 = JSON.parse(await s2.check('cat /var/lib/geminik8s/hostmeta.json'));
  t.like(meta1, { cluster: 'e2e', node: 'node1', role: 'leader', peer: 'node2' });
  t.like(meta2, { cluster: 'e2e', node: 'node2', role: 'follower', peer: 'node1' });
  t.is(meta1.generation, meta2.generation, 'both nodes agree on the generation');
  const lease = await until('the witness to record node2 as promotable', 3 * 60_000, async () => {
    const r = witnessRecord();
    return r.promotable === 'node2' ? r : undefined;
  });
  t.like(lease, { holder: 'node1', generation: meta1.generation }, 'the witness leases the leader its generation');
  t.deepEqual(await arpOwners(lan, NET.vip), [MAC.node1], 'from the host side of the LAN, only the leader answers ARP for the VIP');

  // What the idle pair costs each guest's 2 vCPUs (the agent's rounds, PostgreSQL serving them),
  // over 30 s of guest time: a figure for the log (issue 12/13: everything else under TCG waits
  // for the same CPUs), not an assertion.
  // systemctl prints a blank line between two units' values.
  const cpu = async (s: GuestShell): Promise<number[]> => (await s.check(`systemctl show -p CPUUsageNSec --value geminik8s-agent.service geminik8s-postgresql.service; awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; uptime_s=$(cut -d' ' -f1 /proc/uptime); echo $uptime_s`)).split('\n').filter((l) => l.trim() !== '').map(Number);
  const before = [await cpu(s1), await cpu(s2)];
  await new Promise((r) => setTimeout(r, 30_000));
  const after = [await cpu(s1), await cpu(s2)];
  const share = (i: number): string => {
    const [a0, p0, busy0, up0] = before[i]!;
    const [a1, p1, busy1, up1] = after[i]!;
    const secs = up1! - up0!;
    // /proc/stat counts USER_HZ (100 per second) over both vCPUs.
    return `agent ${(((a1! - a0!) / 1e9 / secs) * 100).toFixed(1)}%, PostgreSQL ${(((p1! - p0!) / 1e9 / secs) * 100).toFixed(1)}%, whole guest ${(((busy1! - busy0!) / 100 / secs) * 100).toFixed(1)}% of one vCPU over ${secs.toFixed(0)} s`;
  };
  t.log(`idle pair, CPU: node1 (leader) ${share(0)}; node2 (follower) ${share(1)}`);

  // A hard reset of the follower: it must come back streaming from its own data, not a new clone.
  const inode = (await s2.check(`stat -c %i ${DATA}/PG_VERSION`)).trim();
  const sysid = await sql(s2, 'select system_identifier from pg_control_system()');
  s2.close();
  shells.splice(shells.indexOf(s2), 1);
  const mark = node2.mark();
  await node2.reset();
  const again = await node2.waitFor(READY_MARKER, BOOT_TIMEOUT, { since: mark });
  t.like(parseMarkerFields(again.line), { role: 'follower', boots: '2' });
  // The seed is applied and unchanged: neither cloud-init nor first boot runs again, and what
  // they applied (hostname, the static address the follower streams over) persisted.
  const reboot = node2.log().slice(mark);
  t.regex(reboot, /geminik8s: cloud-init skip: instance geminik8s-e2e-node2-\w+ is already applied/);
  t.regex(reboot, /first boot skipped/);
  // The ESP is mounted read-only: a hard reset leaves its FAT clean (a read-write ESP came
  // back "not properly unmounted" after every reset).
  t.notRegex(reboot, /FAT-fs \(vda2\): Volume was not properly unmounted/);
  const s2b = await GuestShell.open(node2.consoleSocket!, SHELL_TIMEOUT);
  shells.push(s2b);
  await until('node2 to stream synchronously again', 5 * 60_000, async () => (/streaming sync/.test(await sql(s1, "select state || ' ' || sync_state from pg_stat_replication")) ? true : undefined));
  t.is((await s2b.check(`stat -c %i ${DATA}/PG_VERSION`)).trim(), inode, 'the data directory was not re-cloned');
  t.is(await sql(s2b, 'select system_identifier from pg_control_system()'), sysid);
  t.is(await sql(s2b, 'select v from e2e_probe'), 'through-the-vip');
  const cloned = await s2b.run('journalctl -b -u geminik8s-agent --no-pager | grep -c pg_basebackup');
  t.is(cloned.output.trim(), '0', 'no pg_basebackup in this boot');
  t.is((await s2b.check('hostname')).trim(), 'node2');
  t.regex((await s2b.check("ls /boot/efi >/dev/null && awk '$2 == \"/boot/efi\" && $3 == \"vfat\" { print $4 }' /proc/mounts")).trim(), /^ro,/, 'the ESP is mounted read-only');
  t.is((await s2b.run('systemctl is-active cloud-init-main.service')).output.trim(), 'inactive');
  // The initramfs decided that (the agent ran no check and no first boot), and left the seed
  // medium mounted as mount-seed.sh would: read-only, files readable by root alone.
  t.is((await s2b.run('test -e /run/geminik8s/firstboot-unchanged && echo marker')).output.trim(), 'marker');
  t.regex((await s2b.check('journalctl -b -u geminik8s-agent --no-pager -o cat | grep -m1 "first boot skipped" || true')).trim(), /decided in the initramfs/);
  // From /proc/mounts: findmnt cuts its columns to the console's width.
  const seedMount = (await s2b.check("awk '$2 == \"/run/geminik8s/config\" { print $3, $4 }' /proc/mounts")).trim();
  t.regex(seedMount, /^vfat ro,/);
  t.regex(seedMount, /fmask=0177/);
  t.is((await s2b.check('stat -c %a /run/geminik8s/config/geminik8s/seed.yaml')).trim(), '600');
  pair = { node1, node2, s1, s2: s2b, disk1, logDir };
}

async function failoverTest(t: import('ava').ExecutionContext, p: NonNullable<typeof pair>): Promise<NonNullable<typeof pair>> {
  const { node1, s2 } = p;
  const { proc: writer, acks, errors: writerErrors } = await startVipWriter(lan, clusterDir, NET.vip, join(work, 'writer.mjs'));
  try {
    await until('20 acknowledged writes through the VIP', 5 * 60_000, async () => (acks.length >= 20 ? true : undefined));
    const generation = witnessRecord().generation;

    // Power loss of the leader: QMP quit, no shutdown; the image keeps what the guest had flushed.
    const before = await uptime(s2);
    const cutAt = Date.now();
    const lastAckBefore = acks.at(-1)!.id;
    await node1.qmp('quit').catch(() => undefined);
    await node1.stop();
    p.s1.close();
    shells.splice(shells.indexOf(p.s1), 1);
    t.log(`node1 powered off at node2 guest uptime ${before.toFixed(1)} s, after ${lastAckBefore} acknowledged writes`);

    await until('node2 to promote', 10 * 60_000, async () => ((await sql(s2, 'select pg_is_in_recovery()')) === 'f' ? true : undefined));
    // PostgreSQL leaves recovery before the agent logs the promotion (it records the timeline
    // at the witness and sets the sync standby first): wait for the line.
    const promotedAt = await until('the agent journal to say it promoted', 2 * 60_000, () => agentJournalAt(s2, 'promoted: generation'));
    t.log(`node2 promoted ${(promotedAt - before).toFixed(1)} s of guest time after the power-off`);
    const meta2 = JSON.parse(await s2.check('cat /var/lib/geminik8s/hostmeta.json'));
    t.like(meta2, { role: 'leader' });
    t.true(meta2.generation > generation, 'a new generation');
    t.like(witnessRecord(), { holder: 'node2', generation: meta2.generation }, 'the witness leases node2 the new generation');
    // Promoted through the units: the agent's PostgreSQL unit is what runs the server.
    t.is((await s2.run('systemctl is-active geminik8s-agent.service geminik8s-postgresql.service')).output.trim().split('\n').join(' '), 'active active');

    t.regex(await s2.check('ip -color=never -o -4 addr show dev eth0'), new RegExp(`inet ${NET.vip.replaceAll('.', '\\.')}/`), 'the VIP is on node2');
    const owners = await until('the VIP to answer ARP with node2\'s MAC', 3 * 60_000, async () => {
      const o = await arpOwners(lan, NET.vip);
      return o.length ? o : undefined;
    });
    t.deepEqual(owners, [MAC.node2], 'only node2 answers ARP for the VIP');

    await until('the writer to resume through the VIP', 5 * 60_000, async () => (acks.filter((a) => a.t > cutAt).length >= 20 ? true : undefined));
    const firstAfter = acks.find((a) => a.t > cutAt)!;
    t.log(`writes resumed ${((firstAfter.t - cutAt) / 1000).toFixed(1)} s of wall time after the power-off`);

    // The old leader boots again from its own disk.
    const mark = Date.now();
    const node1b = await bootVm({ arch: 'amd64', firmware: 'bios', image: p.disk1, format: 'raw', write: true, console: true, name: 'node1', serialLog: join(p.logDir, 'node1-again.log'), ...lanNic('node1') });
    vms.push(node1b);
    await node1b.waitFor(READY_MARKER, BOOT_TIMEOUT);
    const s1b = await GuestShell.open(node1b.consoleSocket!, SHELL_TIMEOUT);
    shells.push(s1b);
    const row = await until('node1 to stream synchronously from node2', 10 * 60_000, async () => {
      const r = await sql(s2, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication");
      return /^node1 streaming sync$/m.test(r) ? r : undefined;
    });
    const syncAt = await uptime(s1b);
    t.log(`node1 back: ${row} at node1 guest uptime ${syncAt.toFixed(0)} s (${((Date.now() - mark) / 1000).toFixed(0)} s wall from its power-on)`);
    t.is(await sql(s1b, 'select pg_is_in_recovery()'), 't', 'node1 is a standby now');
    t.like(JSON.parse(await s1b.check('cat /var/lib/geminik8s/hostmeta.json')), { role: 'follower', generation: meta2.generation });
    const rejoined = (await s1b.run("journalctl -b -u geminik8s-agent --no-pager -o cat | grep -o 'rejoined through [a-z_-]*' | head -n1")).output.trim();
    const rejoinedAt = await agentJournalAt(s1b, 'rejoined through');
    t.log(`node1: ${rejoined || 'no rejoin line'}${rejoinedAt ? ` at guest uptime ${rejoinedAt.toFixed(1)} s` : ''}`);
    // In place (follow, or pg_rewind after a divergence), never a re-clone after a power loss.
    t.regex(rejoined, /^rejoined through (follow|pg_rewind)$/);
    t.notRegex(await s1b.check('ip -color=never -o -4 addr show dev eth0'), new RegExp(`inet ${NET.vip.replaceAll('.', '\\.')}/`), 'the VIP is not on node1');

    writer.kill('SIGTERM');
    await writer.exited;
    const maxAck = acks.at(-1)!.id;
    t.log(`writer: ${acks.length} acknowledged writes, ${writerErrors.length} errors while the VIP moved (last: ${writerErrors.at(-1) ?? 'none'})`);
    // The writer takes the next id only after an acknowledgement: 1..maxAck were all acknowledged.
    t.is(await sql(s2, `select count(*) from harness_writes where id <= ${maxAck}`, 'kine'), String(maxAck), 'every acknowledged write is on the new primary');
    const onNode1 = await until('node1 to replay up to the last acknowledged write', 3 * 60_000, async () => {
      const n = await sql(s1b, `select count(*) from harness_writes where id <= ${maxAck}`, 'kine');
      return n === String(maxAck) ? n : undefined;
    });
    t.is(onNode1, String(maxAck), 'and on the rejoined standby');
    t.deepEqual(await arpOwners(lan, NET.vip), [MAC.node2], 'the VIP still answers with node2\'s MAC');
    return { node1: node1b, node2: p.node2, s1: s1b, s2, disk1: p.disk1, logDir: p.logDir };
  } finally {
    writer.kill('SIGKILL');
  }
}

/** node2 leads, node1 follows in sync: reboot node2 cleanly, then hand the lead back to it. */
async function leaderRebootTest(t: import('ava').ExecutionContext, p: NonNullable<typeof pair>): Promise<NonNullable<typeof pair>> {
  const { node2, s1 } = p;
  const { proc: writer, acks, errors: writerErrors, errorsAt: writerErrorsAt } = await startVipWriter(lan, clusterDir, NET.vip, join(work, 'writer.mjs'));
  try {
    await until('20 acknowledged writes through the VIP', 5 * 60_000, async () => (acks.length >= 20 ? true : undefined));
    const generation = witnessRecord().generation;
    const mark = node2.mark();
    const rebootAt = Date.now();
    await p.s2.run('systemctl reboot', 10_000).catch(() => undefined);
    p.s2.close();
    shells.splice(shells.indexOf(p.s2), 1);
    await until('node1 to lead', 5 * 60_000, async () => ((await sql(s1, 'select pg_is_in_recovery()')) === 'f' ? true : undefined));
    const led = Date.now();
    t.log(`node1 primary ${((led - rebootAt) / 1000).toFixed(1)} s of wall time after node2's reboot began`);
    await node2.waitFor(READY_MARKER, BOOT_TIMEOUT, { since: mark });
    const s2 = await GuestShell.open(node2.consoleSocket!, SHELL_TIMEOUT);
    shells.push(s2);
    const row = await until('node2 to stream synchronously from node1', 10 * 60_000, async () => {
      const r = await sql(s1, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication");
      return /^node2 streaming sync$/m.test(r) ? r : undefined;
    });
    t.log(`node2 back: ${row}`);
    // What node2's agent did at its stop, from the journal of the boot it left.
    const stopLines = (await s2.check(`journalctl -b -1 -u geminik8s-agent -o cat --no-pager | grep -E '"event":"(stop-handover|switchover|leave)"' || true`)).trim();
    t.log(`node2 at its stop:\n${stopLines || '(nothing)'}`);
    // How long the unit took from the agent's exit to stopped (ExecStopPost= release-vip.sh).
    t.log(`node2's agent unit at its stop (monotonic):\n${(await s2.check('journalctl -b -1 -u geminik8s-agent -o short-monotonic --no-pager | grep -vE \'"event"\' | tail -n 6 || true')).trim()}`);
    // Where the handover's time went on the side that took over.
    t.log(`node1 taking over:\n${(await s1.check(`journalctl -b -u geminik8s-agent -o cat --no-pager | grep -E '"event":"switchover-promoted"' | tail -n 1 || true`)).trim() || '(nothing)'}`);
    const handover = stopLines.split('\n').find((l) => l.includes('"stop-handover"'));
    // Seen once (2026-12-06): no entry of the agent at all in `-b -1`, while node1's side showed
    // the switchover. Keep what tells a lost journal from a misnumbered boot.
    if (!handover) t.log(`node2's journal: boots\n${(await s2.run('journalctl --list-boots --no-pager 2>&1 | tail -n 5; ls -la /var/log/journal/*/; journalctl -b -1 --no-pager -o short-monotonic 2>&1 | tail -n 15')).output}`);
    t.truthy(handover, 'node2 logged its handover at the stop');
    t.like(JSON.parse(handover ?? '{}'), { ok: true }, 'node2 handed over before it stopped');
    const w = witnessRecord();
    t.is(w.holder, 'node1', 'the witness leases node1');
    t.true(w.generation > generation, 'a new generation');
    t.like(JSON.parse(await s2.check('cat /var/lib/geminik8s/hostmeta.json')), { role: 'follower', generation: w.generation });
    const cloned = await s2.run('journalctl -b -u geminik8s-agent --no-pager | grep -c pg_basebackup');
    t.is(cloned.output.trim(), '0', 'no pg_basebackup in this boot');
    t.deepEqual(await arpOwners(lan, NET.vip), [MAC.node1], 'only node1 answers ARP for the VIP');

    // Streaming sync is not yet promotable: the leader records node2 at the witness after two
    // synchronous rounds (rules.ts standbyInSync), and the switchover is refused until then.
    await until('the witness to record node2 as promotable', 3 * 60_000, async () => (witnessRecord().promotable === 'node2' ? true : undefined));
    // Hand the lead back with the operator's command, from the host side of the LAN.
    const backAt = Date.now();
    const back = await runPlan(inNs(lan.ns, process.execPath, [join(ROOT, 'bin/geminik8s.js'), 'failover', '--cluster', join(clusterDir, 'cluster.yaml'), '--to', 'node2', '--wait', '--timeout', '5m']), { allowFailure: true, timeoutMs: 6 * 60_000 });
    const backDone = Date.now();
    t.log(`geminik8s failover --to node2: exit ${back.exitCode}\n${back.stdout}${back.stderr}`);
    // Where the hand-back's time went, on both sides (a switchover through the API, as an upgrade's).
    t.log(`the hand-back's steps:\n${(await s1.check(`journalctl -b -u geminik8s-agent -o cat --no-pager | grep -E '"event":"switchover"' | tail -n 1 || true`)).trim() || '(nothing)'}\n${(await s2.check(`journalctl -b -u geminik8s-agent -o cat --no-pager | grep -E '"event":"switchover-promoted"' | tail -n 1 || true`)).trim() || '(nothing)'}`);
    t.is(back.exitCode, 0, back.stderr);
    await until('node2 to lead again with node1 in sync', 5 * 60_000, async () => (/^node1 streaming sync$/m.test(await sql(s2, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication").catch(() => '')) ? true : undefined));

    await until('the writer to go on', 5 * 60_000, async () => (acks.filter((a) => a.t > Date.now() - 20_000).length >= 10 ? true : undefined));
    writer.kill('SIGTERM');
    await writer.exited;
    const gap = longestGap(acks.filter((a) => a.t >= rebootAt && a.t <= led + 60_000).map((a) => a.t));
    const maxAck = acks.at(-1)!.id;
    const backGap = longestGap(acks.filter((a) => a.t >= backAt && a.t <= backDone + 20_000).map((a) => a.t));
    t.log(`writer: ${acks.length} acknowledged writes; longest gap around node2's reboot ${(gap / 1000).toFixed(2)} s, around the hand-back ${(backGap / 1000).toFixed(2)} s; ${writerErrors.length} errors (last: ${writerErrors.at(-1) ?? 'none'})`);
    // What the writer met in the hand-back's pause: a refused or read-only attempt is retried at
    // once, one whose SYN was lost (`timeout expired`) a second later.
    const backErrors = writerErrorsAt.filter((e) => e.t >= backAt && e.t <= backDone + 20_000);
    t.log(`the writer's failed attempts in the hand-back (ms from the request): ${backErrors.map((e) => `${e.t - backAt} ${e.error.slice(0, 60)}`).join('; ') || 'none'}`);
    t.is(await sql(s2, `select count(*) from harness_writes where id <= ${maxAck}`, 'kine'), String(maxAck), 'every acknowledged write is on the leader');
    return { ...p, s2 };
  } finally {
    writer.kill('SIGKILL');
  }
}

/** Every `everyMs`, whether each of `targets` (HOST:PORT) accepts a TCP connection, from the LAN's host side. */
function startUpSampler(targets: string[], everyMs = 1000): { proc: RunningProcess; samples: { t: number; up: number[] }[] } {
  const script = join(work, 'up-sampler.mjs');
  writeFileSync(script, `import { connect } from 'node:net';
const targets = process.argv.slice(2);
const probe = (t) => new Promise((done) => {
  const [host, port] = t.split(':');
  const s = connect({ host, port: Number(port), timeout: 2000 });
  s.once('connect', () => { s.destroy(); done(1); });
  s.once('timeout', () => { s.destroy(); done(0); });
  s.once('error', () => done(0));
});
setInterval(async () => { const up = await Promise.all(targets.map(probe)); console.log(JSON.stringify({ t: Date.now(), up })); }, ${everyMs});
`);
  const samples: { t: number; up: number[] }[] = [];
  const proc = spawnPlan(inNs(lan.ns, process.execPath, [script, ...targets]), { stdout: (l) => samples.push(JSON.parse(l) as { t: number; up: number[] }), stderr: () => undefined });
  return { proc, samples };
}

async function rollingUpgradeTest(t: import('ava').ExecutionContext, p: NonNullable<typeof pair>): Promise<void> {
  const v2 = await upgradeBundle(img, '0.2.0', 'test-amd64.yaml', (m) => t.log(m));
  // The operator's key, trusted on both nodes (in /etc, persistent): the image trusts none.
  const pub = readFileSync(v2.publicKey, 'utf8').trim().split('\n');
  for (const s of [p.s1, p.s2]) {
    await s.check(`install -d -m 0755 /etc/geminik8s/upgrade-keys && printf '%s\\n' '${pub[0]}' '${pub[1]}' > /etc/geminik8s/upgrade-keys/e2e.pub`);
    t.log(`${(await s.check('hostname')).trim()}: ${(await s.check('df -h --output=avail,target /var/lib/geminik8s | tail -n1')).trim()} free`);
  }
  const { proc: writer, acks, errors: writerErrors } = await startVipWriter(lan, clusterDir, NET.vip, join(work, 'writer.mjs'));
  const sampler = startUpSampler([`${NET.node1}:5432`, `${NET.node2}:5432`]);
  for (const s of shells.splice(0)) s.close();
  try {
    await until('20 acknowledged writes through the VIP', 5 * 60_000, async () => (acks.length >= 20 ? true : undefined));
    const started = Date.now();
    const out: string[] = [];
    const progress: string[] = [];
    const progressAt: number[] = [];
    const run = spawnPlan(inNs(lan.ns, process.execPath, [join(ROOT, 'bin/geminik8s.js'), 'upgrade', '--cluster', join(clusterDir, 'cluster.yaml'), '--bundle', v2.bundle, '--timeout', '25m', '--json']), {
      stdout: (l) => out.push(l),
      stderr: (l) => {
        progress.push(l);
        progressAt.push(Date.now());
      },
    });
    const code = await run.exited;
    const seconds = (Date.now() - started) / 1000;
    t.log(`geminik8s upgrade: exit ${code} after ${seconds.toFixed(0)} s wall\n${progress.join('\n')}`);
    t.is(code, 0, out.join('\n'));
    const result = JSON.parse(out.join('\n')) as { done: boolean; outcomes: { node: string; action: string; done: boolean; slot?: string; stageSeconds?: number; blessSeconds?: number }[] };
    t.true(result.done);
    t.deepEqual(result.outcomes.map((o) => [o.node, o.action, o.slot]), [['node1', 'upgrade', 'B'], ['node2', 'upgrade', 'B']], 'the follower (node1) first, then the leader');

    // Both nodes boot slot B blessed on 0.2.0; node1, upgraded first, leads after node2's switchover.
    const s1 = await GuestShell.open(p.node1.consoleSocket!, SHELL_TIMEOUT);
    shells.push(s1);
    const s2 = await GuestShell.open(p.node2.consoleSocket!, SHELL_TIMEOUT);
    shells.push(s2);
    for (const s of [s1, s2]) {
      const st = JSON.parse(await s.check('node /usr/lib/geminik8s/agent.mjs upgrade status --json')) as { boot: { state: string; booted: string }; slots: { A: string; B: string } };
      t.like(st, { boot: { state: 'steady', booted: 'B' }, slots: { A: '0.1.0', B: '0.2.0' } });
    }
    // Each reboot began with the follower's leave (docs/failover.md): its word in the journal of
    // the boot it left, and its leader's answer. node1 went first (node2 led, in its boot before
    // its own upgrade); node2 went as node1's follower after the switchover.
    const agentLines = async (s: GuestShell, boot: string): Promise<string> => (await s.check(`journalctl -b ${boot} -u geminik8s-agent -o cat --no-pager | grep -E 'that this standby stops|stops \\(clean shutdown\\)' || true`)).trim();
    // node2's boot before its upgrade holds both its answer to node1 and its own word to node1.
    const leaves = { node1Before: await agentLines(s1, '-1'), node2Before: await agentLines(s2, '-1'), node1Now: await agentLines(s1, '0') };
    t.log(`leaves:\n${Object.entries(leaves).map(([k, v]) => `${k}: ${v || '(nothing)'}`).join('\n')}`);
    t.regex(leaves.node2Before, /node1 stops \(clean shutdown\)/, 'node2 turned synchronous commit off when node1 left');
    t.regex(leaves.node1Now, /node2 stops \(clean shutdown\)/, 'node1 turned synchronous commit off when node2 left');
    t.is(await sql(s1, 'select pg_is_in_recovery()'), 'f', 'node1 leads');
    t.regex(await sql(s1, "select application_name || ' ' || state || ' ' || sync_state from pg_stat_replication"), /^node2 streaming sync$/m);

    await until('the writer to go on after the upgrade', 5 * 60_000, async () => (acks.filter((a) => a.t > Date.now() - 20_000).length >= 10 ? true : undefined));
    writer.kill('SIGTERM');
    await writer.exited;
    const during = acks.filter((a) => a.t >= started);
    const gap = longestGap(during.map((a) => a.t));
    const maxAck = acks.at(-1)!.id;
    t.log(`writer: ${acks.length} acknowledged writes, ${during.length} during the upgrade; longest gap between two acknowledged writes ${(gap / 1000).toFixed(2)} s; ${writerErrors.length} errors (last: ${writerErrors.at(-1) ?? 'none'})`);
    // Where each pause of the writer fell: after which step of the upgrade.
    const pauses: string[] = [];
    for (let i = 1; i < during.length; i++) {
      const from = during[i - 1]!.t;
      const ms = during[i]!.t - from;
      if (ms < 2000) continue;
      let k = progressAt.length - 1;
      while (k >= 0 && progressAt[k]! > from) k--;
      pauses.push(`${(ms / 1000).toFixed(2)} s from +${((from - started) / 1000).toFixed(0)} s, after "${k >= 0 ? progress[k] : 'the start'}"`);
    }
    t.log(`writer pauses of 2 s or more: ${pauses.length ? `\n${pauses.join('\n')}` : 'none'}`);
    t.is(await sql(s1, `select count(*) from harness_writes where id <= ${maxAck}`, 'kine'), String(maxAck), 'every acknowledged write is on the primary');

    sampler.proc.kill('SIGTERM');
    const window = sampler.samples.filter((x) => x.t >= started && x.t <= started + seconds * 1000);
    const bothDown = window.filter((x) => x.up.every((u) => u === 0));
    const oneDown = window.filter((x) => x.up.some((u) => u === 0));
    t.log(`PostgreSQL ports sampled ${window.length} times during the upgrade: one node away in ${oneDown.length}, both in ${bothDown.length}`);
    t.true(oneDown.length > 0, 'the sampler saw the reboots');
    t.is(bothDown.length, 0, `both nodes away at ${bothDown.map((x) => new Date(x.t).toISOString()).join(', ')}`);
  } finally {
    writer.kill('SIGKILL');
    sampler.proc.kill('SIGKILL');
  }
}

test.serial('a node booted with a bad seed ends "unconfigured", with the error on its serial console, nothing destroyed', async (t) => {
  const disk = await nodeDisk('node1');
  // Break the seed on the config partition: an address that is not one.
  const at = `${disk}@@${await partitionOffset(disk, 'CONFIG')}`;
  const local = join(tempDir(), 'seed.yaml');
  await runPlan({ cmd: 'mcopy', args: ['-i', at, '::geminik8s/seed.yaml', local] });
  writeFileSync(local, readFileSync(local, 'utf8').replace(`ip: ${NET.node1}`, 'ip: 192.168.77.300'));
  await runPlan({ cmd: 'mcopy', args: ['-o', '-i', at, local, '::geminik8s/seed.yaml'] });
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: disk, format: 'raw', write: true, console: true, name: 'bad-seed', serialLog: join(tempDir(), 'bad.log'), networks: [{ kind: 'socket', listen: await freePort(), mac: MAC.bad }] });
  vms.push(vm);
  const bad = await vm.waitFor(/geminik8s: UNCONFIGURED: the node seed is invalid/, BOOT_TIMEOUT);
  const detail = await vm.waitFor(/geminik8s:\s+.*seed\.yaml:\d+:\d+/, 60_000, { since: bad.end });
  t.log(detail.line);
  t.regex(detail.line, /192\.168\.77\.300/);
  const ready = await vm.waitFor(READY_MARKER, BOOT_TIMEOUT);
  t.like(parseMarkerFields(ready.line), { role: 'unconfigured' });
  const shell = await GuestShell.open(vm.consoleSocket!, SHELL_TIMEOUT);
  shells.push(shell);
  const status = JSON.parse(await shell.check('cat /var/lib/geminik8s/status.json'));
  t.is(status.state, 'unconfigured');
  t.is((await shell.run(`test -e ${DATA}`)).code, 1, 'no PostgreSQL data was created');
  // First boot ran in the agent, which exited 2 and was not started again (RestartPreventExitStatus).
  t.is((await shell.check('systemctl show -P ExecMainStatus geminik8s-agent')).trim(), '2');
  t.is((await shell.check('systemctl show -P NRestarts geminik8s-agent')).trim(), '0');
});
