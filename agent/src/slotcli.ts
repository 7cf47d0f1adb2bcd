import { ExitCode, GeminiError } from '#common/errors.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { bootSettings } from '#common/schema/agent.ts';
import { armTry, bless, describeChanges, readBootState, type BootChange, type BootState } from './bootslot.ts';
import { loadAgentConfig } from './context.ts';
import { option, stderrLine, stdoutLine, type Printer } from './args.ts';

export const SLOT_USAGE = `usage: geminik8s-agent slot status [--json] [--config FILE]
       geminik8s-agent slot arm A|B [--tries N] [--json] [--config FILE]
       geminik8s-agent slot bless [--json] [--config FILE]`;


function describeState(b: BootState): string[] {
  const lines = [
    `state:   ${b.state}`,
    `booted:  ${b.booted ?? '-'}`,
    `active:  ${b.active ?? '-'}`,
    `try:     ${b.trySlot ? `${b.trySlot} (${b.tryCount ?? 0} tries left)` : '-'}`,
    `detail:  ${b.detail}`,
  ];
  if (b.pending) lines.push(`remembered try: slot ${b.pending.slot}, ${b.pending.how} ${b.pending.at}${b.pending.from ? ` from slot ${b.pending.from}` : ''}`);
  if (b.last) lines.push(`last try: slot ${b.last.slot} ${b.last.outcome} ${b.last.at}`);
  return lines;
}

function describeChange(c: BootChange): string[] {
  return [c.reason, ...describeChanges(c.changes).map((l) => `  ${l}`)];
}

/**
 * `slot status|arm|bless`: the operator's view of A/B boot counting and the manual levers
 * for recovery. Returns the exit code; messages go to `print` (stdout) and `printError`.
 */
export async function slotCommand(
  args: string[],
  print: Printer = stdoutLine,
  printError: Printer = stderrLine,
): Promise<number> {
  const [sub, ...rest] = args;
  const json = rest.includes('--json');
  const usage = (): number => {
    printError(SLOT_USAGE);
    return ExitCode.invalidInput;
  };
  if (sub !== 'status' && sub !== 'arm' && sub !== 'bless') return usage();
  try {
    const settings = bootSettings(await loadAgentConfig(option(rest, '--config') ?? NODE_PATHS.agentConfig));
    switch (sub) {
      case 'status': {
        // Read-only: the agent is the one that records tries it observes.
        const state = await readBootState(settings, { remember: false });
        if (json) print(JSON.stringify(state, null, 2));
        else describeState(state).forEach((l) => print(l));
        return ExitCode.ok;
      }
      case 'arm': {
        const slot = rest[0];
        if (!slot || slot.startsWith('--')) return usage();
        const triesText = option(rest, '--tries') ?? '3';
        if (!/^\d+$/.test(triesText)) throw new GeminiError(`--tries must be a whole number, not ${JSON.stringify(triesText)}`, ExitCode.invalidInput);
        const change = await armTry(settings, slot, Number(triesText));
        if (json) print(JSON.stringify(change, null, 2));
        else describeChange(change).forEach((l) => print(l));
        return ExitCode.ok;
      }
      case 'bless': {
        const change = await bless(settings);
        if (json) print(JSON.stringify(change, null, 2));
        else describeChange(change).forEach((l) => print(l));
        // Nothing to do in steady is success; a state that cannot be blessed is not.
        return change.changed || change.before.state === 'steady' ? ExitCode.ok : ExitCode.refused;
      }
    }
  } catch (err) {
    if (err instanceof GeminiError) {
      printError(`geminik8s-agent slot: ${err.message}`);
      return err.exitCode;
    }
    throw err;
  }
}
