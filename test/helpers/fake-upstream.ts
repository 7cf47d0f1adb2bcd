import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { artifactsFor, type ImageArtifact, type ReleaseArtifact } from '#builder/components/catalog.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A tar of the given files (paths as a layer writes them: no leading slash). */
export async function tarOf(entries: { name: string; body?: Buffer; type?: 'file' | 'directory' | 'symlink'; linkname?: string }[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => pack.on('end', () => r()));
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name: e.name, type: e.type ?? 'file', mode: e.type === 'directory' ? 0o755 : 0o755, mtime: new Date(0), linkname: e.linkname }, e.body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** A registry's content: manifests by digest and tag, blobs by digest. */
export interface FakeRegistryContent {
  manifests: Map<string, { mediaType: string; body: Buffer }>;
  blobs: Map<string, Buffer>;
}

/** Add one single-platform image (gzip layers, in order) to a registry; returns its manifest digest (hex). */
export function addImage(reg: FakeRegistryContent, arch: string, layers: Buffer[]): string {
  const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', config: { Entrypoint: ['/kube-vip'] }, rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) } }));
  reg.blobs.set(sha(config), config);
  const layerDescs = layers.map((l) => {
    const gz = gzipSync(l);
    reg.blobs.set(sha(gz), gz);
    return { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha(gz)}`, size: gz.length };
  });
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length }, layers: layerDescs }));
  reg.manifests.set(sha(manifest), { mediaType: 'application/vnd.oci.image.manifest.v1+json', body: manifest });
  return sha(manifest);
}

/** Tag an index of the given platform manifests, with a buildx-style attestation entry (unknown/unknown). */
export function tagIndex(reg: FakeRegistryContent, tag: string, platforms: { arch: string; variant?: string; digest: string }[]): string {
  const entries = platforms.map((p) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${p.digest}`, size: reg.manifests.get(p.digest)!.body.length, platform: { architecture: p.arch, os: 'linux', ...(p.variant ? { variant: p.variant } : {}) } }));
  const attestation = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: entries[0]!.digest, size: entries[0]!.size, platform: { architecture: 'unknown', os: 'unknown' }, annotations: { 'vnd.docker.reference.type': 'attestation-manifest' } };
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [attestation, ...entries] }));
  reg.manifests.set(sha(index), { mediaType: 'application/vnd.oci.image.index.v1+json', body: index });
  reg.manifests.set(tag, { mediaType: 'application/vnd.oci.image.index.v1+json', body: index });
  return sha(index);
}

/**
 * A loopback stand-in for upstream: GitHub releases (with the redirect to a download host) and
 * a container registry speaking the OCI distribution API with anonymous bearer tokens, whose
 * blobs also redirect. Everything it serves is generated: random release files with checksum
 * files in the upstream format, and kube-vip images (FROM scratch style, the binary at
 * `/kube-vip`) for amd64 and arm64 (arm/v7 too, never picked).
 */
export interface FakeUpstream {
  base: string;
  server: Server;
  /** Release files by URL path. */
  files: Map<string, Buffer>;
  registry: FakeRegistryContent;
  /** The kube-vip binary of each architecture's image. */
  kubeVip: Map<string, Buffer>;
  /** Release paths whose body is cut short (Content-Length larger than what is sent). */
  truncate: Set<string>;
  hits: string[];
  tokens: number;
  close(): void;
}

const TOKEN = 'anonymous-pull-token';

