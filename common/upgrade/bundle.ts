import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { deviceSize } from '../fsutil.ts';
import * as z from 'zod';
import { ExitCode, GeminiError } from '../errors.ts';
import { verifyData, type MinisignPublicKey, type MinisignVerified } from '../minisign.ts';
import { API_VERSION, ARCHES } from '../schema/image.ts';
import { dnsLabel } from '../schema/units.ts';
import { parseVersion, rangeError, satisfies } from '../semver.ts';

// An upgrade bundle is one POSIX ustar file (GNU tar lists and extracts it):
//   manifest.json          what the bundle holds and for which nodes; sha256 of every part
//   manifest.json.minisig  minisign signature of manifest.json (absent: unsigned, refused by nodes)
//   vmlinuz, initrd.img    the slot's kernel and initrd (GRUB loads them from the ESP)
//   root.img               the root slot filesystem
// The manifest comes first, so a node reads and checks it before it touches any part.

export const BUNDLE_KIND = 'UpgradeBundle';
export const MANIFEST_NAME = 'manifest.json';
export const SIGNATURE_NAME = 'manifest.json.minisig';
export const PART_NAMES = ['vmlinuz', 'initrd.img', 'root.img'] as const;
export type PartName = (typeof PART_NAMES)[number];
/** Largest manifest or signature a reader accepts: they are read into memory. */
const MAX_META_BYTES = 64 * 1024;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 in lower-case hex');

export const BundleManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(BUNDLE_KIND),
  image: dnsLabel,
  version: z.string().refine((v) => parseVersion(v) !== undefined, 'must be a semantic version'),
  arch: z.enum(ARCHES),
  /** The PostgreSQL major of the image: a slot swap never migrates data (design decision 10). */
  postgresqlMajor: z.number().int(),
  /** Ranges of running versions this bundle may replace; see common/semver.ts. */
  upgradableFrom: z
    .array(
      z.string().superRefine((r, ctx) => {
        const e = rangeError(r);
        if (e) ctx.addIssue({ code: 'custom', message: e });
      }),
    )
    .min(1),
  rootfsType: z.enum(['squashfs', 'erofs', 'ext4']),
  /** SOURCE_DATE_EPOCH of the build, as ISO 8601. */
  created: z.string(),
  parts: z.array(z.strictObject({ name: z.enum(PART_NAMES), bytes: z.number().int().min(1), sha256: sha256Hex })).length(PART_NAMES.length),
});
export type BundleManifest = z.output<typeof BundleManifestSchema>;

// ---------------------------------------------------------------- ustar

const BLOCK = 512;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

