import { createHash } from 'node:crypto';
import { open, rm, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { indexTar, ustarHeader } from '#common/upgrade/bundle.ts';
import { SUC_IMAGE_PATHS } from '#common/upgrade/suc.ts';
import { elfClosure } from './elf.ts';
import { writeFileMember, writeMember, writeTar, type TarWriter } from './tar.ts';

// The image the System Upgrade Controller pulls (docs/upgrades.md): one layer holding the
// bundle, a shell and the job's entrypoint, written as an OCI image layout in one tar
// (image-spec v1.1: oci-layout, index.json, blobs/sha256/...). The shell is the node root's
// own busybox with the libraries it loads, so the image has no base to pull and runs on the
// same architecture as the nodes it upgrades.

export const OCI_MEDIA_TYPES = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
} as const;

/**
 * The job's entrypoint: run the host's agent on the host's root, on the bundle read through
 * this shell's own root. SUC runs the job with the host's PID namespace, so `/proc/$$/root`
 * seen from the host is the container's filesystem: nothing is copied, and the shell waits for
 * the agent, which keeps that root alive.
 */
export function sucJobScript(): string {
  return `#!/bin/busybox sh
# geminik8s: the System Upgrade Controller job's entrypoint. SUC mounts the host's root at
# /host and runs the job in the host's PID namespace; the host's agent verifies the bundle
# and writes it (geminik8s-agent upgrade suc-job).
bb=/bin/busybox
if [ ! -x /host/usr/bin/geminik8s-agent ]; then
  echo "suc-job: /host/usr/bin/geminik8s-agent is missing: this is not a geminik8s node, or the host's root is not at /host" >&2
  exit 3
fi
# Seen from the host, /proc/$$/root must be this job's own root.
if [ "$($bb stat -L -c %d:%i /geminik8s/suc-job)" != "$($bb stat -L -c %d:%i /host/proc/$$/root/geminik8s/suc-job 2>&1)" ]; then
  echo "suc-job: not in the host's PID namespace (SUC runs its jobs with hostPID): the host cannot reach this job's files" >&2
  exit 3
fi
$bb env -u LD_LIBRARY_PATH $bb chroot /host /usr/bin/geminik8s-agent upgrade suc-job "/proc/$$/root${SUC_IMAGE_PATHS.bundle}"
`;
}

export interface OciInput {
  /** The node's root tree (for busybox and its libraries). */
  tree: string;
  bundle: string;
  image: string;
  version: string;
  arch: 'amd64' | 'arm64';
  sourceDateEpoch: number;
  /** Scratch space for the layer before its digest is known. */
  workDir: string;
}

export interface OciResult {
  manifestDigest: string;
  layerDigest: string;
  configDigest: string;
  bytes: number;
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));

/** The layer's directories for a set of file paths, parents first. */
function directoriesOf(paths: string[]): string[] {
  const dirs = new Set<string>();
  for (const p of paths) for (let d = posix.dirname(p); d !== '.' && d !== '/'; d = posix.dirname(d)) dirs.add(d);
  return [...dirs].sort();
}

