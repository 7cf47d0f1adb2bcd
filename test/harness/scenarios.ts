import { postgresqlSettings } from '#common/render/postgresql.ts';
import { dualWritable, type HarnessCluster, type LogEvent } from './cluster.ts';
import { blockPeer, cutOneWay, flushRules, ipOf, linkDown, linkUp, listRules, NET } from '#lab/netns.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What one fault did to the pair, measured from the writer's and samplers' records. */
export interface ScenarioResult {
  name: string;
  leaderBefore: string;
  leaderAfter: string;
  /** The longest gap between acknowledged writes from the fault to the end of the scenario (0 when writes never stopped). */
  outageSeconds: number;
  /** Fault healed → leader + sync standby recorded promotable again (or just a leader, see Scenario.recovery). */
  recoverySeconds: number;
  writesLost: number[];
  /** Writable samples of one node inside a period the other node was seen writable (must be 0). */
  dualPrimarySamples: number;
  /** Total time two nodes' writable periods overlapped, in ms (must be 0). */
  dualOverlapMs: number;
  /** Nodes whose sampler saw them writable after recovery (exactly the leader). */
  writableAtEnd: string[];
  acked: number;
  /** Figures and observations of the scenario's own (printed on the results line). */
  notes: string[];
  /** Everything that did not hold; empty when the scenario passed. */
  failures: string[];
}

/** The leader outcome a scenario expects. */
export type Expect = 'failover' | 'same' | 'either';

/** What a scenario's steps share. */
export interface Ctx {
  c: HarnessCluster;
  leader: string;
  follower: string;
  tFault: number;
  notes: string[];
  failures: string[];
  /** Processes a scenario stopped with SIGSTOP: continued by the cleanup whatever happens. */
  stopped: Set<number>;
}

export interface Scenario {
  name: string;
  expect: Expect;
  /** Inject the fault; returns once the fault is in place (or over, for short faults). */
  fault(x: Ctx): Promise<void>;
  /** Wait while the fault lasts: until the condition that shows its effect holds. */
  during?(x: Ctx): Promise<void>;
  heal?(x: Ctx): Promise<void>;
  /** After recovery: the scenario's own checks (push to x.failures) and figures (x.notes). */
  verify?(x: Ctx, r: ScenarioResult): Promise<void>;
  /** Recovered means a leader with a synchronous standby recorded promotable (default), or only a leader. */
  recovery?: 'healthy' | 'leader';
  /** The scenario starts from a healthy pair (default), or from whatever its predecessor left. */
  startsHealthy?: boolean;
}

function agentPid(c: HarnessCluster, node: string): number {
  const p = c.agents.get(node)?.pid;
  if (!p) throw new Error(`no agent process for ${node}`);
  return p;
}

/** A live agent's clean stop is never cut short by the unit's TimeoutStopSec (its EXTEND_TIMEOUT_USEC). */
function noStopTimeoutKill(x: Ctx, node: string): void {
  if (x.c.stopTimeoutKills.some((k) => k.node === node && k.at >= x.tFault)) x.failures.push(`${node}'s live agent was killed by its stop timeout (TimeoutStopSec, no EXTEND_TIMEOUT_USEC in time)`);
}

function stop(x: Ctx, pid: number): void {
  process.kill(pid, 'SIGSTOP');
  x.stopped.add(pid);
}

function cont(x: Ctx, pid: number): void {
  try {
    process.kill(pid, 'SIGCONT');
  } catch {
    // gone
  }
  x.stopped.delete(pid);
}

const failover = (c: HarnessCluster) => c.config.failover;

const waitNewLeader = (c: HarnessCluster, old: string): Promise<string> =>
  c.waitFor(`a leader other than ${old}`, async () => {
    const l = await c.leader();
    return l && l !== old ? l : undefined;
  }, 90_000);

/** The node's agent reports leader and its PostgreSQL is primary. */
const waitLeaderIs = (c: HarnessCluster, node: string, timeoutMs = 90_000): Promise<true> =>
  c.waitFor(`${node} leading`, async () => {
    const s = await c.status(node);
    return s?.role === 'leader' && s.postgres?.role === 'primary' ? true : undefined;
  }, timeoutMs);

const waitRole = (c: HarnessCluster, node: string, role: string, timeoutMs = 60_000): Promise<true> =>
  c.waitFor(`${node} in role ${role}`, async () => ((await c.status(node))?.role === role ? true : undefined), timeoutMs);

/** The leader turned synchronous replication off (after recording nobody promotable). */
const waitDegraded = (c: HarnessCluster, leader: string, timeoutMs = 60_000): Promise<true> =>
  c.waitFor(`${leader} degraded`, async () => {
    const s = await c.status(leader);
    return s?.role === 'leader' && (s.degraded === true || s.postgres?.synchronousStandbyNames === '') ? true : undefined;
  }, timeoutMs);

