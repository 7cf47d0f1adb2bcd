import { chmod, copyFile, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Command } from 'commander';
import { loadCluster, loadClusterSecrets, loadClusterTls, secretsDirOf } from '#common/config.ts';
import { ExitCode, GeminiError, ValidationError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { withNodeAddress } from '#common/membership.ts';
import { reissueNodeCert } from '../../init/tls.ts';
import { clusterTextWithAddress, planReplaceNode, requestReplacePeer } from '../../ops/replace.ts';
import { collectStatus, renderStatusTable } from '../../ops/status.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { seedOutputExists, writeSeed } from '../../seed/write.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';

interface ReplaceOptions {
  cluster?: string;
  old: string;
  newIp: string;
  newMac?: string;
  seedOut?: string;
  dryRun?: boolean;
  force?: boolean;
}

/** `cluster.yaml.bak-20261202T031500Z`: the file before replace-node changed it. */
function backupName(clusterFile: string, now: Date): string {
  return `${clusterFile}.bak-${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`;
}

export function registerReplaceNode(program: Command, ctx: () => CliContext): void {
  program
    .command('replace-node')
    .description('a node is gone for good: give its name to a new box at a new address; the survivor keeps leading (no PostgreSQL restart) and the new box joins as its standby')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token and the CA')
    .requiredOption('--old <node>', 'the node that is gone')
    .requiredOption('--new-ip <ip>', "the new box's address (same subnet)")
    .option('--new-mac <mac>', "the new box's MAC address, for per-MAC seeds and the network match")
    .option('--seed-out <dir>', "where the new box's seed goes (default: seed-<node> beside cluster.yaml)")
    .option('--dry-run', 'show the status, the rule and the steps; change nothing')
    .option('--force', 'replace an existing --seed-out')
    .action(async (opts: ReplaceOptions) => {
      const c = ctx();
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      // The new address is checked by cluster.yaml's own rules before anything is asked of anybody.
      const change = withNodeAddress(cluster, opts.old, opts.newIp, opts.newMac);
      if (!change.spec) throw new GeminiError(`${clusterFile}: --old ${opts.old} --new-ip ${opts.newIp}${opts.newMac ? ` --new-mac ${opts.newMac}` : ''} is refused:\n${change.problems.map((p) => `  ${p}`).join('\n')}`, ExitCode.invalidInput);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const fetcher = await operatorFetcher(clusterFile, cluster);
      const seedOut = opts.seedOut ?? join(dirname(clusterFile), `seed-${opts.old}`);
      if (!opts.force && seedOutputExists(seedOut, 'dir')) throw new GeminiError(`--seed-out ${seedOut} already exists; pass --force to replace it, or another --seed-out`, ExitCode.refused);
      const now = new Date();
      const backup = backupName(clusterFile, now);
      const moved = cluster.nodes.find((n) => n.name === opts.old)!.ip !== opts.newIp;
      const status = await collectStatus(cluster, secrets, fetcher, now);
      const plan = planReplaceNode(status, opts.old, opts.newIp, seedOut, moved ? backup : '(unchanged)');
      c.logger.info(`rule: ${plan.rule}`);
      if (!plan.ok) {
        c.print(renderStatusTable(status));
        throw new GeminiError(`refusing to replace ${opts.old}: ${plan.rule}`, ExitCode.refused);
      }
      c.print(`replace ${opts.old} (${status.nodes.find((n) => n.name === opts.old)!.ip} -> ${opts.newIp}), ${plan.survivor} stays the leader:\n${plan.steps.map((s, i) => `  ${i + 1}. ${s}`).join('\n')}`);
      if (opts.dryRun) return;

      // cluster.yaml's new text is made and validated before the survivor is asked: a file that
      // would not validate stops everything here.
      const text = await readFile(clusterFile, 'utf8');
      const edited = clusterTextWithAddress(clusterFile, text, opts.old, opts.newIp, opts.newMac);
      if (!edited.text || !edited.cluster) throw new ValidationError(edited.issues);

      // The survivor first: it checks again that nothing answers as the old node. Asking it
      // twice is harmless (the second time it has nothing to change), so a failure further
      // down is fixed by running the command again.
      const r = await requestReplacePeer(cluster, secrets, plan.survivor!, { name: opts.old, ip: opts.newIp, ...(opts.newMac ? { mac: opts.newMac } : {}) }, fetcher);
      if (!r.ok) throw new GeminiError(`${plan.survivor} did not take ${opts.old}'s new address: ${r.reason}`, ExitCode.refused);
      c.logger.info(`${plan.survivor}: ${r.reason}`);

      if (moved || text !== edited.text) {
        const mode = (await stat(clusterFile)).mode & 0o777;
        await copyFile(clusterFile, backup);
        await chmod(backup, mode);
        await writeFileAtomic(clusterFile, edited.text, mode, { syncDir: true });
        c.logger.info(`${clusterFile}: ${opts.old} at ${opts.newIp}; the previous file is ${backup}`);
      }
      const updated = edited.cluster;
      if (!updated.agent.insecurePlaintext) {
        // A new key as well as a new address: the old box's key is not trusted to be gone with it.
        const { written } = await reissueNodeCert(secretsDirOf(clusterFile, updated), updated, opts.old);
        c.logger.info(`a new certificate for ${opts.old} at ${opts.newIp}: ${written.join(', ')}`);
      }
      const tls = await loadClusterTls(clusterFile, updated, opts.old);
      await writeSeed(seedOut, renderSeedFiles(updated, opts.old, secrets, tls), 'dir', Boolean(opts.force));
      c.logger.info(`the seed of the new ${opts.old}: ${seedOut} (directory 0700, seed.yaml 0600)`);
      c.print(`next: put the seed on the new box, for example\n  geminik8s flash IMAGE --device DEV --seed-cluster ${clusterFile} --node ${opts.old}\n  (or copy ${seedOut} onto its config partition); it clones ${plan.survivor} and becomes its synchronous standby. Watch with: geminik8s status --cluster ${clusterFile} --watch`);
    });
}
