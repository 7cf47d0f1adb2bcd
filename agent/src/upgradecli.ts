import { ExitCode, GeminiError } from '../../common/errors.ts';
import { NODE_PATHS } from '../../common/render/paths.ts';
import { bootSettings, upgradeSettings } from '../../common/schema/agent.ts';
import { describeChanges } from './bootslot.ts';
import { loadAgentConfig } from './context.ts';
import { stageUpgrade, upgradeStatus } from './upgrade.ts';
import { option, stderrLine, stdoutLine, type Printer } from './args.ts';

export const UPGRADE_USAGE = `usage: geminik8s-agent upgrade stage BUNDLE [--retry] [--json] [--config FILE]
       geminik8s-agent upgrade status [--json] [--config FILE]`;


/**
 * `upgrade stage|status`: write a verified bundle to the passive slot and arm a try of it
 * (the reboot is left to the caller), or show the last upgrade and its outcome.
 */
export async function upgradeCommand(
  args: string[],
  print: Printer = stdoutLine,
  printError: Printer = stderrLine,
): Promise<number> {
  const [sub, ...rest] = args;
  const json = rest.includes('--json');
  if (sub !== 'stage' && sub !== 'status') {
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
    const bundle = rest.find((a, i) => !a.startsWith('--') && rest[i - 1] !== '--config');
    if (!bundle) {
      printError(UPGRADE_USAGE);
      return ExitCode.invalidInput;
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