/** The witness refused `node` the lease with one of `codes`, at or after `since`. */
const waitRefused = (c: HarnessCluster, node: string, since: number, codes: string[], timeoutMs = 60_000): Promise<LogEvent> =>
  c.waitFor(`the witness refusing ${node} the lease (${codes.join('/')})`, async () =>
    c.eventsOf('witness', since, (e) => e.event === 'arbiter' && e.op === 'acquire' && e.node === node && codes.includes(e.code))[0], timeoutMs);

/** The node's agent logged an event matching, at or after `since`. */
const logged = (c: HarnessCluster, node: string, since: number, match: (e: Record<string, any>) => boolean): LogEvent | undefined =>
  c.eventsOf(node, since, match)[0];

/**
 * The old leader came back as a standby in place: by following the new leader as it was when
 * its WAL was a prefix, else through pg_rewind; a re-clone, or a follow that did not take (a
 * second rejoin after it), is a failure.
 */
async function rejoinedInPlace(x: Ctx): Promise<void> {
  const { c } = x;
  const rejoin = c.rejoinOf(x.leader, x.tFault);
  const status = await c.status(x.leader);
  const method = rejoin?.method ?? status?.lastRejoin?.method;
  const methods = c.eventsOf(x.leader, x.tFault, (e) => e.event === 'rejoin' && typeof e.method === 'string').map((r) => r.e.method as string);
  const copied = typeof rejoin?.copiedMB === 'number' ? `, copying ${rejoin.copiedMB} MB of ${rejoin.sourceMB} MB` : '';
  const reason = typeof rejoin?.reason === 'string' ? ` (${rejoin.reason})` : '';
  x.notes.push(`old leader rejoined through ${method ?? 'nothing'}${copied}${reason}`);
  if (method !== 'pg_rewind' && method !== 'follow') x.failures.push(`the old leader did not rejoin in place (log: ${JSON.stringify(rejoin)}, status lastRejoin: ${JSON.stringify(status?.lastRejoin)})`);
  if (methods.includes('pg_basebackup')) x.failures.push(`the old leader re-cloned (rejoin methods logged: ${methods.join(', ')})`);
  if (methods.includes('follow') && methods.some((m) => m !== 'follow')) x.failures.push(`following did not take: the old leader rejoined again (${methods.join(', ')})`);
}

/** pgbench's scale for the bulk load: about 650 MB of WAL, more than init's wal_keep_size (512 MB). */
const BULK_SCALE = 50;

type Role = 'leader' | 'follower' | 'witness';
const member = (x: Ctx, r: Role): string => (r === 'witness' ? 'witness' : r === 'leader' ? x.leader : x.follower);

/**
 * One direction of one link between leader, follower and witness stops delivering packets. Every
 * protocol here runs over TCP, which needs both directions to open a connection: a one-way cut
 * soon stops the link both ways. What differs is what gets through first (a request whose answer
 * is lost, segments retransmitted into the void).
 */
function oneWayCut(from: Role, to: Role): Scenario {
  const pair = new Set([from, to]);
  const peerLink = pair.has('leader') && pair.has('follower');
  const leaderWitness = pair.has('leader') && pair.has('witness');
  return {
    name: `one-way cut ${from} -> ${to}`,
    // The leader's renewals stop being granted (either way round): it fences by its own deadline,
    // the lease expires and the recorded synchronous standby takes over.
    expect: leaderWitness ? 'failover' : 'same',
    fault: (x) => cutOneWay(x.c.topology, member(x, from), member(x, to), true),
    during: async (x) => {
      const { c } = x;
      if (peerLink) {
        // The leader loses its standby and degrades; the follower, seeing no leader, asks the witness and is refused.
        await waitDegraded(c, x.leader);
        await waitRefused(c, x.follower, x.tFault, ['held', 'not-promotable']);
      } else if (leaderWitness) {
        await waitNewLeader(c, x.leader);
      } else {
        // Follower and witness: nothing should happen, the follower needs the witness only once
        // the leader is gone. Watched for a whole fence + lease period.
        await sleep(failover(c).fenceAfter + failover(c).promoteAfter);
      }
    },
    heal: (x) => cutOneWay(x.c.topology, member(x, from), member(x, to), false),
  };
}

const ROLES: Role[] = ['leader', 'follower', 'witness'];
const ONE_WAY_CUTS: Scenario[] = ROLES.flatMap((from) => ROLES.filter((to) => to !== from).map((to) => oneWayCut(from, to)));

/** Switchover answer, as the scenario saw it; an answer that is not {ok, reason, tookMs} is a failure. */
function noteAnswer(x: Ctx, r: { ok: boolean; reason: string; tookMs: number } | undefined): void {
  x.c.log(`switchover answered ${JSON.stringify(r)}`);
  if (!r) {
    x.notes.push('switchover: no answer');
    return;
  }
  if (typeof r.ok !== 'boolean') {
    x.notes.push(`switchover answered ${JSON.stringify(r).slice(0, 200)}`);
    x.failures.push(`the switchover request got no proper answer: ${JSON.stringify(r).slice(0, 300)}`);
    return;
  }
  x.notes.push(`switchover answer: ${r.ok ? 'ok' : 'refused'} after ${r.tookMs} ms (${r.reason})`);
}

