import { existsSync } from 'node:fs';
import { Command, Option } from 'commander';
import { assertKnownNode, loadCluster, loadClusterSecrets, loadClusterTls } from '#common/config.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { seedPayloadJson } from '#common/install/payload.ts';
import { isIso9660, seedIntoIso } from '../../iso/iso.ts';
import { seedIntoImage } from '../../seed/into-image.ts';
import { writeSeed, writeSeedMedium } from '../../seed/write.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface SeedOptions {
  cluster?: string;
  node: string;
  out: string;
  format: 'dir' | 'iso' | 'medium';
  into?: string;
  force?: boolean;
}

export function registerSeed(program: Command, ctx: () => CliContext): void {
  program
    .command('seed')
    .description("write one node's seed: NoCloud user-data, meta-data, network-config and the geminik8s node settings")
    .option('--cluster <file>', 'cluster.yaml (default: --config)')
    .requiredOption('--node <name>', 'the node the seed is for')
    .requiredOption('--out <path>', 'output directory (--format dir), ISO file (--format iso), FAT image (--format medium), or disk image (--into)')
    .option('--into <image>', 'write the seed into a copy (at --out) of this raw disk image (its config partition) or installer ISO (build --output iso)')
    .addOption(new Option('--format <format>', 'a directory to copy onto the config partition, a cidata ISO for virtual machines, or a GKSEED medium for an installer ISO without a seed').choices(['dir', 'iso', 'medium']).default('dir'))
    .option('--force', 'replace an existing output')
    .action(async (opts: SeedOptions) => {
      const c = ctx();
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      assertKnownNode(cluster, opts.node, clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const tls = await loadClusterTls(clusterFile, cluster, opts.node);
      const files = renderSeedFiles(cluster, opts.node, secrets, tls);
      const disk = cluster.nodes.find((n) => n.name === opts.node)?.install?.disk;
      const warnNoRules = (): void => {
        if (!disk) c.logger.warn(`${opts.node} has no install.disk rules in ${clusterFile}: the ISO's installer will refuse to choose a disk unless its kernel command line gives rules (geminik8s.install.serial=...)`);
      };
      if (opts.into && existsSync(opts.into) && isIso9660(opts.into)) {
        warnNoRules();
        await seedIntoIso(opts.into, opts.out, seedPayloadJson(opts.node, disk, files), Boolean(opts.force));
        c.logger.info(`wrote ${opts.out}: ${opts.into} carrying the seed of ${opts.node} (0600); it installs ${opts.node} onto the disk its rules name`);
        c.print(opts.out);
        return;
      }
      if (opts.into) {
        await seedIntoImage(opts.into, opts.out, files, Boolean(opts.force));
        c.logger.info(`wrote ${opts.out}: ${opts.into} with the seed of ${opts.node} on its config partition (0600)`);
        c.print(opts.out);
        return;
      }
      if (opts.format === 'medium') {
        warnNoRules();
        await writeSeedMedium(opts.out, seedPayloadJson(opts.node, disk, files), Boolean(opts.force));
        c.logger.info(`wrote ${opts.out}: a FAT image labelled GKSEED with the seed of ${opts.node} (0600); write it to a USB stick and attach it beside an installer ISO that carries no seed`);
        c.print(opts.out);
        return;
      }
      await writeSeed(opts.out, files, opts.format, Boolean(opts.force));
      c.logger.info(`wrote the seed of ${opts.node} to ${opts.out} (${opts.format === 'iso' ? 'cidata ISO, 0600' : 'directory 0700, seed.yaml 0600'})`);
      c.print(opts.out);
    });
}
