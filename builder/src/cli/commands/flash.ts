import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, openSync, readSync, closeSync, realpathSync, statSync } from 'node:fs';
import { open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { Command } from 'commander';
import { assertKnownNode, loadCluster, loadClusterSecrets, loadClusterTls } from '../../../../common/config.ts';
import { ExitCode, GeminiError } from '../../../../common/errors.ts';
import { runPlan, streamPlan } from '../../../../common/exec.ts';
import { describeTarget, deviceOfSource, lsblkPlan, parseLsblk, refusals, zstdContentSize } from '../../ops/flash.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { partitionOffset, writeSeedFiles } from '../../seed/into-image.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface FlashOptions {
  device: string;
  seedCluster?: string;
  node?: string;
  yes?: boolean;
}

const CHUNK = 4 * 1024 * 1024;

function magic(file: string, n: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(n);
    readSync(fd, b, 0, n, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** The block devices behind the running system: /, /boot, /boot/efi, /usr, and swap, with the disks they are on. */
async function systemDevices(): Promise<string[]> {
  const devs = new Set<string>();
  for (const target of ['/', '/boot', '/boot/efi', '/usr']) {
    const r = await runPlan({ cmd: 'findmnt', args: ['-n', '-o', 'SOURCE', '--target', target] }, { allowFailure: true });
    const dev = r.exitCode === 0 ? deviceOfSource(r.stdout) : undefined;
    if (dev) devs.add(dev);
  }
  const swaps = existsSync('/proc/swaps') ? (await readFile('/proc/swaps', 'utf8')).split('\n').slice(1).map((l) => l.split(/\s+/)[0] ?? '').filter((d) => d.startsWith('/dev/')) : [];
  for (const d of swaps) devs.add(d);
  // Each one's disk too (and through device-mapper, the disks under it): lsblk -s walks down.
  for (const d of [...devs]) {
    const r = await runPlan({ cmd: 'lsblk', args: ['-s', '-n', '-p', '-o', 'PATH', d] }, { allowFailure: true });
    for (const p of r.stdout.split('\n').map((x) => x.replace(/^[^/]*/, '').trim()).filter(Boolean)) devs.add(p);
  }
  return [...devs];
}

/** Stream `image` (raw, or zstd decompressed on the way) into `device`; the sha256 of what was written. */
async function writeImage(image: string, zst: boolean, device: string, total: number, progress: (done: number) => void): Promise<string> {
  const hash = createHash('sha256');
  const fd = await open(device, 'r+');
  const source = zst ? streamPlan({ cmd: 'zstd', args: ['-d', '-c', '-q', image] }) : undefined;
  const input = source ? source.stdout : createReadStream(image, { highWaterMark: CHUNK });
  let written = 0;
  try {
    for await (const chunk of input as AsyncIterable<Buffer>) {
      hash.update(chunk);
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await fd.write(chunk, off, chunk.length - off, written + off);
        off += bytesWritten;
      }
      written += chunk.length;
      progress(written);
    }
    await source?.done;
    if (written !== total) throw new GeminiError(`${image}: ${written} bytes came out, ${total} were expected`, ExitCode.artifact);
    await fd.sync();
  } finally {
    await fd.close();
  }
  return hash.digest('hex');
}

/** Read the first `bytes` of `device` back, past the page cache, and hash them. */
async function readBack(device: string, bytes: number): Promise<string> {
  // Drop the device's buffers so that the read comes from the medium, not from memory.
  await runPlan({ cmd: 'blockdev', args: ['--flushbufs', device] });
  const hash = createHash('sha256');
  const fd = await open(device, 'r');
  try {
    const buf = Buffer.alloc(CHUNK);
    let pos = 0;
    while (pos < bytes) {
      const { bytesRead } = await fd.read(buf, 0, Math.min(CHUNK, bytes - pos), pos);
      if (bytesRead === 0) throw new GeminiError(`${device}: ended after ${pos} bytes while reading back ${bytes}`, ExitCode.commandFailed);
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fd.close();
  }
  return hash.digest('hex');
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
      const head = magic(image, 4);
      if (head.toString('latin1') === 'QFI\xfb') throw new GeminiError(`${image}: a qcow2 image; flash takes the .raw or .raw.zst image`, ExitCode.invalidInput);
      const zst = head.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));
      let imageBytes = statSync(image).size;
      if (zst) {
        const size = zstdContentSize((await runPlan({ cmd: 'zstd', args: ['-l', '-v', image] }, { allowFailure: true })).stdout);
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
      let shown = -1;
      const written = await writeImage(image, zst, device, imageBytes, (done) => {
        const pct = Math.floor((done / imageBytes) * 100);
        if (Math.floor(pct / 10) > Math.floor(shown / 10)) {
          shown = pct;
          c.logger.info(`  written ${pct}% (${Math.round(done / 1048576)} MiB)`);
        }
      });
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
          for (const f of seed) {
            const got = await runPlan({ cmd: 'mtype', args: ['-i', `${device}@@${offset}`, `::/${f.path}`] });
            if (got.stdout !== f.content) throw new GeminiError(`${device}: ${f.path} on the config partition does not read back as written`, ExitCode.commandFailed);
          }
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
