import type { CommandPlan } from '../exec.ts';
import { CommandFailedError, runPlan } from '../exec.ts';

/**
 * A NoCloud seed ISO: ISO 9660 with Rock Ridge and Joliet, volume id `cidata` (what
 * cloud-init's NoCloud datasource looks for). File dates are pinned when SOURCE_DATE_EPOCH is set.
 */
export function seedIsoPlan(sourceDir: string, output: string, sourceDateEpoch?: string): CommandPlan {
  const args = ['-as', 'mkisofs', '-quiet', '-output', output, '-volid', 'cidata', '-joliet', '-rock'];
  if (sourceDateEpoch) {
    const stamp = new Date(Number(sourceDateEpoch) * 1000).toISOString().replace(/[-:T]/g, '').slice(0, 14) + '00';
    args.push('--modification-date=' + stamp, '-uid', '0', '-gid', '0');
  }
  args.push(sourceDir);
  return { cmd: 'xorriso', args, title: 'seed ISO' };
}

/**
 * Whether xorriso ended on a signal it caught (it prints `UNIX-SIGNAL: SIGSEGV`, aborts and exits 1)
 * rather than refusing its input: Debian's xorriso 1.5.4 crashed so once in the fast tier on a
 * loaded machine, and 1,560 runs of the same command afterwards did not.
 */
export function xorrisoCrashed(err: unknown): boolean {
  return err instanceof CommandFailedError && /UNIX-SIGNAL:\s+SIG/.test(err.stderrTail);
}

/** Make the seed ISO at `output` (overwritten): one more try after a crash, never after a refusal. */
export async function makeSeedIso(sourceDir: string, output: string, sourceDateEpoch?: string, plan = seedIsoPlan): Promise<void> {
  try {
    await runPlan(plan(sourceDir, output, sourceDateEpoch));
  } catch (err) {
    if (!xorrisoCrashed(err)) throw err;
    await runPlan(plan(sourceDir, output, sourceDateEpoch));
  }
}
