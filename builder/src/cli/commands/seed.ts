import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { chmod, mkdir, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Command, Option } from 'commander';
import { assertKnownNode, loadCluster, loadClusterSecrets, loadClusterTls } from '../../../../common/config.ts';
import { ExitCode, GeminiError } from '../../../../common/errors.ts';
import { runPlan } from '../../../../common/exec.ts';
import { writeFileAtomic } from '../../../../common/fsutil.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { seedIsoPlan } from '../../seed/iso.ts';
import { seedIntoImage } from '../../seed/into-image.ts';
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
      const exists = opts.format === 'dir' ? existsSync(opts.out) && readdirSync(opts.out).length > 0 : existsSync(opts.out);
      if (exists && !opts.force) throw new GeminiError(`${opts.out} already exists; pass --force to replace it`, ExitCode.refused);

      // Build in a private staging directory next to the output, then move into place.
      const staging = opts.format === 'dir' ? `${opts.out.replace(/\/+$/, '')}.tmp-${process.pid}` : mkdtempSync(join(tmpdir(), 'gk-seed-'));
      await rm(staging, { recursive: true, force: true });
      await mkdir(staging, { recursive: true, mode: 0o700 });
      try {
        for (const f of files) await writeFileAtomic(join(staging, f.path), f.content, f.mode);
        await chmod(join(staging, 'geminik8s'), 0o700);
        if (opts.format === 'iso') {
          const tmpIso = join(dirname(opts.out), `.${basename(opts.out)}.tmp-${process.pid}`);
          await runPlan(seedIsoPlan(staging, tmpIso, process.env.SOURCE_DATE_EPOCH));
          // The ISO carries secrets: owner-only, like the seed directory.
          await chmod(tmpIso, 0o600);
          await rename(tmpIso, opts.out);
        } else {
          if (existsSync(opts.out)) await rm(opts.out, { recursive: true, force: true });
          await rename(staging, opts.out);
        }
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
      c.logger.info(`wrote the seed of ${opts.node} to ${opts.out} (${opts.format === 'iso' ? 'cidata ISO, 0600' : 'directory 0700, seed.yaml 0600'})`);
      c.print(opts.out);
    });
}
