import { createReadStream, mkdtempSync } from 'node:fs';
import { readdir, readFile, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan, streamPlan } from '#common/exec.ts';
import { fileHead } from '#common/fsutil.ts';
import { chooseDisk, describeDisks, lsblkDisksPlan, parseDisks, rulesFromCmdline, validateDiskRules, type Disk } from '#common/install/disks.ts';
import { blkidAllPlan, everyTenPercent, labelledDevices, partitionOffset, readBack, SEED_MEDIUM_FILE, SEED_MEDIUM_LABEL, seedFilesDiffering, systemDevices, withDisksUnder, writeSeedFiles, writeStream, zstdFrameContentSize } from '#common/install/media.ts';
import type { SeedPayload } from '#common/install/payload.ts';
import { option, stderrLine, stdoutLine, type Printer } from './args.ts';

export const INSTALL_USAGE = `usage: geminik8s-agent install [--dry-run] [--no-reboot] [--cmdline FILE]
  Installs this machine from the kernel command line's geminik8s.install.* arguments (pxe serve's
  boot script and the installer ISO's menu give them): chooses the disk by its rules, writes the
  image, reads it back, writes the seed. image_url and seed_url are http:// or file:// URLs. With no
  seed at seed_url (or no seed_url), the seed comes from a FAT medium labelled GKSEED
  (geminik8s seed --format medium), file geminik8s/seed.json.`;

/** The stages the installer reports, as `pxe serve` records them. */
export type Stage = 'booted' | 'disk-chosen' | 'written' | 'verified' | 'seeded' | 'rebooting' | 'failed';

/** Every effect the installer has, so that a test can stand in for the machine's disks and its reboot. */
export interface InstallPorts {
  disks(): Promise<Disk[]>;
  bootDisks(): Promise<string[]>;
  /** The seed at `url`; undefined when the place is there but empty (the installer ISO's unfilled slot). */
  fetchSeed(url: string): Promise<SeedPayload | undefined>;
  /** Every medium labelled GKSEED, with the seed it carries and the disks it is on. */
  seedMedia(): Promise<SeedMedium[]>;
  /** The first bytes of the image (for the size its zstd frame records). */
  imageHead(url: string): Promise<Uint8Array>;
  /** The image decompressed, as it downloads. */
  openImage(url: string): Promise<{ stream: AsyncIterable<Uint8Array>; done: Promise<void> }>;
  report(url: string, stage: Stage, detail?: string): Promise<void>;
  reboot(): Promise<void>;
  print: Printer;
  warn: Printer;
}

/** A second medium carrying the seed: a filesystem labelled SEED_MEDIUM_LABEL. */
export interface SeedMedium {
  device: string;
  /** The device and the disks under it: never an install target. */
  disks: string[];
  payload: SeedPayload;
}

export interface InstallResult {
  node: string;
  disk: string;
  bytes: number;
  sha256?: string;
  dryRun: boolean;
}

const SEED_FILE_MODES = new Set([0o600, 0o644, 0o640]);

/** The seed server's answer, checked: a node name, disk rules, files with relative paths (pure). */
export function parseSeedPayload(url: string, body: unknown): SeedPayload {
  const b = body as Partial<SeedPayload> | null;
  const files = Array.isArray(b?.files) ? b.files : undefined;
  if (!b || typeof b.node !== 'string' || !files || typeof b.disk !== 'object' || b.disk === null) throw new GeminiError(`${url}: expected {"node", "disk", "files"} (as pxe serve and seed --into write it)`, ExitCode.invalidInput);
  for (const f of files) {
    if (typeof f?.path !== 'string' || typeof f.content !== 'string' || f.path.startsWith('/') || f.path.split('/').includes('..')) throw new GeminiError(`${url}: a seed file with a bad path (${JSON.stringify(f?.path)})`, ExitCode.invalidInput);
  }
  return { node: b.node, disk: b.disk, files: files.map((f) => ({ path: f.path, content: f.content, mode: SEED_FILE_MODES.has(f.mode) ? f.mode : 0o600, scope: 'seed' as const })) };
}

/**
 * Install this machine: rules from the kernel command line (or, when it has none, the seed's),
 * the one disk that matches them, the image streamed onto it and read back, the seed onto its
 * config partition, progress reported at each step. Refuses, writing nothing, when the rules
 * match no disk or several, or anything it needs is missing.
 */
