import { createReadStream, existsSync, mkdtempSync, realpathSync, statSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { Command } from 'commander';
import { assertKnownNode, loadCluster, loadClusterSecrets, loadClusterTls } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan, streamPlan } from '#common/exec.ts';
import { fileHead } from '#common/fsutil.ts';
import { describeTarget, lsblkPlan, parseLsblk, refusals } from '../../ops/flash.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { everyTenPercent, partitionOffset, readBack, seedFilesDiffering, systemDevices, writeSeedFiles, writeStream, zstdFrameContentSize } from '#common/install/media.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface FlashOptions {
  device: string;
  seedCluster?: string;
  node?: string;
  yes?: boolean;
}

const CHUNK = 4 * 1024 * 1024;

/** Stream `image` (raw, or zstd decompressed on the way) into `device`; the sha256 of what was written. */
async function writeImage(image: string, zst: boolean, device: string, total: number, progress: (done: number) => void): Promise<string> {
  const source = zst ? streamPlan({ cmd: 'zstd', args: ['-d', '-c', '-q', image] }) : undefined;
  const input = source ? source.stdout : createReadStream(image, { highWaterMark: CHUNK });
  const { sha256 } = await writeStream(input as AsyncIterable<Buffer>, device, total, progress, image);
  await source?.done;
  return sha256;
}

export function registerFlash(program: Command, ctx: () => CliContext): void {
  program
    .command('flash <image>')
    .description('write a raw (or .raw.zst) image onto a whole disk, such as a USB stick, read it back and check its sha256; optionally with a node\'s seed on its config partition')
    .requiredOption('--device <dev>', 'the whole disk to write, such as /dev/sdb (everything on it is lost)')
    .option('--seed-cluster <file>', 'cluster.yaml: also write the seed of --node onto the config partition')
    .option('--node <name>', 'the node whose seed --seed-cluster writes')
    .option('--yes', 'do not ask for confirmation')
    .action(async (image: string, opts: FlashOptions) => {
      const c = ctx();
      // Every input is checked before anything is written.
      if (!existsSync(image) || !statSync(image).isFile()) throw new GeminiError(`${image}: no such image file`, ExitCode.invalidInput);
      // 18 bytes hold a zstd frame header with its content size (the installer reads the same).
      const head = fileHead(image, 18);
      if (head.subarray(0, 4).toString('latin1') === 'QFI\xfb') throw new GeminiError(`${image}: a qcow2 image; flash takes the .raw or .raw.zst image`, ExitCode.invalidInput);
      const zst = head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));
      let imageBytes = statSync(image).size;
      if (zst) {
        const size = zstdFrameContentSize(head);
        if (size === undefined) throw new GeminiError(`${image}: zstd does not record the decompressed size; decompress it first (zstd -d)`, ExitCode.invalidInput);
        imageBytes = size;
      }
      if ((opts.seedCluster === undefined) !== (opts.node === undefined)) throw new GeminiError('--seed-cluster and --node go together: the seed of which node, from which cluster', ExitCode.invalidInput);
      let seed: ReturnType<typeof renderSeedFiles> | undefined;
      if (opts.seedCluster && opts.node) {
        const clusterFile = resolveClusterFile(opts.seedCluster, c);
        const cluster = await loadCluster(clusterFile);
        assertKnownNode(cluster, opts.node, clusterFile);
        seed = renderSeedFiles(cluster, opts.node, await loadClusterSecrets(clusterFile, cluster), await loadClusterTls(clusterFile, cluster, opts.node));
      }
      if (!existsSync(opts.device)) throw new GeminiError(`--device ${opts.device}: no such device`, ExitCode.invalidInput);
      const device = realpathSync(opts.device);
      if (!statSync(device).isBlockDevice()) throw new GeminiError(`--device ${opts.device}: not a block device; flash writes whole disks (to write a file, copy the image)`, ExitCode.refused);
      const target = parseLsblk((await runPlan(lsblkPlan(device))).stdout);
      if (!target) throw new GeminiError(`--device ${opts.device}: lsblk does not list it`, ExitCode.invalidInput);
      const why = refusals(target, imageBytes, await systemDevices());
      c.logger.info(`target:\n${describeTarget(target)}`);
      if (why.length) throw new GeminiError(`refusing to write ${device}:\n  - ${why.join('\n  - ')}`, ExitCode.refused);
      c.logger.info(`writing ${image} (${imageBytes} bytes${zst ? ' once decompressed' : ''})${seed ? ` and the seed of ${opts.node}` : ''} onto ${device}: everything on it is lost`);
      if (!opts.yes) {
        if (!process.stdin.isTTY) throw new GeminiError('no terminal to confirm on: pass --yes to write without asking', ExitCode.refused);
        const rl = createInterface({ input: process.stdin, output: process.stderr });
        const answer = await rl.question(`type ${device} to go on: `);
        rl.close();
        if (answer.trim() !== device) throw new GeminiError(`not confirmed (${JSON.stringify(answer.trim())} is not ${device}): nothing written`, ExitCode.refused);
      }

      const started = performance.now();
      const written = await writeImage(image, zst, device, imageBytes, everyTenPercent(imageBytes, (pct, done) => c.logger.info(`  written ${pct}% (${Math.round(done / 1048576)} MiB)`)));
      const wroteSeconds = (performance.now() - started) / 1000;
      const back = await readBack(device, imageBytes);
      if (back !== written) throw new GeminiError(`${device}: the data read back (sha256 ${back}) differs from what was written (${written}); the medium may be failing`, ExitCode.commandFailed);
      c.logger.info(`read back ${imageBytes} bytes: sha256 ${back} matches`);
      if (seed) {
        const offset = await partitionOffset(device, 'CONFIG');
        const staging = mkdtempSync(join(tmpdir(), 'gk-flash-seed-'));
        try {
          await writeSeedFiles(device, offset, seed, staging);
          await runPlan({ cmd: 'sync', args: [] });
          await runPlan({ cmd: 'blockdev', args: ['--flushbufs', device] });
          // Each seed file as the node will read it.
          const bad = await seedFilesDiffering(device, offset, seed);
          if (bad.length) throw new GeminiError(`${device}: ${bad.join(', ')} on the config partition do${bad.length === 1 ? 'es' : ''} not read back as written`, ExitCode.commandFailed);
        } finally {
          await rm(staging, { recursive: true, force: true });
        }
        c.logger.info(`wrote the seed of ${opts.node} onto the config partition and read it back`);
      }
      // Let the kernel see the new partition table (a loop device without partition scanning refuses: fine).
      await runPlan({ cmd: 'blockdev', args: ['--rereadpt', device] }, { allowFailure: true });
      const seconds = (performance.now() - started) / 1000;
      c.print(`${device}: ${imageBytes} bytes in ${seconds.toFixed(1)} s (${(imageBytes / 1048576 / wroteSeconds).toFixed(0)} MiB/s written), sha256 ${written}${seed ? `, seed of ${opts.node}` : ''}`);
    });
}
