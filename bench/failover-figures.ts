// What the failover benchmarks share: the systems they compare and the figures they take.
import { HarnessCluster, type PairHarness } from '#test/harness/cluster.ts';
import { PatroniCluster, PATRONI_PROFILES } from '#test/harness/patroni.ts';
import { PgAutoFailoverCluster, PGAF_PROFILES } from '#test/harness/pgaf.ts';

/** `geminik8s`, `patroni:PROFILE` or `pg_auto_failover:PROFILE`; exits 2 (after saying what is accepted) for anything else. */
export function checkSystems(flag: string, systems: string[]): void {
  for (const sys of systems) {
    const [name, profile] = sys.split(':');
    const known = (name === 'geminik8s' && profile === undefined)
      || (name === 'patroni' && profile !== undefined && profile in PATRONI_PROFILES)
      || (name === 'pg_auto_failover' && profile !== undefined && profile in PGAF_PROFILES);
    if (!known) {
      console.error(`${flag}: expected geminik8s, patroni:${Object.keys(PATRONI_PROFILES).join('|')} or pg_auto_failover:${Object.keys(PGAF_PROFILES).join('|')}, found ${JSON.stringify(sys)}`);
      process.exit(2);
    }
  }
}

/** The harness that runs one system (checked by checkSystems) in `dir`, its namespaces named from `prefix` plus a letter. */
export function harnessFor(system: string, dir: string, prefix: string): PairHarness {
  const [name, profile] = system.split(':') as ['geminik8s' | 'patroni' | 'pg_auto_failover', (keyof typeof PATRONI_PROFILES & keyof typeof PGAF_PROFILES) | undefined];
  if (name === 'patroni') return new PatroniCluster(dir, profile!, `${prefix}p`);
  if (name === 'pg_auto_failover') return new PgAutoFailoverCluster(dir, profile!, `${prefix}a`);
  return new HarnessCluster(dir, `${prefix}g`);
}

/** What a system ran with, for the benchmark's JSON. */
export function settingsOf(system: string, c: PairHarness): Record<string, unknown> {
  const profile = system.split(':')[1] as keyof typeof PATRONI_PROFILES & keyof typeof PGAF_PROFILES;
  if (c instanceof HarnessCluster) return { failover: c.config.failover, syncPolicy: c.config.postgresql.syncPolicy, source: 'geminik8s init defaults' };
  if (c instanceof PgAutoFailoverCluster) return { ...PGAF_PROFILES[profile], profile, client: 'multi-host, target_session_attrs=read-write (no VIP)', source: 'test/harness/pgaf.ts (unset: pg_auto_failover 2.0 defaults)' };
  return { ...PATRONI_PROFILES[profile], profile, synchronous_mode: true, source: 'test/harness/patroni.ts' };
}

/** Nearest-rank percentile. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Fault → first acknowledged write after the outage it caused. */
export function failoverAfter(acks: { t: number }[], tFault: number): number {
  const after = acks.filter((a) => a.t > tFault);
  let previous = tFault;
  let longestEnd = after[0]?.t ?? NaN;
  let longest = -1;
  for (const a of after) {
    if (a.t - previous > longest) {
      longest = a.t - previous;
      longestEnd = a.t;
    }
    previous = a.t;
  }
  return (longestEnd - tFault) / 1000;
}

/** One leader power loss and the old leader's power-on, measured from the writer's acknowledgements. */
export interface PowerLoss {
  tFault: number;
  /** Power-on of the old leader (rejoin counts from here). */
  tOn: number;
  failoverSeconds: number;
  /** To the pair ready for the next automatic failover by the system's own rule (its healthyPair). */
  rejoinSeconds: number;
  /** To the old leader streaming as a synchronous standby in pg_stat_replication (syncPair): the same test for every system. */
  rejoinSyncSeconds: number;
  newLeader: string;
  /** MB the old leader's NIC received from its power-on until it was a synchronous standby again. */
  rejoinReceivedMB: number;
  /** What the old leader's system ran to rejoin (`pg_rewind`, `pg_basebackup`), from its log. */
  rejoinTools: string[];
  writesLost: number;
  dualPrimarySamples: number;
}

/**
 * Power off `leader`, wait for another leader and writes on it, power the old one on and wait
 * until it is a synchronous standby again. `slow` stretches the waits (large databases).
 */
export async function leaderPowerLoss(c: PairHarness, leader: string, what: string, slow = 1): Promise<PowerLoss> {
  const tFault = Date.now();
  c.log(`=== ${what}: power loss of ${leader}`);
  await c.powerOff(leader);
  await c.waitFor('a new leader', async () => {
    const l = await c.leader();
    return l && l !== leader ? l : undefined;
  }, 240_000 * slow);
  const ackedBefore = c.acks.length;
  await c.waitFor('writes on the new leader', async () => (c.acks.length > ackedBefore + 10 ? true : undefined), 120_000 * slow);
  const failoverSeconds = failoverAfter(c.acks, tFault);
  const rx0 = await c.nicReceivedBytes(leader);
  const tOn = Date.now();
  await c.powerOn(leader);
  // Two instants: the old leader streaming as a synchronous standby (the same test for every
  // system), and the pair ready for the next automatic failover by the system's own rule.
  let syncAt: number | undefined;
  const newLeader = await c.waitFor('old leader back as synchronous standby', async () => {
    if (syncAt === undefined && (await c.syncPair())) syncAt = Date.now();
    return syncAt === undefined ? undefined : c.healthyPair();
  }, 300_000 * slow);
  const rejoinSeconds = (Date.now() - tOn) / 1000;
  const rejoinSyncSeconds = (syncAt! - tOn) / 1000;
  const rejoinReceivedMB = Math.round((await c.nicReceivedBytes(leader) - rx0) / 1024 ** 2);
  const lost = await c.missingAcks(newLeader);
  return { tFault, tOn, failoverSeconds, rejoinSeconds, rejoinSyncSeconds, newLeader, rejoinReceivedMB, rejoinTools: c.rejoinToolsOf(leader, tOn), writesLost: lost.length, dualPrimarySamples: c.dualPrimarySamples(tFault - 1000) };
}
