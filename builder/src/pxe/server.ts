import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { writeFileAtomic } from '#common/fsutil.ts';
import type { DiskRules } from '#common/install/disks.ts';
import type { RenderedFile } from '#common/render/node.ts';
import { seedPayloadJson } from '#common/install/payload.ts';

/** The files `pxe serve --dir` serves, by the names the boot script and the installer use. */
export const PXE_FILES = { kernel: 'vmlinuz', initrd: 'initrd.img', root: 'root.squashfs', image: 'image.raw.zst' } as const;

/** `build --output pxe` writes this beside the files: what the boot scripts need from the image definition. */
export const PXE_META = 'pxe.json';
export interface PxeMeta {
  image: string;
  version: string;
  arch: string;
  rootfsType: string;
  /** The kernel arguments the image's grub.cfg passes (console, panic, ifnames, the image's own). */
  cmdline: string;
}

/** What an installer reports, in order. `failed` may come at any point. */
export const INSTALL_STAGES = ['booted', 'disk-chosen', 'written', 'verified', 'seeded', 'rebooting', 'failed'] as const;
export type InstallStage = (typeof INSTALL_STAGES)[number];

/** One machine the server knows: a node of cluster.yaml with its MAC, its seed and its disk rules. */
export interface PxeNode {
  name: string;
  mac: string;
  seed: RenderedFile[];
  disk?: DiskRules;
}

export interface PxeEvent {
  at: string;
  mac: string;
  node?: string;
  /** A boot script served, a seed handed out, a refusal, or a stage the installer reported. */
  kind: 'boot-install' | 'boot-disk' | 'refused' | 'seed' | 'stage';
  stage?: InstallStage;
  detail?: string;
  client?: string;
}

/** Per MAC: the last stage and when the install finished; kept in `--dir/pxe-state.json` across restarts. */
export interface PxeMachineState {
  node: string;
  stage?: InstallStage;
  detail?: string;
  updated?: string;
  /** Set once the installer says it is rebooting into the installed system: from then on it boots from disk. */
  installed?: string;
}
export type PxeState = Record<string, PxeMachineState>;

export interface PxeServerOptions {
  dir: string;
  /** The URL machines reach this server at, e.g. http://10.0.0.1:8080 (no trailing slash). */
  baseUrl: string;
  nodes: PxeNode[];
  /** Kernel arguments the image's grub.cfg passes (console, panic, ifnames). */
  cmdline: string;
  rootfsType: string;
  /** The sha256 of the root image, when known (SHA256SUMS): the live boot checks it before mounting. */
  rootSha256?: string;
  now?: () => Date;
  onEvent?: (e: PxeEvent) => void;
}

export const STATE_FILE = 'pxe-state.json';

/** "52-54-00-AB-CD-EF", "5254.00ab.cdef" or "52:54:00:ab:cd:ef" → "52:54:00:ab:cd:ef"; undefined when not a MAC. */
export function normalizeMac(text: string | null | undefined): string | undefined {
  const hex = (text ?? '').toLowerCase().replace(/[^0-9a-f]/g, '');
  if (hex.length !== 12 || !/^[0-9a-f:.-]+$/i.test(text ?? '')) return undefined;
  return hex.match(/../g)!.join(':');
}

/** The script every machine's iPXE starts with: it chains to its own per-MAC script (pure). */
export function chainScript(baseUrl: string): string {
  return ['#!ipxe', '# geminik8s PXE: ask the server what this machine should boot.', `chain ${baseUrl}/boot?mac=\${net0/mac} || goto failed`, 'exit', ':failed', 'echo geminik8s: the PXE server did not answer; booting the next device', 'sleep 5', 'exit 1', ''].join('\n');
}

/** Kernel words carrying the disk rules to the installer (pure); values with spaces are quoted. */
export function ruleArgs(rules: DiskRules | undefined): string[] {
  const names: Record<keyof DiskRules, string> = { device: 'device', byId: 'by_id', byPath: 'by_path', serial: 'serial', model: 'model', minSize: 'min_size', maxSize: 'max_size', type: 'type' };
  return Object.entries(rules ?? {}).map(([k, v]) => {
    const word = `geminik8s.install.${names[k as keyof DiskRules]}=${String(v)}`;
    return /\s/.test(word) ? `"${word}"` : word;
  });
}

