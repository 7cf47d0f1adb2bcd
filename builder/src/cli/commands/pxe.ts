import { existsSync, readFileSync, statSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { parseListen } from '#agent/witness/serve.ts';
import { loadCluster, loadClusterSecrets, loadClusterTls, loadImage } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { renderSeedFiles } from '../../render/index.ts';
import { kernelCmdline } from '../../render/grub.ts';
import { dnsmasqTestPlan, renderDnsmasqConfig } from '../../pxe/dnsmasq.ts';
import { createPxeServer, PXE_FILES, PXE_META, sha256Listed, type PxeEvent, type PxeMeta, type PxeNode } from '../../pxe/server.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface ServeOptions {
  dir: string;
  cluster?: string;
  image?: string;
  listen: string;
  baseUrl?: string;
  json?: boolean;
  dnsmasqConfig?: string;
  interface?: string;
  network?: string;
  tftpRoot?: string;
}

/** One line per event, for a terminal or a CI log (pure). */
export function describeEvent(e: PxeEvent): string {
  const who = `${e.node ?? 'unknown'} (${e.mac})`;
  switch (e.kind) {
    case 'boot-install':
      return `${e.at} ${who}: served the installer${e.client ? ` to ${e.client}` : ''}`;
    case 'boot-disk':
      return `${e.at} ${who}: installed already; told to boot from its disk`;
    case 'refused':
      return `${e.at} ${who}: REFUSED: ${e.detail ?? ''}${e.client ? ` (from ${e.client})` : ''}`;
    case 'seed':
      return `${e.at} ${who}: seed handed out${e.client ? ` to ${e.client}` : ''}`;
    case 'stage':
      return `${e.at} ${who}: ${e.stage}${e.detail ? `: ${e.detail}` : ''}`;
  }
}