/** A ustar header, root:root: a regular file (mode 0644 unless told) or a directory (type 5). */
export function ustarHeader(name: string, size: number, mtime: number, opts: { mode?: number; type?: '0' | '5' } = {}): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar member name too long: ${name}`);
  if (size >= 8 ** 11) throw new Error(`tar member ${name} is too large for ustar (${size} bytes)`);
  const type = opts.type ?? '0';
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 'utf8');
  h.write(octal(opts.mode ?? (type === '5' ? 0o755 : 0o644), 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  h.write(octal(size, 12), 124, 'latin1');
  h.write(octal(mtime, 12), 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write(type, 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write('root', 265, 'latin1');
  h.write('root', 297, 'latin1');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** Zero bytes that pad a member of `size` bytes to a whole block. */
export function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** Two zero blocks: the end of an archive. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

/** A member of a bundle: where its bytes are in the file. */
export interface TarMember {
  name: string;
  offset: number;
  size: number;
}

function bundleError(file: string, message: string): GeminiError {
  return new GeminiError(`${file}: ${message}`, ExitCode.refused);
}

function parseOctal(field: Buffer): number | undefined {
  if (field[0]! & 0x80) {
    // GNU base-256 for large sizes.
    let v = 0;
    for (let i = 1; i < field.length; i++) v = v * 256 + field[i]!;
    return v;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
  return /^[0-7]+$/.test(text) ? parseInt(text, 8) : text === '' ? 0 : undefined;
}

/** List the regular files of a tar (a file, or a block device holding one) with their offsets, reading headers only. */
export async function indexTar(file: string, opts: { skipDirectories?: boolean } = {}): Promise<TarMember[]> {
  const total = await deviceSize(file);
  const handle = await open(file, 'r');
  try {
    const members: TarMember[] = [];
    let pos = 0;
    const header = Buffer.alloc(BLOCK);
    for (;;) {
      if (pos + BLOCK > total) throw bundleError(file, `truncated: no end-of-archive marker after ${members.length} members`);
      await handle.read(header, 0, BLOCK, pos);
      if (header.every((b) => b === 0)) break;
      let sum = 0;
      for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
      if (parseOctal(header.subarray(148, 156)) !== sum) throw bundleError(file, `not a tar archive (bad header checksum at byte ${pos})`);
      const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '');
      const size = parseOctal(header.subarray(124, 136));
      const type = String.fromCharCode(header[156]!);
      if (size === undefined) throw bundleError(file, `member ${name}: unreadable size`);
      const directory = type === '5' && opts.skipDirectories;
      if (type !== '0' && type !== '\0' && !directory) throw bundleError(file, `member ${name}: type ${JSON.stringify(type)}; a bundle holds regular files only`);
      if (pos + BLOCK + size > total) throw bundleError(file, `truncated: member ${name} needs ${size} bytes`);
      if (!directory) members.push({ name, offset: pos + BLOCK, size });
      pos += BLOCK + size + padding(size).length;
    }
    return members;
  } finally {
    await handle.close();
  }
}

async function readMember(handle: FileHandle, m: TarMember): Promise<Buffer> {
  const buf = Buffer.alloc(m.size);
  await handle.read(buf, 0, m.size, m.offset);
  return buf;
}

/** sha256 of a byte range of a file, streamed. */
export async function sha256Range(file: string, offset: number, size: number): Promise<string> {
  const hash = createHash('sha256');
  if (size > 0) for await (const chunk of createReadStream(file, { start: offset, end: offset + size - 1, highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}

// ---------------------------------------------------------------- reading and checking

/** What a node checks a bundle against. */
export interface RunningImage {
  image: string;
  version: string;
  arch: string;
  postgresqlMajor: number;
  /** The slot file system GRUB's kernel command line names (`rootfstype=`), when it names one. */
  rootfsType?: string;
}

/** A bundle whose signature, manifest and parts all checked out. */
export interface VerifiedBundle {
  file: string;
  manifest: BundleManifest;
  /** sha256 of manifest.json: names this bundle in records ("not retried automatically"). */
  manifestSha256: string;
  signer: MinisignVerified;
  parts: Record<PartName, TarMember & { sha256: string }>;
}

/** Read and validate the manifest (no signature check): for `inspect`, and the first step of verifyBundle. */
export async function readBundle(file: string): Promise<{ members: TarMember[]; manifestBytes: Buffer; manifest: BundleManifest; signature?: string }> {
  const members = await indexTar(file);
  if (members[0]?.name !== MANIFEST_NAME) throw bundleError(file, `the first member is ${members[0]?.name ?? 'missing'}; an upgrade bundle starts with ${MANIFEST_NAME} (geminik8s build --output upgrade)`);
  const handle = await open(file, 'r');
  try {
    const m = members[0];
    if (m.size > MAX_META_BYTES) throw bundleError(file, `${MANIFEST_NAME} is ${m.size} bytes; at most ${MAX_META_BYTES}`);
    const manifestBytes = await readMember(handle, m);
    let json: unknown;
    try {
      json = JSON.parse(manifestBytes.toString('utf8'));
    } catch (err) {
      throw bundleError(file, `${MANIFEST_NAME} is not JSON: ${(err as Error).message}`);
    }
    const parsed = BundleManifestSchema.safeParse(json);
    if (!parsed.success) {
      throw bundleError(file, `${MANIFEST_NAME}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`).join('; ')}`);
    }
    const sig = members.find((x) => x.name === SIGNATURE_NAME);
    if (sig && sig.size > MAX_META_BYTES) throw bundleError(file, `${SIGNATURE_NAME} is ${sig.size} bytes; at most ${MAX_META_BYTES}`);
    const signature = sig ? (await readMember(handle, sig)).toString('utf8') : undefined;
    return { members, manifestBytes, manifest: parsed.data, signature };
  } finally {
    await handle.close();
  }
}

