import { join } from 'node:path';
import { loadCluster, loadSecrets, SECRET_FILES, secretsDirOf, tlsFiles } from '#common/config.ts';
import { runPlan, spawnPlan, type CommandPlan, type RunningProcess } from '#common/exec.ts';
import { kinePassword } from '#common/render/k3s.ts';
import type { GuestShell } from '#qemu/index.ts';
import { destroyNamespaces, inNs } from '#lab/netns.ts';
import { GUEST_WITNESS_TLS } from '#lab/guest-cluster.ts';

/**
 * A private L2 for QEMU guests: a network namespace holding a bridge with one tap device per
 * guest, and an address of the host's own on that bridge (for the witness and a writer run
 * with `ip netns exec`). Nothing of it is visible outside the namespace; QEMU runs inside it
 * (BootOptions.netns) to open its tap.
 */
export interface GuestLan {
  ns: string;
  bridge: string;
  /** The host side's address on the bridge. */
  hostIp: string;
  /** The tap device of each guest, by guest name. */
  taps: Record<string, string>;
}

const ip = (...args: string[]): CommandPlan => ({ cmd: 'ip', args });

/** The plans that build the LAN (pure: a unit test snapshots them). */
export function guestLanPlans(ns: string, host: { ip: string; prefix: number }, guests: string[]): { lan: GuestLan; plans: CommandPlan[] } {
  const bridge = 'br0';
  const taps = Object.fromEntries(guests.map((g, i) => [g, `gktap${i + 1}`]));
  const plans: CommandPlan[] = [
    ip('netns', 'add', ns),
    ip('-n', ns, 'link', 'set', 'lo', 'up'),
    // No STP: ports forward at once instead of after the 15 s listening and learning delays.
    ip('-n', ns, 'link', 'add', bridge, 'type', 'bridge', 'stp_state', '0'),
    ip('-n', ns, 'addr', 'add', `${host.ip}/${host.prefix}`, 'dev', bridge),
    ip('-n', ns, 'link', 'set', bridge, 'up'),
  ];
  for (const tap of Object.values(taps)) {
    plans.push(ip('-n', ns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap'), ip('-n', ns, 'link', 'set', tap, 'master', bridge), ip('-n', ns, 'link', 'set', tap, 'up'));
  }
  return { lan: { ns, bridge, hostIp: host.ip, taps }, plans };
}

/** Build the LAN, after removing a leftover namespace of the same name. */
export async function createGuestLan(ns: string, host: { ip: string; prefix: number }, guests: string[]): Promise<GuestLan> {
  await destroyNamespaces(ns);
  const { lan, plans } = guestLanPlans(ns, host, guests);
  for (const p of plans) await runPlan(p, { timeoutMs: 10_000 });
  return lan;
}

/** Remove the LAN: every process left in it is killed, and its taps and bridge go with it. */
export async function destroyGuestLan(lan: GuestLan): Promise<void> {
  await destroyNamespaces(lan.ns);
}

/**
 * Who answers ARP for `address` on the LAN, as MAC addresses (lower case), seen from the host
 * side: `arping` in the namespace, `count` requests. Empty when nobody answers.
 */
export async function arpOwners(lan: GuestLan, address: string, count = 2): Promise<string[]> {
  const r = await runPlan({ cmd: 'ip', args: ['netns', 'exec', lan.ns, 'arping', '-c', String(count), '-w', String(count + 2), '-I', lan.bridge, address] }, { allowFailure: true, timeoutMs: 30_000 });
  const macs = new Set<string>();
  for (const m of r.stdout.matchAll(/\[([0-9a-f:]{17})\]/gi)) macs.add(m[1]!.toLowerCase());
  return [...macs];
}

/** A process started on the LAN's host side, and what it printed. */
export interface LanProcess {
  proc: RunningProcess;
  lines: string[];
}

/**
 * `geminik8s-agent witness` on the LAN's host side, from the agent bundle the image ships,
 * with the token and credentials of `clusterDir` (initGuestCluster with a witness). Its
 * records go to `stateDir`.
 */
export async function startLanWitness(lan: GuestLan, clusterDir: string, listen: string, stateDir: string, agentBundle: string): Promise<LanProcess> {
  const file = join(clusterDir, 'cluster.yaml');
  const cluster = await loadCluster(file);
  const tokenFile = join(secretsDirOf(file, cluster), SECRET_FILES.witnessToken);
  const lines: string[] = [];
  const proc = spawnPlan(inNs(lan.ns, process.execPath, [agentBundle, 'witness', '--listen', listen, '--token-file', tokenFile, '--tls-dir', join(clusterDir, GUEST_WITNESS_TLS), '--state-dir', stateDir]), {
    stdout: (l) => lines.push(l),
    stderr: (l) => lines.push(l),
  });
  return { proc, lines };
}

/** An acknowledged write of the VIP writer: its id and when the acknowledgement came (ms). */
/** A writer through the VIP: what it acknowledged, its errors, and (started with `verify`) its count through the VIP once stopped. */
export interface VipWriter {
  proc: RunningProcess;
  acks: Ack[];
  errors: string[];
  /** The writer's failed attempts with their times (ms since the epoch, the writer's clock). */
  errorsAt: { t: number; error: string }[];
  /** Stop the writer; it counts, through the VIP, how many of the ids it acknowledged are there. */
  stopAndVerify(): Promise<{ last: number; kept: number }>;
}

export interface Ack {
  id: number;
  t: number;
}

/**
 * When the writes resumed after an outage that began at `cutAt`: the acknowledgement that ends the
 * longest gap after it. Not the first acknowledgement after `cutAt`, which can be a write the old
 * leader acknowledged as it went down, milliseconds later (a demo run reported "0.0 s").
 */
export function outageEnd(acks: readonly Ack[], cutAt: number): Ack | undefined {
  let best: { ack: Ack; gap: number } | undefined;
  acks.forEach((a, i) => {
    const gap = a.t - (acks[i - 1]?.t ?? cutAt);
    if (a.t > cutAt && (!best || gap > best.gap)) best = { ack: a, gap };
  });
  return best?.ack;
}

/**
 * The harness writer (`writerBundle`, see bundleProbe) on the LAN's host side, inserting through
 * `vip` as Kine on node1 does: user kine, TLS verify-full against the cluster CA, node1's
 * certificate. Every acknowledged insert lands in `acks`; ids are sequential, so 1..last
 * were all acknowledged.
 */
export async function startVipWriter(lan: GuestLan, clusterDir: string, vip: string, writerBundle: string, options: { intervalMs?: number; verify?: boolean } = {}): Promise<VipWriter> {
  const file = join(clusterDir, 'cluster.yaml');
  const secretsDir = secretsDirOf(file, await loadCluster(file));
  const secrets = await loadSecrets(secretsDir);
  const cert = tlsFiles(secretsDir, 'node1');
  const acks: Ack[] = [];
  const errors: string[] = [];
  const errorsAt: { t: number; error: string }[] = [];
  const out: { verified?: { last: number; kept: number } } = {};
  const proc = spawnPlan(
    inNs(lan.ns, process.execPath, [writerBundle, vip, '5432', 'kine', kinePassword(secrets.postgresPassword), 'kine', '3600', String(options.intervalMs ?? 200)], {
      WRITER_CA_FILE: tlsFiles(secretsDir, 'ca').cert,
      WRITER_CERT_FILE: cert.cert,
      WRITER_KEY_FILE: cert.key,
      ...(options.verify ? { WRITER_VERIFY: '1' } : {}),
    }),
    {
      stdout: (l) => {
        let m: { ack?: number; t: number; error?: string; verified?: { last: number; kept: number } };
        try {
          m = JSON.parse(l) as typeof m;
        } catch {
          errors.push(l);
          return;
        }
        if (m.ack) acks.push({ id: m.ack, t: m.t });
        else if (m.verified) out.verified = m.verified;
        else if (m.error) {
          errors.push(m.error);
          errorsAt.push({ t: m.t, error: m.error });
        }
      },
      stderr: (l) => errors.push(l),
    },
  );
  return {
    proc, acks, errors, errorsAt,
    async stopAndVerify() {
      proc.kill('SIGTERM');
      await proc.exited;
      if (!out.verified) throw new Error(`the writer ended without counting its writes through the VIP: ${errors.slice(-3).join('; ')}`);
      return out.verified;
    },
  };
}

/** Where the test image's PostgreSQL lives (Debian's postgresql-17 in trixie). */
export const GUEST_PG_BIN = '/usr/lib/postgresql/17/bin';

/** One query as the guest's postgres user over its local socket (psql -XtA), trimmed. */
export async function guestSql(shell: GuestShell, query: string, db = 'postgres'): Promise<string> {
  return (await shell.check(`runuser -u postgres -- ${GUEST_PG_BIN}/psql -XtA -d ${db} -c "${query}"`)).trim();
}

/** The guest's uptime in seconds (/proc/uptime). */
export async function guestUptime(shell: GuestShell): Promise<number> {
  return Number((await shell.check('cut -d" " -f1 /proc/uptime')).trim());
}

/** The monotonic time (guest seconds since boot) of the first agent journal line containing `text`, if any. */
export async function agentJournalAt(shell: GuestShell, text: string): Promise<number | undefined> {
  const r = await shell.run(`journalctl -b -u geminik8s-agent -o short-monotonic --no-pager | grep -m1 -F '${text}'`);
  const m = /^\[\s*(\d+\.\d+)\]/.exec(r.output.trim());
  return m ? Number(m[1]) : undefined;
}