export async function fakeUpstream(image: Parameters<typeof artifactsFor>[0]): Promise<FakeUpstream> {
  const files = new Map<string, Buffer>();
  const registry: FakeRegistryContent = { manifests: new Map(), blobs: new Map() };
  const fake: FakeUpstream = { base: '', server: undefined as unknown as Server, files, registry, kubeVip: new Map(), truncate: new Set(), hits: [], tokens: 0, close: () => fake.server.close() };
  fake.server = createServer((req, res) => {
    const url = req.url ?? '/';
    fake.hits.push(url);
    if (url.startsWith('/token?')) {
      fake.tokens++;
      const q = new URL(url, fake.base).searchParams;
      if (q.get('scope') !== 'repository:kube-vip/kube-vip:pull' || q.get('service') !== 'fake-registry') {
        res.writeHead(400);
        return res.end();
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ token: TOKEN }));
    }
    if (url.startsWith('/v2/')) {
      if (req.headers.authorization !== `Bearer ${TOKEN}`) {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${fake.base}/token",service="fake-registry",scope="repository:kube-vip/kube-vip:pull"` });
        return res.end();
      }
      const m = /^\/v2\/kube-vip\/kube-vip\/(manifests|blobs)\/(.+)$/.exec(url);
      if (m?.[1] === 'manifests') {
        const ref = decodeURIComponent(m[2]!).replace(/^sha256:/, '');
        const entry = registry.manifests.get(ref);
        if (!entry) {
          res.writeHead(404, { 'content-type': 'application/json' });
          return res.end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
        }
        res.writeHead(200, { 'content-type': entry.mediaType, 'docker-content-digest': `sha256:${sha(entry.body)}` });
        return res.end(entry.body);
      }
      if (m?.[1] === 'blobs') {
        // ghcr.io answers a blob with a redirect to its CDN, which needs no token.
        res.writeHead(307, { location: `/cdn-blobs/${m[2]!.replace(/^sha256:/, '')}` });
        return res.end();
      }
      res.writeHead(404);
      return res.end();
    }
    if (url.startsWith('/cdn-blobs/')) {
      const blob = registry.blobs.get(url.slice('/cdn-blobs/'.length));
      res.writeHead(blob ? 200 : 404, blob ? { 'content-length': String(blob.length) } : {});
      return res.end(blob);
    }
    // GitHub answers release downloads with a redirect to its CDN.
    if (!url.startsWith('/cdn/')) {
      res.writeHead(302, { location: `/cdn${url}` });
      return res.end();
    }
    const path = decodeURIComponent(url.slice(4));
    const body = files.get(path);
    if (!body) {
      res.writeHead(404);
      return res.end('not found');
    }
    if (fake.truncate.has(path)) {
      res.writeHead(200, { 'content-length': String(body.length + 1000) });
      res.write(body.subarray(0, Math.floor(body.length / 2)));
      // Cut the connection once the client is reading the body.
      setTimeout(() => res.destroy(), 50);
      return;
    }
    res.writeHead(200, { 'content-length': String(body.length) });
    res.end(body);
  });
  await new Promise<void>((r) => fake.server.listen(0, '127.0.0.1', () => r()));
  fake.base = `http://127.0.0.1:${(fake.server.address() as AddressInfo).port}`;
  const sums = new Map<string, string[]>();
  const specs = artifactsFor(image, { releases: fake.base, registry: fake.base });
  for (const spec of specs.filter((s): s is ReleaseArtifact => s.kind === 'release')) {
    const body = randomBytes(64 * 1024 + Math.floor(Math.random() * 1024));
    files.set(decodeURIComponent(new URL(spec.url).pathname), body);
    const sumPath = decodeURIComponent(new URL(spec.checksumUrl).pathname);
    sums.set(sumPath, [...(sums.get(sumPath) ?? []), `${sha(body)}  ${spec.name}`]);
  }
  for (const [path, lines] of sums) files.set(path, Buffer.from(`${lines.join('\n')}\n`));
  for (const spec of specs.filter((s): s is ImageArtifact => s.kind === 'image')) {
    const platforms: { arch: string; variant?: string; digest: string }[] = [];
    for (const [arch, variant] of [['amd64'], ['arm', 'v7'], ['arm64', 'v8']] as const) {
      const bin = randomBytes(96 * 1024);
      if (arch !== 'arm') fake.kubeVip.set(arch, bin);
      const certs = await tarOf([{ name: 'etc/', type: 'directory' }, { name: 'etc/ssl/certs/ca-certificates.crt', body: Buffer.from('certificates\n') }]);
      platforms.push({ arch, variant, digest: addImage(registry, arch, [certs, await tarOf([{ name: 'kube-vip', body: bin }])]) });
    }
    tagIndex(registry, spec.tag, platforms);
  }
  return fake;
}

/** The platform manifest digest (hex) the fake registry's tag names for an architecture. */
export function platformDigest(fake: FakeUpstream, tag: string, arch: string): string {
  const index = JSON.parse(fake.registry.manifests.get(tag)!.body.toString()) as { manifests: { digest: string; platform: { os: string; architecture: string; variant?: string } }[] };
  return index.manifests.find((m) => m.platform.os === 'linux' && m.platform.architecture === arch)!.digest.replace(/^sha256:/, '');
}