/** Write `out`: an OCI image layout tar for the bundle, tagged with its version. */
export async function writeOciArchive(out: string, input: OciInput): Promise<OciResult> {
  const mtime = input.sourceDateEpoch;
  const busybox = await elfClosure(input.tree, '/usr/bin/busybox', input.arch);
  const script = Buffer.from(sucJobScript());
  const files: { at: string; write: (w: TarWriter) => Promise<void> }[] = [
    ...busybox.map(({ at, from }) => ({
      // The program under /bin, where the script's #! looks; the loader and libraries where they are asked for.
      at: at === '/usr/bin/busybox' ? 'bin/busybox' : at.slice(1),
      write: (w: TarWriter) => writeFileMember(w, at === '/usr/bin/busybox' ? 'bin/busybox' : at.slice(1), join(input.tree, from), mtime, 0o755),
    })),
    { at: SUC_IMAGE_PATHS.entrypoint.slice(1), write: (w: TarWriter) => writeMember(w, SUC_IMAGE_PATHS.entrypoint.slice(1), script, mtime, 0o755) },
    { at: SUC_IMAGE_PATHS.bundle.slice(1), write: (w: TarWriter) => writeFileMember(w, SUC_IMAGE_PATHS.bundle.slice(1), input.bundle, mtime) },
  ];
  const layerFile = join(input.workDir, 'layer.tar');
  const layerDigest = await writeTar(layerFile, async (w) => {
    for (const d of directoriesOf(files.map((f) => f.at))) await w.put(ustarHeader(`${d}/`, 0, mtime, { type: '5' }));
    for (const f of files.sort((a, b) => a.at.localeCompare(b.at))) await f.write(w);
  });
  const layerSize = (await stat(layerFile)).size;
  const created = new Date(mtime * 1000).toISOString();
  const config = json({
    created,
    architecture: input.arch,
    os: 'linux',
    config: {
      Entrypoint: [SUC_IMAGE_PATHS.entrypoint],
      Env: ['PATH=/bin'],
      Labels: { 'org.opencontainers.image.title': `${input.image} upgrade`, 'org.opencontainers.image.version': input.version },
    },
    rootfs: { type: 'layers', diff_ids: [layerDigest] },
    history: [{ created, created_by: 'geminik8s build --output oci' }],
  });
  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const manifest = json({
    schemaVersion: 2,
    mediaType: OCI_MEDIA_TYPES.manifest,
    config: { mediaType: OCI_MEDIA_TYPES.config, digest: sha(config), size: config.length },
    layers: [{ mediaType: OCI_MEDIA_TYPES.layer, digest: layerDigest, size: layerSize }],
    annotations: { 'org.opencontainers.image.version': input.version, 'org.opencontainers.image.created': created },
  });
  const index = json({
    schemaVersion: 2,
    mediaType: OCI_MEDIA_TYPES.index,
    manifests: [{
      mediaType: OCI_MEDIA_TYPES.manifest, digest: sha(manifest), size: manifest.length,
      platform: { architecture: input.arch, os: 'linux' },
      annotations: { 'org.opencontainers.image.ref.name': input.version },
    }],
  });
  const blob = (digest: string): string => `blobs/sha256/${digest.slice('sha256:'.length)}`;
  await writeTar(out, async (w) => {
    await writeMember(w, 'oci-layout', json({ imageLayoutVersion: '1.0.0' }), mtime);
    await writeMember(w, 'index.json', index, mtime);
    for (const d of ['blobs/', 'blobs/sha256/']) await w.put(ustarHeader(d, 0, mtime, { type: '5' }));
    await writeMember(w, blob(sha(config)), config, mtime);
    await writeMember(w, blob(sha(manifest)), manifest, mtime);
    await writeFileMember(w, blob(layerDigest), layerFile, mtime);
  });
  await rm(layerFile, { force: true });
  return { manifestDigest: sha(manifest), layerDigest, configDigest: sha(config), bytes: (await stat(out)).size };
}

/** The pieces of an OCI layout tar, as `push` reads them. */
export interface OciArchive {
  index: { manifests: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[] };
  /** Offsets of the members, by name. */
  members: Map<string, { offset: number; size: number }>;
}

/** Read an OCI layout tar's index and where each blob sits (no extraction). */
export async function readOciArchive(file: string): Promise<OciArchive> {
  const members = new Map((await indexTar(file, { skipDirectories: true })).map((m) => [m.name, { offset: m.offset, size: m.size }]));
  const layout = members.get('oci-layout');
  const idx = members.get('index.json');
  if (!layout || !idx) throw new Error(`${file}: not an OCI image layout (no oci-layout or index.json)`);
  const handle = await open(file, 'r');
  try {
    const buf = Buffer.alloc(idx.size);
    await handle.read(buf, 0, idx.size, idx.offset);
    return { index: JSON.parse(buf.toString('utf8')) as OciArchive['index'], members };
  } finally {
    await handle.close();
  }
}

/** The one image in an OCI layout tar: its index entry, manifest (parsed and as bytes). */
export async function readOciImage(file: string): Promise<{
  archive: OciArchive;
  entry: OciArchive['index']['manifests'][number];
  manifest: { mediaType: string; config: { digest: string; size: number }; layers: { mediaType: string; digest: string; size: number }[] };
  manifestBytes: Buffer;
}> {
  const archive = await readOciArchive(file);
  if (archive.index.manifests.length !== 1) throw new Error(`${file}: expected one image in index.json, found ${archive.index.manifests.length}`);
  const entry = archive.index.manifests[0]!;
  const at = archive.members.get(`blobs/sha256/${entry.digest.replace(/^sha256:/, '')}`);
  if (!at) throw new Error(`${file}: the manifest blob ${entry.digest} is missing`);
  const handle = await open(file, 'r');
  try {
    const manifestBytes = Buffer.alloc(at.size);
    await handle.read(manifestBytes, 0, at.size, at.offset);
    return { archive, entry, manifest: JSON.parse(manifestBytes.toString('utf8')) as never, manifestBytes };
  } finally {
    await handle.close();
  }
}