/** Why a bundle does not fit the running image, or undefined when it does. */
export function mismatch(manifest: BundleManifest, running: RunningImage): string | undefined {
  if (manifest.arch !== running.arch) return `the bundle is for ${manifest.arch}; this node is ${running.arch}`;
  if (manifest.image !== running.image) return `the bundle is image ${manifest.image}; this node runs image ${running.image}`;
  if (manifest.postgresqlMajor !== running.postgresqlMajor) {
    return `the bundle carries PostgreSQL ${manifest.postgresqlMajor}; this node's data is PostgreSQL ${running.postgresqlMajor} (a slot swap never migrates data)`;
  }
  if (running.rootfsType && manifest.rootfsType !== running.rootfsType) {
    // grub.cfg on the ESP gives both slots one rootfstype=, and an upgrade does not rewrite it.
    return `the bundle's slot is ${manifest.rootfsType}; this node's GRUB mounts its slots as ${running.rootfsType} (rootfstype= on its kernel command line), so the new slot could not boot: changing the slot file system needs a re-flash`;
  }
  if (!manifest.upgradableFrom.some((r) => satisfies(running.version, r))) {
    return `the bundle (${manifest.version}) upgrades from ${manifest.upgradableFrom.join(' or ')}; this node runs ${running.version}`;
  }
  return undefined;
}

/** How a node names a bundle (its failed list, its record): the sha256 of the manifest's bytes. */
export function manifestDigest(manifestBytes: Buffer): string {
  return createHash('sha256').update(manifestBytes).digest('hex');
}

/**
 * Everything a node checks before it writes a byte: the signature against its trusted keys,
 * the manifest against the running image, and every part against its sha256 (one full read).
 * Throws GeminiError (exit `refused`) with the reason.
 */
export async function verifyBundle(file: string, trusted: MinisignPublicKey[], running: RunningImage): Promise<VerifiedBundle> {
  const { members, manifestBytes, manifest, signature } = await readBundle(file);
  if (signature === undefined) throw bundleError(file, `unsigned (no ${SIGNATURE_NAME}); sign it with geminik8s build --sign-key`);
  if (!trusted.length) throw bundleError(file, 'this node trusts no upgrade key (image upgrade.trustedKeys, or /etc/geminik8s/upgrade-keys/)');
  const signer = verifyData(signature, manifestBytes, trusted, `${file}: ${SIGNATURE_NAME}`);
  const why = mismatch(manifest, running);
  if (why) throw bundleError(file, why);
  const parts = {} as VerifiedBundle['parts'];
  for (const p of manifest.parts) {
    const m = members.find((x) => x.name === p.name);
    if (!m) throw bundleError(file, `the manifest lists ${p.name}, which the bundle lacks`);
    if (m.size !== p.bytes) throw bundleError(file, `${p.name} is ${m.size} bytes; the manifest says ${p.bytes}`);
    const sha256 = await sha256Range(file, m.offset, m.size);
    if (sha256 !== p.sha256) throw bundleError(file, `${p.name} does not match its sha256 in the manifest (tampered or damaged)`);
    parts[p.name] = { ...m, sha256 };
  }
  for (const name of PART_NAMES) if (!parts[name]) throw bundleError(file, `the manifest does not list ${name}`);
  return { file, manifest, manifestSha256: manifestDigest(manifestBytes), signer, parts };
}