export function registerPxe(program: Command, ctx: () => CliContext): void {
  const pxe = program.command('pxe').description('provision nodes over the network: per-MAC boot scripts and seeds, install progress');
  pxe
    .command('serve')
    .description("serve the installer's kernel, initrd, root and disk image from --dir, each node's seed to its MAC only, and show each installer's progress")
    .requiredOption('--dir <dir>', `directory holding ${Object.values(PXE_FILES).join(', ')}; the install state is kept there (pxe-state.json)`)
    .option('--cluster <file>', 'cluster.yaml: nodes[].mac picks the seed, nodes[].install.disk the disk (default: --config)')
    .option('--image <file>', `the image definition the files were built from (kernel arguments, root type); default: --dir's ${PXE_META} (build --output pxe writes it)`)
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8080')
    .option('--base-url <url>', 'the URL machines reach this server at (default: http://LISTEN)')
    .option('--json', 'events as JSON lines on stdout')
    .option('--dnsmasq-config <file>', 'also write a proxy-DHCP + TFTP configuration for dnsmasq, checked with dnsmasq --test')
    .option('--interface <if>', 'with --dnsmasq-config: the factory network interface')
    .option('--network <addr>', 'with --dnsmasq-config: the factory network address, e.g. 10.0.0.0')
    .option('--tftp-root <dir>', 'with --dnsmasq-config: where undionly.kpxe and ipxe.efi are (Debian package ipxe)', '/usr/lib/ipxe')
    .action(async (opts: ServeOptions) => {
      const c = ctx();
      const listen = parseListen(opts.listen);
      if (!listen) throw new GeminiError(`--listen: expected HOST:PORT, got ${JSON.stringify(opts.listen)}`, ExitCode.invalidInput);
      const { host, port } = listen;
      const baseUrl = (opts.baseUrl ?? `http://${opts.listen}`).replace(/\/+$/, '');
      if (!/^https?:\/\/[^/]+/.test(baseUrl)) throw new GeminiError(`--base-url: expected http://HOST[:PORT], got ${JSON.stringify(opts.baseUrl)}`, ExitCode.invalidInput);
      if (opts.dnsmasqConfig && (!opts.interface || !opts.network)) throw new GeminiError('--dnsmasq-config needs --interface and --network (the factory network the proxy DHCP answers on)', ExitCode.invalidInput);
      const dir = resolve(opts.dir);
      const missing = Object.values(PXE_FILES).filter((f) => !existsSync(join(dir, f)) || !statSync(join(dir, f)).isFile());
      if (missing.length) throw new GeminiError(`--dir ${opts.dir}: missing ${missing.join(', ')}`, ExitCode.invalidInput);

      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      let boot: { cmdline: string; rootfsType: string };
      if (opts.image) {
        const image = await loadImage(opts.image);
        boot = { cmdline: kernelCmdline(image), rootfsType: image.rootfs.type };
      } else if (existsSync(join(dir, PXE_META))) {
        const meta = JSON.parse(readFileSync(join(dir, PXE_META), 'utf8')) as Partial<PxeMeta>;
        if (typeof meta.cmdline !== 'string' || typeof meta.rootfsType !== 'string') throw new GeminiError(`${join(dir, PXE_META)}: expected "cmdline" and "rootfsType" (written by build --output pxe)`, ExitCode.invalidInput);
        boot = { cmdline: meta.cmdline, rootfsType: meta.rootfsType };
      } else {
        throw new GeminiError(`--dir ${opts.dir} has no ${PXE_META}: pass --image FILE, the image definition the files were built from`, ExitCode.invalidInput);
      }
      // build --output pxe lists every file's sha256: the live boot checks the root image against it.
      const sums = join(dir, 'SHA256SUMS');
      const rootSha256 = existsSync(sums) ? sha256Listed(readFileSync(sums, 'utf8'), PXE_FILES.root) : undefined;
      if (!rootSha256) c.logger.warn(`--dir ${opts.dir}: no SHA256SUMS line for ${PXE_FILES.root}; machines boot its root without checking it`);
      const noMac = cluster.nodes.filter((n) => !n.mac).map((n) => n.name);
      if (noMac.length === cluster.nodes.length) throw new GeminiError(`${clusterFile}: no node has a mac (nodes[].mac): PXE hands each seed to one MAC only`, ExitCode.invalidInput);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const nodes: PxeNode[] = [];
      for (const n of cluster.nodes) {
        if (!n.mac) continue;
        nodes.push({ name: n.name, mac: n.mac, seed: renderSeedFiles(cluster, n.name, secrets, await loadClusterTls(clusterFile, cluster, n.name)), ...(n.install ? { disk: n.install.disk } : {}) });
      }
      for (const n of noMac) c.logger.warn(`${n} has no mac in ${clusterFile}: it cannot be provisioned over PXE`);
      for (const n of nodes) if (!n.disk) c.logger.warn(`${n.name} has no install.disk rules in ${clusterFile}: its installer will refuse to choose a disk`);

      if (opts.dnsmasqConfig) {
        const text = renderDnsmasqConfig({ iface: opts.interface!, network: opts.network!, tftpRoot: resolve(opts.tftpRoot!), baseUrl });
        // Checked under a temporary name, then renamed: a rejected configuration never takes the file's name.
        const tmp = `${opts.dnsmasqConfig}.tmp-${process.pid}`;
        await writeFile(tmp, text, { mode: 0o644 });
        const check = await runPlan(dnsmasqTestPlan(tmp), { allowFailure: true });
        if (check.exitCode !== 0) {
          await rm(tmp, { force: true });
          throw new GeminiError(`dnsmasq --test rejected the configuration:\n${check.stderr.trim()}`, ExitCode.commandFailed);
        }
        await rename(tmp, opts.dnsmasqConfig);
        c.logger.info(`wrote ${opts.dnsmasqConfig} (dnsmasq --test: ${check.stderr.trim() || 'ok'})`);
      }

      const { server } = createPxeServer({
        dir,
        baseUrl,
        nodes,
        ...boot,
        ...(rootSha256 ? { rootSha256 } : {}),
        onEvent: (e) => {
          if (opts.json) c.print(JSON.stringify(e));
          else if (e.kind === 'refused') c.logger.warn(describeEvent(e));
          else c.logger.info(describeEvent(e));
        },
      });
      await new Promise<void>((ok, fail) => {
        server.once('error', (err) => fail(new GeminiError(`--listen ${opts.listen}: ${err.message}`, ExitCode.commandFailed)));
        server.listen(port, host, () => ok());
      });
      c.logger.info(`serving ${nodes.map((n) => `${n.name} (${n.mac})`).join(', ')} at ${baseUrl}; iPXE clients start at ${baseUrl}/boot.ipxe`);
      await new Promise(() => undefined);
    });
}