export async function install(cmdline: string, opts: { dryRun?: boolean; reboot: boolean }, ports: InstallPorts): Promise<InstallResult> {
  const c = rulesFromCmdline(cmdline);
  const report = async (stage: Stage, detail?: string): Promise<void> => {
    if (!c.reportUrl) return;
    // Progress is for the operator; a server that does not answer does not stop the install.
    await ports.report(c.reportUrl, stage, detail).catch((err: unknown) => ports.warn(`could not report ${stage} to ${c.reportUrl}: ${(err as Error).message}`));
  };
  const fail = async (err: GeminiError): Promise<never> => {
    await report('failed', err.message);
    throw err;
  };
  const dryRun = opts.dryRun || c.dryRun;
  await report('booted', dryRun ? 'dry run' : undefined);
  const imageUrl = c.imageUrl;
  if (!imageUrl) return fail(new GeminiError('no geminik8s.install.image_url on the kernel command line: no image to write', ExitCode.invalidInput));
  const asFailure = (what: string) => (err: unknown) => fail(err instanceof GeminiError ? err : new GeminiError(`${what}: ${(err as Error).message}`, ExitCode.commandFailed));
  const fromUrl = c.seedUrl ? await ports.fetchSeed(c.seedUrl).catch(asFailure(c.seedUrl)) : undefined;
  const media = await ports.seedMedia().catch(asFailure(`media labelled ${SEED_MEDIUM_LABEL}`));
  // Two seeds name two identities (or two disk rules) for one machine: never guess which was meant.
  if (media.length > 1) return fail(new GeminiError(`${media.length} media labelled ${SEED_MEDIUM_LABEL} (${media.map((m) => `${m.device}: ${m.payload.node}`).join(', ')}): leave one attached; nothing was written`, ExitCode.refused));
  const medium = media[0];
  if (fromUrl && medium) return fail(new GeminiError(`two seeds: ${c.seedUrl} (${fromUrl.node}) and the medium ${medium.device} labelled ${SEED_MEDIUM_LABEL} (${medium.payload.node}); remove the medium, or boot an installer that carries no seed; nothing was written`, ExitCode.refused));
  const seed = fromUrl ?? medium?.payload;
  if (!seed) {
    const where = c.seedUrl ? `${c.seedUrl} carries no seed` : 'no geminik8s.install.seed_url on the kernel command line';
    return fail(new GeminiError(`${where}, and no medium labelled ${SEED_MEDIUM_LABEL} is attached: nothing says which node this is${SEED_HINT}`, ExitCode.invalidInput));
  }
  ports.print(medium ? `the seed of ${seed.node} comes from ${medium.device} labelled ${SEED_MEDIUM_LABEL}` : `the seed of ${seed.node} comes from ${c.seedUrl}`);
  const fromCmdline = Object.keys(c.rules).length > 0;
  const checked = validateDiskRules(fromCmdline ? c.rules : seed.disk, fromCmdline ? 'the kernel command line' : `the seed of ${seed.node}`);
  if (!checked.rules) return fail(new GeminiError(`disk rules: ${checked.issues.map((i) => `${i.path || '(rules)'}: ${i.message}${i.expected ? ` (expected ${i.expected})` : ''}`).join('; ')}`, ExitCode.invalidInput));
  const rules = checked.rules;

  const bytes = zstdFrameContentSize(await ports.imageHead(imageUrl));
  if (bytes === undefined) return fail(new GeminiError(`${imageUrl}: not a zstd image that records its size (build writes .raw.zst with it)`, ExitCode.invalidInput));
  const choice = chooseDisk(await ports.disks(), rules, await ports.bootDisks(), bytes, medium?.disks ?? []);
  const listing = describeDisks(choice.verdicts, rules);
  if (!choice.ok) {
    return fail(new GeminiError(`refusing to install ${seed.node}: ${choice.reason}; nothing was written\n${listing}`, ExitCode.refused));
  }
  const disk = choice.disk;
  ports.print(listing);
  const chosen = `${disk.path} (serial ${disk.serial || 'unknown'}, ${disk.model || 'unknown model'}, ${disk.sizeBytes} bytes)`;
  await report('disk-chosen', chosen);
  if (dryRun) {
    ports.print(`dry run: would write ${bytes} bytes of ${imageUrl} onto ${chosen}, read them back, and write the seed of ${seed.node} (${seed.files.map((f) => f.path).join(', ')}) onto its CONFIG partition; nothing written`);
    return { node: seed.node, disk: disk.path, bytes, dryRun: true };
  }

  ports.print(`writing ${bytes} bytes onto ${disk.path}: everything on it is lost`);
  const img = await ports.openImage(imageUrl);
  let sha: string;
  let zeroedOut: number;
  try {
    ({ sha256: sha, zeroedOut } = await writeStream(img.stream, disk.path, bytes, everyTenPercent(bytes, (pct) => ports.print(`  written ${pct}%`)), imageUrl));
    await img.done;
  } catch (err) {
    return fail(err instanceof GeminiError ? err : new GeminiError(`writing ${disk.path}: ${(err as Error).message}`, ExitCode.commandFailed));
  }
  ports.print(`wrote ${bytes - zeroedOut} bytes; ${zeroedOut} bytes of zeros were zeroed by the disk (BLKZEROOUT)`);
  await report('written', `sha256 ${sha}`);
  const back = await readBack(disk.path, bytes);
  if (back !== sha) return fail(new GeminiError(`${disk.path}: read back sha256 ${back}, wrote ${sha}: the disk may be failing`, ExitCode.commandFailed));
  await report('verified', `sha256 ${sha}`);
  ports.print(`read back ${bytes} bytes: sha256 ${sha} matches`);

  // The kernel may still hold the old partition table; sfdisk and mtools read the disk itself.
  await runPlan({ cmd: 'blockdev', args: ['--rereadpt', disk.path] }, { allowFailure: true });
  const offset = await partitionOffset(disk.path, 'CONFIG');
  const staging = mkdtempSync(join(tmpdir(), 'gk-install-seed-'));
  try {
    await writeSeedFiles(disk.path, offset, seed.files, staging);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  await runPlan({ cmd: 'blockdev', args: ['--flushbufs', disk.path] }, { allowFailure: true });
  const bad = await seedFilesDiffering(disk.path, offset, seed.files);
  if (bad.length) return fail(new GeminiError(`${disk.path}: ${bad.join(', ')} did not read back from the CONFIG partition as written`, ExitCode.commandFailed));
  await report('seeded', `${seed.files.length} files`);
  ports.print(`installed ${seed.node} onto ${disk.path}`);
  if (opts.reboot) {
    await report('rebooting');
    await ports.reboot();
  }
  return { node: seed.node, disk: disk.path, bytes, sha256: sha, dryRun: false };
}

async function links(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const target = await realpath(join(dir, n)).catch(() => undefined);
    if (target) out[n] = target;
  }
  return out;
}

