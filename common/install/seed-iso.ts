import type { CommandPlan } from '../exec.ts';

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
