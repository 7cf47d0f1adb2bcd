import { ExitCode, GeminiError } from '#common/errors.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { bootSettings, upgradeSettings, type AgentConfig } from '#common/schema/agent.ts';
import type { NodeSeed } from '#common/schema/seed.ts';
import { duration } from '#common/schema/units.ts';
import { describeChanges } from './bootslot.ts';
import { apiScheme, loadAgentConfig, loadSeedFile } from './context.ts';
import { httpCall } from '#common/httpclient.ts';
import { runSucJob } from './sucjob.ts';
import { stageUpgrade, upgradeStatus } from './upgrade.ts';
import { option, stderrLine, stdoutLine, type Printer } from './args.ts';

export const UPGRADE_USAGE = `usage: geminik8s-agent upgrade stage BUNDLE [--retry] [--json] [--config FILE]
       geminik8s-agent upgrade status [--json] [--config FILE]
       geminik8s-agent upgrade suc-job BUNDLE [--poll DURATION] [--deadline DURATION] [--config FILE]`;

/** POST /v1/upgrade/reboot to this node's own agent, with the admin token from its seed. */
async function rebootThroughAgent(config: AgentConfig, seed: NodeSeed): Promise<{ ok: boolean; reason: string; retryable?: boolean }> {
  const port = config.listen.port ?? seed.cluster.agent.port;
  // The node's certificate covers 127.0.0.1; without TLS only in development plaintext.
  const scheme = apiScheme({ spec: seed.cluster, ...(seed.tls ? { tls: seed.tls } : {}) });
  let res: { status: number; text: string };
  try {
    res = await httpCall(`${scheme}://127.0.0.1:${port}/v1/upgrade/reboot`, {
      method: 'POST',
      headers: { authorization: `Bearer ${seed.secrets.adminToken}`, 'content-type': 'application/json' },
      body: '{}',
      timeoutMs: 120_000,
      ...(seed.tls ? { tls: { ca: seed.tls.ca } } : {}),
    });
  } catch (err) {
    return { ok: false, reason: `the local agent does not answer: ${(err as Error).message}`, retryable: true };
  }
  try {
    const r = JSON.parse(res.text) as { ok?: boolean; reason?: string; error?: string; retryable?: boolean };
    return { ok: r.ok === true, reason: r.reason ?? r.error ?? `HTTP ${res.status}`, retryable: r.retryable ?? res.status !== 403 };
  } catch {
    return { ok: false, reason: `HTTP ${res.status}: ${res.text.slice(0, 200)}`, retryable: true };
  }
}

function durationOption(rest: string[], name: string, fallback: string): number {
  const text = option(rest, name) ?? fallback;
  const parsed = duration.safeParse(text);
  if (!parsed.success || parsed.data <= 0) throw new GeminiError(`${name}: expected a duration such as 10s or 55m, found ${JSON.stringify(text)}`, ExitCode.invalidInput);
  return parsed.data;
}


/**
 * `upgrade stage|status|suc-job`: write a verified bundle to the passive slot and arm a try of
 * it (the reboot is left to the caller), show the last upgrade and its outcome, or run the
 * System Upgrade Controller job's loop (stage, reboot when the pair allows, wait for the blessing).
 */
export async function upgradeCommand(
  args: string[],
  print: Printer = stdoutLine,
  printError: Printer = stderrLine,
): Promise<number> {
  const [sub, ...rest] = args;
  const json = rest.includes('--json');
  if (sub !== 'stage' && sub !== 'status' && sub !== 'suc-job') {
    printError(UPGRADE_USAGE);
    return ExitCode.invalidInput;
  }
  try {
    const config = await loadAgentConfig(option(rest, '--config') ?? NODE_PATHS.agentConfig);
    const boot = bootSettings(config);
    const upgrade = upgradeSettings(config);
    if (sub === 'status') {
      const { boot: state, record, slots } = await upgradeStatus(upgrade, boot);
      if (json) print(JSON.stringify({ boot: state, slots, upgrade: record }, null, 2));
      else {
        const c = record.current;
        print(`boot:     ${state.state} (booted ${state.booted ?? '-'}, active ${state.active ?? '-'})`);
        print(`slots:    A ${slots.A ?? '?'}, B ${slots.B ?? '?'}`);
        print(c ? `upgrade:  ${c.image} ${c.version} on slot ${c.slot}: ${c.state} at ${c.at}${c.reason ? ` (${c.reason})` : ''}` : 'upgrade:  none staged');
        for (const f of record.failed) print(`failed:   ${f.version} at ${f.at}: ${f.reason}`);
      }
      return ExitCode.ok;
    }
    const bundle = rest.find((a, i) => !a.startsWith('--') && !['--config', '--poll', '--deadline'].includes(rest[i - 1] ?? ''));
    if (!bundle) {
      printError(UPGRADE_USAGE);
      return ExitCode.invalidInput;
    }
    if (sub === 'suc-job') {
      const pollMs = durationOption(rest, '--poll', '10s');
      const deadlineMs = durationOption(rest, '--deadline', '55m');
      // SUC sets SYSTEM_UPGRADE_NODE_NAME to the node the job was scheduled on.
      const scheduledOn = process.env.SYSTEM_UPGRADE_NODE_NAME;
      // Read once: the job asks its agent again every poll while the reboot is refused.
      const seed = await loadSeedFile(config.seedFile);
      const { node } = seed;
      if (scheduledOn && scheduledOn !== node) throw new GeminiError(`SYSTEM_UPGRADE_NODE_NAME is ${scheduledOn}, but this host is ${node}: the job would upgrade the wrong node`, ExitCode.refused);
      const log = (l: string): void => printError(`suc-job ${node}: ${l}`);
      log(`plan ${process.env.SYSTEM_UPGRADE_PLAN_NAME ?? '-'} version ${process.env.SYSTEM_UPGRADE_PLAN_LATEST_VERSION ?? '-'}, bundle ${bundle}`);
      const r = await runSucJob(
        { bundle, upgrade, boot, pollMs, deadlineMs },
        { requestReboot: () => rebootThroughAgent(config, seed), sleep: (ms) => new Promise((res) => setTimeout(res, ms)), now: () => Date.now(), log },
      );
      (r.exitCode === ExitCode.ok ? print : printError)(`suc-job ${node}: ${r.exitCode === ExitCode.ok ? 'done' : 'failed'}: ${r.reason}`);
      return r.exitCode;
    }
    const r = await stageUpgrade({ bundle, upgrade, boot, retryFailed: rest.includes('--retry'), progress: json ? undefined : (l) => printError(l) });
    if (json) print(JSON.stringify(r, null, 2));
    else {
      print(`staged ${r.version} (running ${r.runningVersion}) on slot ${r.slot}, signed by ${r.signer}; reboot to try it`);
      print(`  verify ${r.ms.verify} ms, root ${r.ms.root} ms, kernel and initrd ${r.ms.boot} ms`);
      for (const l of describeChanges(r.arm.changes)) print(`  ${l}`);
    }
    return ExitCode.ok;
  } catch (err) {
    if (err instanceof GeminiError) {
      printError(`geminik8s-agent upgrade: ${err.message}`);
      return err.exitCode;
    }
    throw err;
  }
}