/** How long the installer waits on pxe serve (or any HTTP server it fetches from). */
export interface FetchLimits {
  /** For the status line and headers of an answer; for a small answer, the whole exchange. */
  answerMs: number;
  /** Between two chunks of a streamed body: a slow link may take hours for an image, a dead one must not hang the install. */
  idleMs: number;
}

export const FETCH_LIMITS: FetchLimits = { answerMs: 60_000, idleMs: 60_000 };

/** `r`, or the server's refusal with its status and text. */
async function okOr(url: string, r: Response): Promise<Response> {
  if (!r.ok) throw new GeminiError(`${url}: HTTP ${r.status} ${(await r.text().catch(() => '')).trim()}`, ExitCode.commandFailed);
  return r;
}

async function fetchOk(url: string, limits: FetchLimits, init?: RequestInit): Promise<Response> {
  return okOr(url, await fetch(url, { ...init, signal: AbortSignal.timeout(limits.answerMs) }));
}

/**
 * A body of any length: `answerMs` for the headers, then at most `idleMs` between chunks.
 * (A single timeout over the whole exchange cut an image off after 60 s, whatever its speed.)
 */
async function fetchStream(url: string, limits: FetchLimits): Promise<ReadableStream<Uint8Array>> {
  const abort = new AbortController();
  const stalled = (ms: number, what: string) => setTimeout(() => abort.abort(new GeminiError(`${url}: ${what} within ${ms / 1000} s`, ExitCode.commandFailed)), ms).unref();
  let timer = stalled(limits.answerMs, 'no answer');
  let r: Response;
  try {
    r = await fetch(url, { signal: abort.signal });
  } catch (err) {
    clearTimeout(timer);
    throw abort.signal.aborted ? abort.signal.reason : err;
  }
  clearTimeout(timer);
  await okOr(url, r);
  if (!r.body) throw new GeminiError(`${url}: empty answer`, ExitCode.commandFailed);
  timer = stalled(limits.idleMs, 'no data');
  return r.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, out) {
        clearTimeout(timer);
        timer = stalled(limits.idleMs, 'no data');
        out.enqueue(chunk);
      },
      flush() {
        clearTimeout(timer);
      },
    }),
  );
}

/** A file: URL's path, or undefined for any other URL. */
function localPath(url: string): string | undefined {
  return url.startsWith('file:') ? fileURLToPath(url) : undefined;
}

const SEED_HINT = `: put a seed into the ISO (geminik8s seed --node NAME --into ISO --out NODE.iso), attach a medium with it (geminik8s seed --node NAME --format medium --out seed.img, written to a USB stick), or boot with geminik8s.install.seed_url=URL`;

