import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { assertKnownNode, loadCluster, loadImage, loadClusterSecrets, loadClusterTls } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { renderNode, type RenderedFile } from '../../render/index.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface RenderOptions {
  image: string;
  cluster?: string;
  node: string;
  out: string;
  force?: boolean;
  json?: boolean;
  pxeBaseUrl?: string;
}

/** Where a rendered file lands under --out: one folder per scope, node paths kept. */
export function outputPath(out: string, file: RenderedFile): string {
  return join(out, file.scope, file.path.replace(/^\/+/, ''));
}

export function registerRender(program: Command, ctx: () => CliContext): void {
  program
    .command('render')
    .description("write every file an image and one node's seed will carry, without building anything")
    .requiredOption('--image <file>', 'image definition (images/*.yaml)')
    .option('--cluster <file>', 'cluster.yaml (default: --config)')
    .requiredOption('--node <name>', 'node to render the seed for')
    .requiredOption('--out <dir>', 'output directory (image/, boot/, seed/, node/ inside)')
    // Gone: it rendered a script that booted slot A's kernel over HTTP onto an already-installed disk, without the node's secret seed.
    .addOption(new Option('--pxe-base-url <url>').hideHelp())
    .option('--force', 'write into a non-empty --out')
    .option('--json', 'print the file list as JSON')
    .action(async (opts: RenderOptions) => {
      const c = ctx();
      if (opts.pxeBaseUrl !== undefined) throw new GeminiError('--pxe-base-url is gone: build --output pxe and pxe serve give each MAC its installer and seed (docs/cli.md#pxe-serve)', ExitCode.invalidInput);
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const [image, cluster] = await Promise.all([loadImage(opts.image), loadCluster(clusterFile)]);
      assertKnownNode(cluster, opts.node, clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const tls = await loadClusterTls(clusterFile, cluster, opts.node);
      if (existsSync(opts.out) && !statSync(opts.out).isDirectory()) {
        throw new GeminiError(`--out ${opts.out} exists and is not a directory`, ExitCode.invalidInput);
      }
      if (existsSync(opts.out) && readdirSync(opts.out).length > 0 && !opts.force) {
        throw new GeminiError(`${opts.out} is not empty; pass --force to write into it`, ExitCode.refused);
      }
      // Render everything before writing anything: a template error leaves --out untouched.
      const files = renderNode({ image, cluster, node: opts.node, secrets, tls });
      // The output holds the node's secrets: private from the top.
      await mkdir(opts.out, { recursive: true, mode: 0o700 });
      for (const f of files) await writeFileAtomic(outputPath(opts.out, f), f.content, f.mode);
      const rows = files.map((f) => ({ scope: f.scope, path: f.path, mode: `0${f.mode.toString(8)}`, bytes: Buffer.byteLength(f.content), secret: Boolean(f.secret) }));
      if (opts.json) {
        c.print(JSON.stringify({ out: opts.out, node: opts.node, files: rows }, null, 2));
        return;
      }
      const width = Math.max(...rows.map((r) => r.path.length));
      c.print(`${'SCOPE'.padEnd(6)} ${'PATH'.padEnd(width)} MODE  ${'BYTES'.padStart(6)}`);
      for (const r of rows) c.print(`${r.scope.padEnd(6)} ${r.path.padEnd(width)} ${r.mode} ${String(r.bytes).padStart(6)}${r.secret ? '  (secret)' : ''}`);
      c.logger.info(`rendered ${rows.length} files for ${opts.node} into ${opts.out}`);
    });
}
