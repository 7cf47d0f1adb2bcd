import { readdir, access, constants, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { lastLines, runPlan, type CommandPlan } from '#common/exec.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import type { UserCheckResult } from './bootgate.ts';

/**
 * Names run-parts(8) runs: letters, digits, `_` and `-` only, so an editor's backup (`50-x~`),
 * a package manager's leftover (`50-x.dpkg-old`) or a dotfile is never taken for a check.
 */
const CHECK_NAME = /^[A-Za-z0-9_-]+$/;

/**
 * Run the operator's health scripts (executable regular files in checksDir named as run-parts
 * would run them, in name order); each must exit 0 within `timeoutMs`. A failure says how: the
 * exit code and the last line the script printed, or the timeout.
 */
export async function runUserChecks(dir: string, timeoutMs: number): Promise<UserCheckResult[]> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch {
    return [];
  }
  const results: UserCheckResult[] = [];
  for (const name of names) {
    const file = join(dir, name);
    if (!CHECK_NAME.test(name)) continue;
    try {
      if (!(await stat(file)).isFile()) continue;
      await access(file, constants.X_OK);
    } catch {
      continue;
    }
    const r = await runPlan({ cmd: file, args: [] }, { allowFailure: true, timeoutMs }).catch((err: Error) => err);
    if (r instanceof Error) {
      const timedOut = r instanceof GeminiError && r.exitCode === ExitCode.timeout;
      results.push({ name, ok: false, detail: timedOut ? `no answer within ${timeoutMs} ms` : r.message.split('\n')[0] });
      continue;
    }
    if (r.exitCode === 0) {
      results.push({ name, ok: true });
      continue;
    }
    const said = lastLines(r.stderr.trim() ? r.stderr : r.stdout, 1).trim();
    results.push({ name, ok: false, detail: `exit ${r.exitCode}${said ? `: ${said.slice(0, 200)}` : ''}` });
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