/** The per-MAC script (pure): install for a known machine not yet installed, boot from disk once installed, refuse an unknown one. */
export function bootScript(o: Pick<PxeServerOptions, 'baseUrl' | 'cmdline' | 'rootfsType' | 'rootSha256'>, mac: string, node: PxeNode | undefined, state: PxeMachineState | undefined): { kind: PxeEvent['kind']; script: string } {
  if (!node) {
    return {
      kind: 'refused',
      script: ['#!ipxe', `echo geminik8s: ${mac} is not a node of this cluster (no nodes[].mac in cluster.yaml names it): nothing is installed`, 'sleep 10', 'exit 1', ''].join('\n'),
    };
  }
  if (state?.installed) {
    // Returning to the firmware makes it try the next boot entry: the installed disk.
    return { kind: 'boot-disk', script: ['#!ipxe', `echo geminik8s: ${node.name} (${mac}) was installed at ${state.installed}; booting from its disk`, 'exit', ''].join('\n') };
  }
  const m = mac.replaceAll(':', '-');
  const args = [
    `initrd=${PXE_FILES.initrd}`,
    // The initramfs's live boot (scripts/geminik8s-live): the root image into RAM over HTTP.
    'boot=geminik8s-live',
    `geminik8s.live=${o.baseUrl}/files/${PXE_FILES.root}`,
    ...(o.rootSha256 ? [`geminik8s.live.sha256=${o.rootSha256}`] : []),
    `rootfstype=${o.rootfsType}`,
    'ro',
    `geminik8s.install.image_url=${o.baseUrl}/files/${PXE_FILES.image}`,
    `geminik8s.install.seed_url=${o.baseUrl}/seed/${m}`,
    `geminik8s.install.report_url=${o.baseUrl}/progress/${m}`,
    ...ruleArgs(node.disk),
    o.cmdline,
  ];
  return {
    kind: 'boot-install',
    script: ['#!ipxe', `# geminik8s installer for ${node.name} (${mac})`, `kernel ${o.baseUrl}/files/${PXE_FILES.kernel} ${args.join(' ')}`, `initrd --name ${PXE_FILES.initrd} ${o.baseUrl}/files/${PXE_FILES.initrd}`, 'boot', ''].join('\n'),
  };
}

/** A file's sha256 in `sha256sum` output (SHA256SUMS, as build --output pxe writes it); undefined when it is not listed. */
export function sha256Listed(sums: string, file: string): string | undefined {
  for (const line of sums.split('\n')) {
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line.trim());
    if (m && m[2] === file) return m[1];
  }
  return undefined;
}

/** The state file's contents, or an empty state; a damaged file is an error, not a silent reset. */
export function readState(dir: string): PxeState {
  const file = join(dir, STATE_FILE);
  if (!existsSync(file)) return {};
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as PxeState;
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message}); move it away to start over`, { cause: err });
  }
}

const send = (res: ServerResponse, status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
};

async function body(req: IncomingMessage, limit = 64 * 1024): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > limit) throw new Error(`request body over ${limit} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The provisioning server: boot scripts per MAC, each known node's seed, the installer's
 * progress, and the kernel, initrd, root and disk image from `dir`. State survives a restart.
 */