/** Why a file the installer reads from its medium (file: URLs, the installer ISO) could not be read, with the fix when it is missing. */
function localError(url: string, err: NodeJS.ErrnoException): GeminiError {
  if (err.code !== 'ENOENT') return new GeminiError(`${url}: ${err.message}`, ExitCode.commandFailed);
  return new GeminiError(`${url}: no such file on this medium${url.endsWith('.json') ? SEED_HINT : ''}`, ExitCode.invalidInput);
}

/** A seed file's text as JSON, or bad input naming where it came from. */
function jsonOf(where: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new GeminiError(`${where}: not JSON (${(err as Error).message})`, ExitCode.invalidInput);
  }
}

/** The machine's own disks, the live system's boot media, HTTP to pxe serve (or files on the installer ISO), systemctl reboot. */
export function machinePorts(print: Printer = stdoutLine, warn: Printer = stderrLine, limits: FetchLimits = FETCH_LIMITS): InstallPorts {
  return {
    disks: async () => parseDisks((await runPlan(lsblkDisksPlan())).stdout, { byId: await links('/dev/disk/by-id'), byPath: await links('/dev/disk/by-path') }),
    bootDisks: systemDevices,
    fetchSeed: async (url) => {
      const path = localPath(url);
      if (!path) return parseSeedPayload(url, await (await fetchOk(url, limits)).json());
      const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
        throw localError(url, err);
      });
      const body = jsonOf(url, text);
      // The ISO's empty seed slot.
      return body === null ? undefined : parseSeedPayload(url, body);
    },
    seedMedia: async () => {
      const found = labelledDevices((await runPlan(blkidAllPlan(), { allowFailure: true })).stdout, SEED_MEDIUM_LABEL);
      const media: SeedMedium[] = [];
      for (const { device, type } of found) {
        if (type !== 'vfat') throw new GeminiError(`${device} is labelled ${SEED_MEDIUM_LABEL} but holds ${type || 'no known'} filesystem; a seed medium is FAT (geminik8s seed --format medium writes one)`, ExitCode.invalidInput);
        // mtools reads FAT without mounting it: nothing on the medium can change.
        const r = await runPlan({ cmd: 'mtype', args: ['-i', device, `::/${SEED_MEDIUM_FILE}`], env: { MTOOLS_SKIP_CHECK: '1' } }, { allowFailure: true });
        const where = `${device} (${SEED_MEDIUM_LABEL}) ${SEED_MEDIUM_FILE}`;
        if (r.exitCode !== 0) throw new GeminiError(`${where}: cannot be read (${r.stderr.trim() || `mtype exit ${r.exitCode}`}); write the medium with geminik8s seed --format medium`, ExitCode.invalidInput);
        media.push({ device, disks: await withDisksUnder([device]), payload: parseSeedPayload(where, jsonOf(where, r.stdout)) });
      }
      return media;
    },
    imageHead: async (url) => {
      const path = localPath(url);
      if (path) {
        try {
          return new Uint8Array(fileHead(path, 32));
        } catch (err) {
          throw localError(url, err as NodeJS.ErrnoException);
        }
      }
      return new Uint8Array(await (await fetchOk(url, limits, { headers: { range: 'bytes=0-31' } })).arrayBuffer());
    },
    openImage: async (url) => {
      const path = localPath(url);
      const input = path ? createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }) : Readable.fromWeb((await fetchStream(url, limits)) as import('node:stream/web').ReadableStream<Uint8Array>);
      const z = streamPlan({ cmd: 'zstd', args: ['-d', '-c', '-q'] }, input);
      return { stream: z.stdout as AsyncIterable<Uint8Array>, done: z.done };
    },
    report: async (url, stage, detail) => {
      await fetchOk(url, limits, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ stage, ...(detail ? { detail } : {}) }) });
    },
    reboot: async () => {
      await runPlan({ cmd: 'systemctl', args: ['reboot'] });
    },
    print,
    warn,
  };
}

/** `geminik8s-agent install`: exit 0 installed (or dry run), 2 bad input, 4 a command or transfer failed, 5 refused. */
export async function installCommand(args: string[], ports: InstallPorts = machinePorts()): Promise<number> {
  if (args.includes('--help')) {
    ports.print(INSTALL_USAGE);
    return 0;
  }
  const cmdline = await readFile(option(args, '--cmdline') ?? '/proc/cmdline', 'utf8');
  try {
    await install(cmdline, { dryRun: args.includes('--dry-run'), reboot: !args.includes('--no-reboot') }, ports);
    return 0;
  } catch (err) {
    if (!(err instanceof GeminiError)) throw err;
    ports.warn(`geminik8s-agent install: ${err.message}`);
    return err.exitCode;
  }
}
