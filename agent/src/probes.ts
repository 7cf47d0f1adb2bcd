import { connect } from 'node:net';
import { readdir, access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import { lastLines, runPlan, type CommandPlan } from '../../common/exec.ts';
import { NODE_PATHS } from '../../common/render/paths.ts';
import type { NodeContext } from './context.ts';
import type { PeerView } from './decide.ts';
import { withClient } from './postgres.ts';
import { requestLease } from './witness.ts';

/** GET the peer agent's /v1/status; undefined when it does not answer in time. */
export async function probePeerApi(ctx: NodeContext): Promise<PeerView | undefined> {
  try {
    const res = await fetch(`http://${ctx.peer.ip}:${ctx.peerApiPort}/v1/status`, {
      headers: { authorization: `Bearer ${ctx.secrets.agentToken}` },
      signal: AbortSignal.timeout(ctx.spec.failover.checkTimeout),
    });
    if (res.status !== 200) return undefined;
    const s = (await res.json()) as { role: PeerView['role']; generation: number; postgres?: { timeline?: number; lsn?: string }; standbySyncState?: string };
    return { role: s.role, generation: s.generation, timeline: s.postgres?.timeline, lsn: s.postgres?.lsn, standbySyncState: s.standbySyncState };
  } catch {
    return undefined;
  }
}

/** Query the peer's PostgreSQL directly: is it up, is it primary, and are we its sync standby. */
export async function probePeerPg(ctx: NodeContext): Promise<{ ok: boolean; primary?: boolean; ourSyncState?: string }> {
  try {
    return await withClient(ctx, ctx.peer.ip, async (c) => {
      const r = await c.query(`SELECT pg_is_in_recovery() AS rec, (SELECT sync_state FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1) AS ss`, [ctx.self.name]);
      const row = r.rows[0] as { rec: boolean; ss: string | null };
      return { ok: true, primary: !row.rec, ourSyncState: row.ss ?? undefined };
    });
  } catch {
    return { ok: false };
  }
}

export async function probeIcmp(host: string, timeoutMs: number): Promise<boolean> {
  const r = await runPlan({ cmd: 'ping', args: ['-n', '-c', '1', '-W', String(Math.max(1, Math.ceil(timeoutMs / 1000))), host] }, { allowFailure: true, timeoutMs: timeoutMs + 1000 }).catch(() => undefined);
  return r?.exitCode === 0;
}

export function probeTcp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export async function probeHttp(url: string, timeoutMs: number): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return res.status < 500;
  } catch {
    return false;
  }
}

export interface WitnessResult {
  ok: boolean;
  leaseHeld?: boolean;
  leaseDeadline?: number;
  holder?: string;
}

/**
 * Ask the witness. A lease witness is asked for the lease only by a node that wants to be (or
 * stays) the writable primary; others just check that it answers.
 */
export async function probeWitness(ctx: NodeContext, wantLease: boolean): Promise<WitnessResult> {
  const w = ctx.witness;
  const timeout = ctx.spec.failover.checkTimeout;
  switch (w.kind) {
    case 'icmp':
      return { ok: await probeIcmp(w.host, timeout) };
    case 'tcp':
      return { ok: await probeTcp(w.host, w.port, timeout) };
    case 'http':
      return { ok: await probeHttp(w.url, timeout) };
    case 'none':
      return { ok: false };
    case 'lease': {
      if (!wantLease) return { ok: await probeHttp(new URL('/healthz', w.url).toString(), timeout) };
      try {
        const r = await requestLease(w.url, ctx.secrets.agentToken, ctx.spec.name, ctx.self.name, ctx.spec.failover.fenceAfter, timeout);
        return { ok: true, leaseHeld: r.granted, leaseDeadline: r.deadline, holder: r.holder };
      } catch {
        return { ok: false, leaseHeld: false };
      }
    }
  }
}

/** Run the operator's health scripts (executables in checksDir); each must exit 0. */
export async function runUserChecks(dir: string, timeoutMs: number): Promise<{ name: string; ok: boolean }[]> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch {
    return [];
  }
  const results: { name: string; ok: boolean }[] = [];
  for (const name of names) {
    const file = join(dir, name);
    try {
      await access(file, constants.X_OK);
    } catch {
      continue;
    }
    const r = await runPlan({ cmd: file, args: [] }, { allowFailure: true, timeoutMs }).catch(() => undefined);
    results.push({ name, ok: r?.exitCode === 0 });
  }
  return results;
}

/** Ask K3s whether its API server is ready (`k3s kubectl get --raw /readyz` answers "ok"). */
export function k3sReadyPlan(k3sBin = NODE_PATHS.k3sBin, kubeconfig = NODE_PATHS.kubeconfig): CommandPlan {
  return { cmd: k3sBin, args: ['kubectl', 'get', '--raw', '/readyz'], env: { KUBECONFIG: kubeconfig }, title: 'k3s readyz' };
}

/** Run the readiness plan: ready only on exit 0 with "ok"; the detail says what failed. */
export async function probeK3sReady(timeoutMs: number, plan = k3sReadyPlan()): Promise<{ ready: boolean; detail: string }> {
  try {
    const r = await runPlan(plan, { allowFailure: true, timeoutMs });
    if (r.exitCode === 0 && r.stdout.trim() === 'ok') return { ready: true, detail: 'ok' };
    return { ready: false, detail: lastLines(`${r.stdout}\n${r.stderr}`.trim(), 1) || `exit code ${r.exitCode}` };
  } catch (err) {
    return { ready: false, detail: (err as Error).message.split('\n')[0]! };
  }
}
