import { NODE_PATHS } from '#common/render/paths.ts';
import type { Arch, Image } from '#common/schema/image.ts';

/** One upstream release file the image needs, and where it goes in the root. */
export interface ReleaseArtifact {
  kind: 'release';
  component: 'k3s' | 'kine';
  version: string;
  /** The release asset's file name (also its name in an --artifacts directory). */
  name: string;
  url: string;
  /** The release's published checksum file, and its name. */
  checksumUrl: string;
  checksumName: string;
  /** Where the file is installed in the root. */
  installPath: string;
  mode: number;
}

/**
 * One file taken out of a container image that upstream publishes instead of release binaries.
 * The image is pulled through the OCI distribution API for one platform, every blob checked
 * against its digest, and the lock pins the platform manifest's digest, which covers the rest.
 */
export interface ImageArtifact {
  kind: 'image';
  component: 'kubeVip';
  version: string;
  /** `<image>@<os>/<arch>`: the lock file's key, and how messages name it. */
  name: string;
  /** The registry's base URL (https://ghcr.io, or a mirror). */
  registry: string;
  /** The canonical image name, whichever registry serves it: `ghcr.io/kube-vip/kube-vip`. */
  image: string;
  /** The repository on the registry: `kube-vip/kube-vip`. */
  repository: string;
  tag: string;
  platform: { os: 'linux'; architecture: Arch };
  /** The file in the image's root file system to install. */
  member: string;
  installPath: string;
  mode: number;
}

export type ArtifactSpec = ReleaseArtifact | ImageArtifact;

export const DEFAULT_RELEASE_BASE = 'https://github.com';
export const DEFAULT_REGISTRY = 'https://ghcr.io';

/** Where upstream files come from: GitHub releases and the container registry (or mirrors). */
export interface ArtifactSources {
  releases: string;
  registry: string;
}

/** The sources, with `GEMINIK8S_RELEASE_BASE_URL` and `GEMINIK8S_REGISTRY_URL` as mirrors. */
export function artifactSources(env: NodeJS.ProcessEnv = process.env): ArtifactSources {
  return { releases: env.GEMINIK8S_RELEASE_BASE_URL || DEFAULT_RELEASE_BASE, registry: env.GEMINIK8S_REGISTRY_URL || DEFAULT_REGISTRY };
}

/** GitHub release download URL; `+` in K3s tags must be percent-encoded. */
function releaseUrl(base: string, repo: string, tag: string, asset: string): string {
  return `${base.replace(/\/+$/, '')}/${repo}/releases/download/${encodeURIComponent(tag)}/${asset}`;
}

/**
 * The upstream artifacts of an image. Asset and checksum file names follow each project's
 * release pipeline: K3s publishes `k3s`/`k3s-arm64`, `k3s-airgap-images-<arch>.tar.zst` and
 * `sha256sum-<arch>.txt`; Kine `kine-<arch>` and `sha256sum-<arch>.txt`. kube-vip publishes no
 * binaries, only multi-arch images (`ghcr.io/kube-vip/kube-vip:<tag>`, FROM scratch with the
 * static binary at `/kube-vip`; kube-vip/kube-vip#706): the binary is taken out of the image.
 */
export function artifactsFor(image: Pick<Image, 'arch' | 'kubernetes' | 'components'>, sources: Partial<ArtifactSources> = {}): ArtifactSpec[] {
  if (!image.kubernetes.enabled) return [];
  const base = sources.releases ?? DEFAULT_RELEASE_BASE;
  const arch: Arch = image.arch;
  const out: ArtifactSpec[] = [];
  const { k3s, kine, kubeVip } = image.components;
  if (k3s) {
    const sums = `sha256sum-${arch}.txt`;
    const bin = arch === 'amd64' ? 'k3s' : `k3s-${arch}`;
    out.push({ kind: 'release', component: 'k3s', version: k3s.version, name: bin, url: releaseUrl(base, 'k3s-io/k3s', k3s.version, bin), checksumUrl: releaseUrl(base, 'k3s-io/k3s', k3s.version, sums), checksumName: sums, installPath: '/usr/local/bin/k3s', mode: 0o755 });
    if (k3s.airgapImages) {
      const images = `k3s-airgap-images-${arch}.tar.zst`;
      // /var/lib/rancher persists on the data partition, so the image ships them read-only in
      // the slot and geminik8s-k3s-images.service bind-mounts each into K3s's images directory.
      out.push({ kind: 'release', component: 'k3s', version: k3s.version, name: images, url: releaseUrl(base, 'k3s-io/k3s', k3s.version, images), checksumUrl: releaseUrl(base, 'k3s-io/k3s', k3s.version, sums), checksumName: sums, installPath: `${NODE_PATHS.k3sImagesShipped}/${images}`, mode: 0o644 });
    }
  }
  if (kine) {
    const bin = `kine-${arch}`;
    const sums = `sha256sum-${arch}.txt`;
    out.push({ kind: 'release', component: 'kine', version: kine.version, name: bin, url: releaseUrl(base, 'k3s-io/kine', kine.version, bin), checksumUrl: releaseUrl(base, 'k3s-io/kine', kine.version, sums), checksumName: sums, installPath: '/usr/local/bin/kine', mode: 0o755 });
  }
  if (kubeVip) {
    const imageName = 'ghcr.io/kube-vip/kube-vip';
    out.push({
      kind: 'image', component: 'kubeVip', version: kubeVip.version, name: `${imageName}@linux/${arch}`,
      registry: sources.registry ?? DEFAULT_REGISTRY, image: imageName, repository: 'kube-vip/kube-vip', tag: kubeVip.version,
      platform: { os: 'linux', architecture: arch }, member: 'kube-vip', installPath: NODE_PATHS.kubeVipBin, mode: 0o755,
    });
  }
  return out;
}

/** Parse a `sha256sum`-style file: `<hex>  <name>` (binary mode `*name` too). */
export function parseChecksums(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$/.exec(line.trim());
    if (m) sums.set(m[2]!.replace(/^.*\//, ''), m[1]!.toLowerCase());
  }
  return sums;
}