export function createPxeServer(o: PxeServerOptions): { server: Server; state: () => PxeState } {
  const now = o.now ?? (() => new Date());
  const byMac = new Map(o.nodes.map((n) => [n.mac, n]));
  const state: PxeState = readState(o.dir);
  const emit = (e: Omit<PxeEvent, 'at'>): void => o.onEvent?.({ at: now().toISOString(), ...e });
  let saving = Promise.resolve();
  const save = (): Promise<void> => (saving = saving.then(() => writeFileAtomic(join(o.dir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, 0o600)));

  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://pxe.invalid');
      const client = req.socket.remoteAddress ?? '';
      const parts = url.pathname.split('/').filter(Boolean);
      if (req.method === 'GET' && url.pathname === '/boot.ipxe') return send(res, 200, chainScript(o.baseUrl));
      if (req.method === 'GET' && url.pathname === '/boot') {
        const mac = normalizeMac(url.searchParams.get('mac'));
        if (!mac) return send(res, 400, `#!ipxe\necho geminik8s: ?mac= is not a MAC address\nexit 1\n`);
        const node = byMac.get(mac);
        const r = bootScript(o, mac, node, state[mac]);
        emit({ kind: r.kind, mac, ...(node ? { node: node.name } : {}), client, ...(r.kind === 'refused' ? { detail: 'unknown MAC: nothing installed' } : {}) });
        return send(res, 200, r.script);
      }
      if (parts[0] === 'seed' && parts.length === 2 && req.method === 'GET') {
        const mac = normalizeMac(parts[1]);
        const node = mac ? byMac.get(mac) : undefined;
        if (!mac || !node) {
          emit({ kind: 'refused', mac: mac ?? parts[1]!, client, detail: 'seed asked for an unknown MAC' });
          return send(res, 404, 'unknown MAC\n');
        }
        // Once installed, the seed (it holds the node's secrets) is not handed out again.
        if (state[mac]?.installed) {
          emit({ kind: 'refused', mac, node: node.name, client, detail: 'seed asked for after the install finished' });
          return send(res, 410, `${node.name} is installed; its seed is not served again (remove it from ${STATE_FILE} to reinstall)\n`);
        }
        emit({ kind: 'seed', mac, node: node.name, client });
        return send(res, 200, seedPayloadJson(node.name, node.disk, node.seed), 'application/json');
      }
      if (parts[0] === 'progress' && parts.length === 2 && req.method === 'POST') {
        const mac = normalizeMac(parts[1]);
        const node = mac ? byMac.get(mac) : undefined;
        if (!mac || !node) return send(res, 404, 'unknown MAC\n');
        let report: { stage?: string; detail?: string };
        try {
          report = JSON.parse(await body(req)) as typeof report;
        } catch (err) {
          return send(res, 400, `expected JSON {"stage": …, "detail": …}: ${(err as Error).message}\n`);
        }
        const stage = INSTALL_STAGES.find((s) => s === report.stage);
        if (!stage) return send(res, 400, `stage: expected one of ${INSTALL_STAGES.join(', ')}\n`);
        const detail = typeof report.detail === 'string' ? report.detail.slice(0, 2000) : undefined;
        const at = now().toISOString();
        state[mac] = { ...state[mac], node: node.name, stage, ...(detail ? { detail } : { detail: undefined }), updated: at, ...(stage === 'rebooting' ? { installed: at } : {}) };
        await save();
        emit({ kind: 'stage', mac, node: node.name, stage, ...(detail ? { detail } : {}), client });
        return send(res, 204, '');
      }
      if (req.method === 'GET' && url.pathname === '/status') return send(res, 200, `${JSON.stringify(state, null, 2)}\n`, 'application/json');
      if ((req.method === 'GET' || req.method === 'HEAD') && parts[0] === 'files' && parts.length === 2) {
        const name = Object.values(PXE_FILES).find((f) => f === parts[1]);
        if (!name) return send(res, 404, 'no such file\n');
        const file = join(o.dir, name);
        if (!existsSync(file)) return send(res, 404, `${name} is not in the served directory\n`);
        const size = statSync(file).size;
        const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
        const start = range ? Number(range[1]) : 0;
        const end = range && range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
        if (start > end && size > 0) return send(res, 416, 'range not satisfiable\n');
        res.writeHead(range ? 206 : 200, {
          'content-type': 'application/octet-stream',
          'content-length': String(size === 0 ? 0 : end - start + 1),
          'accept-ranges': 'bytes',
          ...(range ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
        });
        if (req.method === 'HEAD' || size === 0) return res.end();
        createReadStream(file, { start, end }).pipe(res);
        return;
      }
      send(res, 404, 'not found\n');
    })().catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, `${(err as Error).message}\n`);
      else res.destroy();
    });
  });
  return { server, state: () => state };
}