export const SCENARIOS: Scenario[] = [
  {
    name: 'leader power loss',
    expect: 'failover',
    recovery: 'leader',
    fault: (x) => x.c.powerOff(x.leader),
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
    },
    // The old leader stays off here; the next scenario restarts it.
  },
  {
    name: 'restart of the old leader',
    expect: 'same',
    startsHealthy: false,
    // Runs on a pair whose follower is the powered-off old leader.
    fault: async (x) => {
      if (!x.c.agents.has(x.follower)) await x.c.powerOn(x.follower);
    },
  },
  {
    // systemd's watchdog (emulated by the harness) kills the frozen agent within its period
    // (fenceAfter / 2), PostgreSQL stops with it and the VIP leaves; the agent restarts 2 s
    // later. Whether it renews its lease before the follower takes it over is a race.
    name: 'agent frozen (SIGSTOP)',
    expect: 'either',
    fault: async (x) => stop(x, agentPid(x.c, x.leader)),
    during: async (x) => {
      await x.c.waitFor('the watchdog killing the frozen agent', async () => (x.c.watchdogKills.some((k) => k.node === x.leader && k.at >= x.tFault) ? true : undefined), 30_000);
      const k = x.c.watchdogKills.find((w) => w.node === x.leader && w.at >= x.tFault)!;
      x.notes.push(`watchdog killed the frozen agent ${((k.at - x.tFault) / 1000).toFixed(1)} s after the freeze (${k.silentMs} ms without a ping)`);
      await sleep(10_000);
    },
    heal: async (x) => {
      for (const pid of [...x.stopped]) cont(x, pid);
    },
  },
  {
    // A double fault: the leader's agent freezes, then the leader is cut from its peer. Its
    // PostgreSQL serves on (the follower, streaming from it, does not promote while it sees it),
    // until the cut: then the follower takes the lease once it expires. Only the watchdog's kill
    // of the frozen agent (PostgreSQL stops with it, BindsTo=) keeps the old primary from taking
    // writes meanwhile. With systemd's default WatchdogSignal (SIGABRT, pending on a stopped
    // process) that kill came TimeoutAbortSec (90 s) later.
    name: 'agent frozen, then the leader cut from its peer',
    expect: 'failover',
    fault: async (x) => {
      stop(x, agentPid(x.c, x.leader));
      await blockPeer(x.c.topology, x.leader, ipOf(x.follower), true);
    },
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
      await sleep(3_000);
    },
    heal: async (x) => {
      for (const pid of [...x.stopped]) cont(x, pid);
      await blockPeer(x.c.topology, x.leader, ipOf(x.follower), false);
    },
  },
  {
    name: 'PostgreSQL crash only',
    expect: 'same',
    fault: async (x) => {
      const p = x.c.postmasterPid(x.leader);
      if (!p) throw new Error(`no postmaster pid for ${x.leader}`);
      process.kill(p, 'SIGKILL');
    },
    during: () => sleep(8_000),
  },
  {
    name: 'full partition of the leader link',
    expect: 'failover',
    fault: (x) => linkDown(x.c.topology, x.leader),
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
      await sleep(3_000);
    },
    heal: (x) => linkUp(x.c.topology, x.leader),
  },
  {
    name: 'leader cut from the peer but not from the witness',
    expect: 'same',
    fault: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), true),
    during: () => sleep(15_000),
    heal: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), false),
  },
  {
    name: 'follower isolated',
    expect: 'same',
    fault: (x) => linkDown(x.c.topology, x.follower),
    during: () => sleep(15_000),
    heal: (x) => linkUp(x.c.topology, x.follower),
  },
  {
    // A reboot (an upgrade's, an operator's): systemd stops the agent (SIGTERM) and PostgreSQL
    // (SIGINT, BindsTo=) together. The agent tells the leader first, which turns synchronous
    // commit off before the standby is gone, so commits do not wait until it degrades.
    name: 'clean stop of the follower (a reboot)',
    expect: 'same',
    fault: (x) => x.c.cleanStop(x.follower),
    during: () => sleep(5_000),
    heal: (x) => x.c.powerOn(x.follower),
    verify: async (x) => {
      const left = logged(x.c, x.leader, x.tFault, (e) => e.event === 'standby-leaving');
      const degraded = logged(x.c, x.leader, x.tFault, (e) => e.event === 'degrade');
      if (!left) x.failures.push(`${x.leader} never logged that its standby leaves (event standby-leaving)`);
      else x.notes.push(`${x.leader} turned synchronous commit off ${left.at - x.tFault} ms after the stop began`);
      if (degraded) x.failures.push(`${x.leader} degraded (${degraded.e.reason ?? degraded.e.msg}): its commits waited for the stopping standby`);
      noStopTimeoutKill(x, x.follower);
    },
  },
  {
    // A reboot of the leader: its agent hands over to the synchronous standby before it stops
    // (PostgreSQL stops after it), so writes pause for a switchover, not for a lease expiry.
    name: 'clean stop of the leader (a reboot)',
    expect: 'failover',
    fault: (x) => x.c.cleanStop(x.leader),
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
    },
    heal: (x) => x.c.powerOn(x.leader),
    verify: async (x, r) => {
      const handover = logged(x.c, x.leader, x.tFault, (e) => e.event === 'stop-handover');
      if (!handover) x.failures.push(`${x.leader} never logged a handover at its stop (event stop-handover)`);
      else if (handover.e.ok !== true) x.failures.push(`${x.leader} did not hand over at its stop: ${handover.e.reason}`);
      else x.notes.push(`${x.leader} handed over in ${handover.e.tookMs} ms`);
      const done = logged(x.c, x.leader, x.tFault, (e) => e.event === 'switchover' && e.ok === true);
      const took = logged(x.c, x.follower, x.tFault, (e) => e.event === 'switchover-promoted');
      if (done) x.notes.push(`${x.leader}: ${JSON.stringify(done.e.steps)}`);
      if (took) x.notes.push(`${x.follower}: ${JSON.stringify(took.e.steps)}`);
      const bound = failover(x.c).fenceAfter / 1000;
      if (r.outageSeconds >= bound) x.failures.push(`writes paused ${r.outageSeconds.toFixed(1)} s, as long as a lease expiry (fenceAfter ${bound} s)`);
      noStopTimeoutKill(x, x.leader);
    },
  },
  {
    // The leader's agent freezes as its stop begins (SIGSTOP right after SIGTERM: a debugger, a
    // stuck loop). systemd runs no watchdog during a stop, so the unit's TimeoutStopSec, pushed
    // back only by a live agent's EXTEND_TIMEOUT_USEC, must kill it before the follower may take
    // the lease: with systemd's default 90 s its PostgreSQL stayed a writable primary meanwhile.
    name: 'leader agent frozen as its stop begins',
    expect: 'failover',
    fault: (x) => x.c.cleanStop(x.leader, { freeze: true }),
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
    },
    heal: (x) => x.c.powerOn(x.leader),
    verify: async (x) => {
      // The safety bound, not a speed target: the follower may be granted the lease promoteAfter
      // after the frozen leader's last renewal, which came before the SIGTERM.
      const kill = x.c.stopTimeoutKills.find((k) => k.node === x.leader && k.at >= x.tFault);
      const bound = failover(x.c).promoteAfter;
      if (!kill) x.failures.push(`${x.leader}'s frozen agent was not killed by its stop timeout`);
      else if (kill.at - x.tFault >= bound) x.failures.push(`${x.leader}'s frozen agent was killed ${((kill.at - x.tFault) / 1000).toFixed(1)} s after SIGTERM, when the follower could have had the lease for a while (promoteAfter ${bound / 1000} s): its PostgreSQL served on as a primary meanwhile`);
      else x.notes.push(`the stop timeout killed the frozen agent ${((kill.at - x.tFault) / 1000).toFixed(2)} s after SIGTERM`);
    },
  },
  {
    name: 'planned switchover',
    expect: 'failover',
    fault: async (x) => {
      const r = await x.c.switchover(x.leader);
      noteAnswer(x, r);
      if (!r || r.ok !== true) throw new Error(`switchover failed: ${JSON.stringify(r)}`);
      x.c.lastSwitchoverMs = r.tookMs;
      if (r.tookMs > 5000) x.failures.push(`a planned switchover took ${r.tookMs} ms (more than 5 s)`);
    },
  },
  {
    name: 'flapping leader link',
    expect: 'same',
    fault: async (x) => {
      for (let i = 0; i < 5; i++) {
        await linkDown(x.c.topology, x.leader);
        await sleep(1_500);
        await linkUp(x.c.topology, x.leader);
        await sleep(1_500);
      }
    },
  },
  ...ONE_WAY_CUTS,
  {
    // The double fault: the leader degraded (nobody promotable), then loses the witness too. It
    // fences by its deadline; the follower must not take over (its data may lack the async writes).
    name: 'peer cut, then witness cut',
    expect: 'same',
    fault: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), true),
    during: async (x) => {
      const { c } = x;
      await waitDegraded(c, x.leader);
      const t2 = Date.now();
      await blockPeer(c.topology, x.leader, ipOf('witness'), true);
      await waitRole(c, x.leader, 'fenced');
      await waitRefused(c, x.follower, t2, ['not-promotable']);
      x.notes.push('follower refused: not promotable');
    },
    heal: async (x) => {
      await blockPeer(x.c.topology, x.leader, ipOf('witness'), false);
      await blockPeer(x.c.topology, x.leader, ipOf(x.follower), false);
    },
  },
  {
    name: 'witness restart during a peer cut',
    expect: 'same',
    fault: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), true),
    during: async (x) => {
      const { c } = x;
      await waitDegraded(c, x.leader);
      const before = c.witnessRecord();
      await c.killWitness();
      const tKill = Date.now();
      c.startWitness();
      await c.waitFor('the witness listening again', async () => c.eventsOf('witness', tKill, (e) => e.event === 'start')[0], 30_000);
      const after = c.witnessRecord();
      x.notes.push(`witness down ${((Date.now() - tKill) / 1000).toFixed(1)} s; record before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
      if (!before || !after || after.generation !== before.generation || after.holder !== before.holder || after.promotable !== null) {
        x.failures.push(`the witness record did not survive its restart as it was: before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
      }
      // After the restart guard (the longest lease + 2 s) the follower is still refused.
      await waitRefused(c, x.follower, Date.now() + after!.ttlMs + 2000, ['held', 'not-promotable']);
    },
    heal: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), false),
  },
  {
    name: 'agent restart while degraded',
    expect: 'same',
    fault: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), true),
    during: async (x) => {
      const { c } = x;
      await waitDegraded(c, x.leader);
      await c.restartAgent(x.leader);
      await waitLeaderIs(c, x.leader);
      const s = await c.status(x.leader);
      x.notes.push(`after the restart: degraded ${s?.degraded}, promotable ${s?.lease?.promotable}`);
    },
    heal: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), false),
    // Recovery (leader + sync standby recorded promotable at the witness) is the check.
  },
  {
    // The peer cannot reach the witness, so it cannot take the lease: it refuses, and the old
    // leader takes its lease back.
    name: 'switchover refused (peer cannot reach the witness)',
    expect: 'same',
    fault: async (x) => {
      await blockPeer(x.c.topology, x.follower, ipOf('witness'), true);
      const r = await x.c.switchover(x.leader);
      noteAnswer(x, r);
      if (r?.ok !== false) x.failures.push(`expected a refused switchover, got ${JSON.stringify(r)}`);
    },
    heal: (x) => blockPeer(x.c.topology, x.follower, ipOf('witness'), false),
  },
  {
    // The peer's agent is frozen when the request arrives: no answer until the promote request
    // times out; the old leader takes its lease back. Continued later, the peer finds the lease
    // held and stays a follower.
    name: 'switchover timed out (peer agent frozen)',
    expect: 'same',
    fault: async (x) => {
      stop(x, agentPid(x.c, x.follower));
      const r = await x.c.switchover(x.leader, 90);
      noteAnswer(x, r);
      if (r?.ok !== false) x.failures.push(`expected a failed switchover, got ${JSON.stringify(r)}`);
    },
    heal: async (x) => {
      const tCont = Date.now();
      // The watchdog has most likely killed and restarted it meanwhile: continue whatever was stopped.
      for (const pid of [...x.stopped]) cont(x, pid);
      // Whatever the continued peer does with the stale promote request, the witness decides.
      await waitRole(x.c, x.follower, 'follower', 30_000);
      const asked = x.c.eventsOf('witness', tCont, (e) => e.event === 'arbiter' && e.op === 'acquire' && e.node === x.follower);
      x.notes.push(asked.length ? `continued peer asked for the lease: ${asked.map((a) => a.e.code).join(',')}` : 'continued peer answered as follower');
    },
  },
  {
    // The standby's replay is stopped: it never reaches the leader's last LSN; after 5 s writes resume on the leader.
    name: 'switchover timed out (standby does not catch up)',
    expect: 'same',
    fault: async (x) => {
      const startup = x.c.postgresChild(x.follower, 'startup');
      if (!startup) throw new Error(`no startup process on ${x.follower}`);
      stop(x, startup);
      // The premise is WAL the standby has not replayed. Stopped while idle it may already hold
      // everything; then the switchover rightly goes ahead, so wait for the workload to write past it.
      const replayed = await x.c.sql(x.follower, 'SELECT pg_last_wal_replay_lsn()', 'postgres');
      if (!replayed) throw new Error(`no replay position from ${x.follower}`);
      await x.c.waitFor(`${x.leader} past ${x.follower}'s replay position ${replayed}`, async () =>
        (await x.c.sql(x.leader, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '${replayed}') > 0`, 'postgres')) === 't' ? true : undefined, 30_000, 50);
      const r = await x.c.switchover(x.leader);
      noteAnswer(x, r);
      if (r?.ok !== false) x.failures.push(`expected a failed switchover, got ${JSON.stringify(r)}`);
    },
    heal: async (x) => {
      for (const p of [...x.stopped]) cont(x, p);
    },
  },
  {
    // The peer's agent dies (kill -9; its PostgreSQL stops through BindsTo) right after the witness
    // handed it the lease, before or while it promotes; systemd restarts it 2 s later and it
    // finishes the promotion. The old leader learns from the witness and follows.
    name: 'switchover: peer dies mid-switchover',
    expect: 'failover',
    fault: async (x) => {
      const { c } = x;
      const generation = c.witnessRecord()?.generation ?? 0;
      const answer = c.switchover(x.leader);
      const deadline = Date.now() + 30_000;
      let handed = false;
      while (Date.now() < deadline) {
        const r = c.witnessRecord();
        if (r && r.holder === x.follower && r.generation > generation) {
          handed = true;
          break;
        }
        await sleep(5);
      }
      if (!handed) throw new Error('the witness never handed the lease to the peer');
      const tKill = Date.now();
      await c.crashAgent(x.follower);
      const promoted = logged(c, x.follower, x.tFault, (e) => e.event === 'promoted');
      x.notes.push(`peer killed ${promoted ? 'after' : 'before'} it logged its promotion`);
      noteAnswer(x, await answer);
      await sleep(Math.max(0, 2000 - (Date.now() - tKill)));
      c.startAgent(x.follower);
    },
    during: async (x) => {
      await waitLeaderIs(x.c, x.follower);
    },
  },
  {
    // Failover after a leader power loss; the new leader's agent is killed as soon as its
    // PostgreSQL leaves recovery (PostgreSQL stops with it), and restarted. Then the old leader returns.
    name: 'crash right after promotion, then the old leader returns',
    expect: 'failover',
    fault: (x) => x.c.powerOff(x.leader),
    during: async (x) => {
      const { c } = x;
      // Polled back to back (one psql each time), to kill as close to the promotion as possible.
      await c.waitFor(`${x.follower} out of recovery`, async () => ((await c.sql(x.follower, 'SELECT pg_is_in_recovery()', 'postgres')) === 'f' ? true : undefined), 90_000, 0);
      const tKill = Date.now();
      await c.crashAgent(x.follower);
      const promoted = logged(c, x.follower, x.tFault, (e) => e.event === 'promoted');
      x.notes.push(`new leader's agent killed ${promoted ? 'after' : 'before'} it logged the promotion`);
      await sleep(Math.max(0, 2000 - (Date.now() - tKill)));
      c.startAgent(x.follower);
      await waitLeaderIs(c, x.follower);
    },
    heal: (x) => x.c.powerOn(x.leader),
    verify: (x) => rejoinedInPlace(x),
  },
  {
    // The follower's agent restarts while the leader is degraded (nobody promotable), then the
    // leader loses power: the follower must not promote, since it may lack the async writes.
    name: 'follower restart while not synchronous, then leader power loss',
    expect: 'same',
    fault: (x) => blockPeer(x.c.topology, x.leader, ipOf(x.follower), true),
    during: async (x) => {
      const { c } = x;
      await waitDegraded(c, x.leader);
      await c.waitFor('the witness recording nobody promotable', async () => (c.witnessRecord()?.promotable === null ? true : undefined), 30_000);
      await c.restartAgent(x.follower);
      await waitRole(c, x.follower, 'follower');
      const tOff = Date.now();
      await c.powerOff(x.leader);
      await waitRefused(c, x.follower, tOff, ['not-promotable'], 60_000);
      const rec = await c.sql(x.follower, 'SELECT pg_is_in_recovery()', 'postgres');
      x.notes.push(`follower refused: not promotable; its server in recovery: ${rec}`);
      if (rec !== 't') x.failures.push(`${x.follower}'s server left recovery (pg_is_in_recovery: ${rec})`);
    },
    heal: async (x) => {
      await flushRules(x.c.topology, x.leader);
      await x.c.powerOn(x.leader);
    },
  },
  {
    // The standby's WAL receiver is frozen: it stops acknowledging while its agent answers and the
    // connection stays up. Under syncPolicy degrade the write stall is bounded by degradeAfter +
    // a few check intervals.
    name: 'standby stops acknowledging WAL (walreceiver SIGSTOP)',
    expect: 'same',
    fault: async (x) => {
      const wr = x.c.postgresChild(x.follower, 'walreceiver');
      if (!wr) throw new Error(`no walreceiver on ${x.follower}`);
      stop(x, wr);
    },
    during: async (x) => {
      const { c } = x;
      await waitDegraded(c, x.leader);
      const target = c.acks.length + 20;
      await c.waitFor('writes after the degrade', async () => (c.acks.length >= target ? true : undefined), 30_000);
    },
    heal: async (x) => {
      for (const p of [...x.stopped]) cont(x, p);
    },
    verify: async (x, r) => {
      const f = failover(x.c);
      const bound = (f.degradeAfter + 4 * f.checkInterval) / 1000;
      x.notes.push(`longest write stall ${r.outageSeconds.toFixed(1)} s (bound degradeAfter + 4 intervals = ${bound.toFixed(1)} s)`);
      if (x.c.config.postgresql.syncPolicy !== 'degrade') return;
      if (r.outageSeconds > bound) x.failures.push(`write stall ${r.outageSeconds.toFixed(1)} s exceeds ${bound.toFixed(1)} s`);
    },
  },
  {
    // A bulk write leaves the leader's last checkpoint further back than wal_keep_size; then the
    // leader loses power. pg_rewind walks the old leader's WAL back to that checkpoint, so the
    // crash recovery before it must not recycle those segments: the old leader returns through
    // pg_rewind, not a re-clone of the whole database.
    name: 'leader power loss after a bulk load, then the old leader returns',
    expect: 'failover',
    fault: async (x) => {
      const { c } = x;
      await c.pgbenchInit(x.leader, BULK_SCALE);
      await c.waitFor('the standby synchronous after the load', async () => ((await c.healthyPair()) === x.leader ? true : undefined), 300_000);
      const back = Number(await c.sql(x.leader, 'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn) FROM pg_control_checkpoint()', 'postgres'));
      x.notes.push(`WAL since the leader's last checkpoint: ${(back / 1024 ** 2).toFixed(0)} MB`);
      // Otherwise a checkpoint came between: the scenario would not test what it is for.
      const keep = String(postgresqlSettings(c.config).wal_keep_size);
      const keepMB = /^(\d+)MB$/.exec(keep)?.[1];
      if (!keepMB) x.failures.push(`wal_keep_size is ${keep}, expected N MB`);
      else if (!(back > Number(keepMB) * 1024 ** 2)) x.failures.push(`the load left the last checkpoint only ${(back / 1024 ** 2).toFixed(0)} MB back, within wal_keep_size (${keep})`);
      await c.powerOff(x.leader);
    },
    during: async (x) => {
      await waitNewLeader(x.c, x.leader);
    },
    heal: (x) => x.c.powerOn(x.leader),
    verify: async (x, r) => {
      await rejoinedInPlace(x);
      // The scenarios after this one need not copy the load around.
      await x.c.sql(r.leaderAfter, 'DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers');
    },
  },
];

/** Outage = the longest gap between acknowledged writes from the fault on (the first gap counted from the fault itself). */
export function outageAfter(acks: { t: number }[], tFault: number): number {
  let longest = 0;
  let previous = tFault;
  for (const a of acks) {
    if (a.t < tFault) continue;
    longest = Math.max(longest, a.t - previous);
    previous = a.t;
  }
  return longest / 1000;
}

/** Put the harness back whatever a failed step left behind: cuts, frozen processes, dead processes. */
async function cleanup(x: Ctx): Promise<void> {
  const { c } = x;
  for (const p of [...x.stopped]) cont(x, p);
  for (const m of [...NET.nodes.map((n) => n.name), 'witness']) {
    const rules = await listRules(c.topology, m);
    if (/-A /.test(rules)) c.log(`[harness] cleanup: flushing rules in ${m}: ${rules.replaceAll('\n', '; ')}`);
    await flushRules(c.topology, m);
  }
  for (const n of NET.nodes) {
    await linkUp(c.topology, n.name);
    if (!c.agents.has(n.name)) c.startAgent(n.name);
  }
  if (!c.witnessRunning()) c.startWitness();
}

/**
 * Wait until recovered, but give up early on states that do not heal by themselves: a leader
 * left read-only, or a node whose PostgreSQL stays down, for 45 s.
 */
async function waitRecovered(c: HarnessCluster, what: string, recovered: () => Promise<string | undefined>, timeoutMs: number): Promise<string> {
  const stuckSince = new Map<string, number>();
  const stuck = (key: string, now: boolean): string | undefined => {
    if (!now) {
      stuckSince.delete(key);
      return undefined;
    }
    const since = stuckSince.get(key) ?? Date.now();
    stuckSince.set(key, since);
    return Date.now() - since > 45_000 ? key : undefined;
  };
  let gaveUp: string | undefined;
  const l = await c.waitFor(what, async () => {
    const leader = await recovered();
    if (leader) return leader;
    for (const n of NET.nodes) {
      const st = await c.status(n.name);
      gaveUp ??= stuck(`${n.name} leads read-only`, st?.role === 'leader' && st.postgres?.readOnly === true)
        ?? stuck(`${n.name}'s PostgreSQL stays down (role ${st?.role})`, Boolean(st) && st?.postgres?.up !== true && c.agents.has(n.name));
    }
    return gaveUp ? '' : undefined;
  }, timeoutMs);
  if (gaveUp || !l) throw new Error(`gave up waiting for ${what}: ${gaveUp} for 45 s`);
  return l;
}

/**
 * Last resort after a recorded failure, so that the suite goes on: put the harness back (cuts,
 * frozen processes), clear a leader left read-only, else re-clone the node that does not rejoin.
 * Every step is logged as REPAIR.
 */
async function repair(x: Ctx, what: string, recovered: () => Promise<string | undefined>): Promise<string> {
  const { c } = x;
  await cleanup(x);
  const leader = await c.waitFor('a leader', () => c.leader(), 60_000);
  const st = await c.status(leader);
  if (st?.postgres?.readOnly === true) {
    c.log(`[harness] REPAIR: ${leader} leads with default_transaction_read_only on; resetting it`);
    await c.sql(leader, 'ALTER SYSTEM RESET default_transaction_read_only', 'postgres');
    await c.sql(leader, 'SELECT pg_reload_conf()', 'postgres');
    x.notes.push(`REPAIRED: read-only cleared on ${leader} by the harness`);
    const l = await c.waitFor(what, recovered, 60_000).catch(() => undefined);
    if (l) return l;
  }
  await c.recloneNode(c.other(leader));
  x.notes.push(`REPAIRED: ${c.other(leader)} re-cloned by the harness`);
  return c.waitFor(`${what} after the repair`, recovered, 240_000);
}

/** Run one scenario on a healthy pair and measure it. Never throws for the scenario's own failures: they are in `failures`. */
export async function runScenario(c: HarnessCluster, s: Scenario, recoveryBoundMs = 120_000): Promise<ScenarioResult> {
  const leader = s.startsHealthy === false
    ? await c.waitFor('a leader', () => c.leader(), 90_000)
    : await c.waitFor('a healthy pair before the fault', () => c.healthyPair(), 120_000);
  const x: Ctx = { c, leader, follower: c.other(leader), tFault: 0, notes: [], failures: [], stopped: new Set() };
  c.log(`=== scenario: ${s.name} (leader ${leader})`);
  x.tFault = Date.now();
  try {
    await s.fault(x);
    await s.during?.(x);
  } catch (err) {
    x.failures.push(`fault: ${(err as Error).message}`);
  }
  try {
    await s.heal?.(x);
  } catch (err) {
    x.failures.push(`heal: ${(err as Error).message}`);
  }
  if (x.failures.some((f) => f.startsWith('fault:') || f.startsWith('heal:'))) await cleanup(x);
  const tHealed = Date.now();
  const recovered = (): Promise<string | undefined> => (s.recovery === 'leader' ? c.leader() : c.healthyPair());
  const what = s.recovery === 'leader' ? 'a leader' : 'leader + synchronous standby recorded promotable';
  let leaderAfter: string;
  let recoverySeconds: number;
  try {
    leaderAfter = await waitRecovered(c, what, recovered, recoveryBoundMs);
    recoverySeconds = (Date.now() - tHealed) / 1000;
  } catch (err) {
    recoverySeconds = (Date.now() - tHealed) / 1000;
    x.failures.push(`no recovery: ${(err as Error).message}`);
    leaderAfter = await repair(x, what, recovered);
  }
  // Let the writer land a few more writes on the settled pair before counting.
  const target = c.acks.length + 5;
  try {
    await c.waitFor('writes after recovery', async () => (c.acks.length >= target ? true : undefined), 30_000);
  } catch (err) {
    x.failures.push(`no acknowledged write within 30 s of recovery: ${(err as Error).message}`);
    await c.logVipState('no writes after recovery').catch(() => undefined);
    leaderAfter = await repair(x, what, recovered);
    await c.waitFor('writes after the repair', async () => (c.acks.length >= target ? true : undefined), 60_000).catch((e: Error) => x.failures.push(`still no writes: ${e.message}`));
  }
  const writableAtEnd = await c.writableNow();
  const acked = c.acks.length;
  for (const e of c.unexpectedExits.filter((u) => u.at >= x.tFault)) x.notes.push(`agent of ${e.node} exited by itself (${e.code}) and was restarted`);
  const writesLost = await c.missingAcks(leaderAfter, acked);
  const dual = dualWritable(c.samples, x.tFault - 1000);
  const result: ScenarioResult = {
    name: s.name, leaderBefore: leader, leaderAfter, outageSeconds: outageAfter(c.acks, x.tFault), recoverySeconds,
    writesLost, dualPrimarySamples: dual.samples, dualOverlapMs: dual.overlapMs, writableAtEnd, acked, notes: x.notes, failures: x.failures,
  };
  if (writableAtEnd.length !== 1 || writableAtEnd[0] !== leaderAfter) x.failures.push(`after recovery the writable nodes were [${writableAtEnd.join(', ')}], expected exactly the leader ${leaderAfter}`);
  if (s.expect === 'failover' && leaderAfter === leader) x.failures.push(`expected a failover, but ${leader} still leads`);
  if (s.expect === 'same' && leaderAfter !== leader) x.failures.push(`expected ${leader} to keep leading, but ${leaderAfter} leads`);
  try {
    await s.verify?.(x, result);
  } catch (err) {
    x.failures.push(`verify: ${(err as Error).message}`);
  }
  c.log(`=== result: ${JSON.stringify(result)}`);
  return result;
}

/** One line per scenario for the end of the run. */
export function resultLine(r: ScenarioResult): string {
  return `${r.name}: leader ${r.leaderBefore} -> ${r.leaderAfter}, outage ${r.outageSeconds.toFixed(1)} s, recovered in ${r.recoverySeconds.toFixed(1)} s, lost ${r.writesLost.length}, dual-writable samples ${r.dualPrimarySamples} (${r.dualOverlapMs} ms)${r.notes.length ? `; ${r.notes.join('; ')}` : ''}${r.failures.length ? ` FAILED: ${r.failures.join(' | ')}` : ''}`;
}
