import { Command, Option } from 'commander';
import { assertKnownNode, loadCluster, loadClusterSecrets, loadClusterTls } from '#common/config.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { seedIntoImage } from '../../seed/into-image.ts';
import { writeSeed } from '../../seed/write.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface SeedOptions {
  cluster?: string;
  node: string;
  out: string;
  format: 'dir' | 'iso';
  into?: string;
  force?: boolean;
}

export function registerSeed(program: Command, ctx: () => CliContext): void {
  program
    .command('seed')
    .description("write one node's seed: NoCloud user-data, meta-data, network-config and the geminik8s node settings")
    .option('--cluster <file>', 'cluster.yaml (default: --config)')
    .requiredOption('--node <name>', 'the node the seed is for')
    .requiredOption('--out <path>', 'output directory (--format dir), ISO file (--format iso), or disk image (--into)')
    .option('--into <image>', 'write the seed into the config partition of a copy of this raw disk image (at --out)')
    .addOption(new Option('--format <format>', 'a directory to copy onto the config partition, or a cidata ISO for virtual machines').choices(['dir', 'iso']).default('dir'))
    .option('--force', 'replace an existing output')
    .action(async (opts: SeedOptions) => {
      const c = ctx();
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      assertKnownNode(cluster, opts.node, clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const tls = await loadClusterTls(clusterFile, cluster, opts.node);
      const files = renderSeedFiles(cluster, opts.node, secrets, tls);
      if (opts.into) {
        await seedIntoImage(opts.into, opts.out, files, Boolean(opts.force));
        c.logger.info(`wrote ${opts.out}: ${opts.into} with the seed of ${opts.node} on its config partition (0600)`);
        c.print(opts.out);
        return;
      }
      await writeSeed(opts.out, files, opts.format, Boolean(opts.force));
      c.logger.info(`wrote the seed of ${opts.node} to ${opts.out} (${opts.format === 'iso' ? 'cidata ISO, 0600' : 'directory 0700, seed.yaml 0600'})`);
      c.print(opts.out);
    });
}
