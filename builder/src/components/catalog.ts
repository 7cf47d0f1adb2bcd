import { NODE_PATHS } from '../../../common/render/paths.ts';
import type { Arch, Image } from '../../../common/schema/image.ts';

/** One upstream release file the image needs, and where it goes in the root. */
export interface ArtifactSpec {
  component: 'k3s' | 'kine' | 'kubeVip';
  version: string;
  /** The release asset's file name (also its name in an --artifacts directory). */
  name: string;
  url: string;
  /** The release's published checksum file, and its name. */
  checksumUrl: string;
  checksumName: string;
  /** Where the file (or the member extracted from it) is installed in the root. */
  installPath: string;
  mode: number;
  /** For archives: the member to install. */
  extract?: string;
}

export const DEFAULT_RELEASE_BASE = 'https://github.com';

/** GitHub release download URL; `+` in K3s tags must be percent-encoded. */
function releaseUrl(base: string, repo: string, tag: string, asset: string): string {
  return `${base.replace(/\/+$/, '')}/${repo}/releases/download/${encodeURIComponent(tag)}/${asset}`;
}

/**
 * The upstream artifacts of an image. Asset and checksum file names follow each project's
 * release pipeline: K3s publishes `k3s`/`k3s-arm64`, `k3s-airgap-images-<arch>.tar.zst` and
 * `sha256sum-<arch>.txt`; Kine `kine-<arch>` and `sha256sum-<arch>.txt`. kube-vip publishes no
 * binaries (container images only; kube-vip/kube-vip#706): its entry below names an archive
 * and a `checksums.txt` that do not exist upstream, so an image with `components.kubeVip` fails
 * at that download (docs/components.md).
 */
export function artifactsFor(image: Pick<Image, 'arch' | 'kubernetes' | 'components'>, base = DEFAULT_RELEASE_BASE): ArtifactSpec[] {
  if (!image.kubernetes.enabled) return [];
  const arch: Arch = image.arch;
  const out: ArtifactSpec[] = [];
  const { k3s, kine, kubeVip } = image.components;
  if (k3s) {
    const sums = `sha256sum-${arch}.txt`;
    const bin = arch === 'amd64' ? 'k3s' : `k3s-${arch}`;
    out.push({ component: 'k3s', version: k3s.version, name: bin, url: releaseUrl(base, 'k3s-io/k3s', k3s.version, bin), checksumUrl: releaseUrl(base, 'k3s-io/k3s', k3s.version, sums), checksumName: sums, installPath: '/usr/local/bin/k3s', mode: 0o755 });
    if (k3s.airgapImages) {
      const images = `k3s-airgap-images-${arch}.tar.zst`;
      // /var/lib/rancher persists on the data partition, so the image ships them read-only in
      // the slot and geminik8s-k3s-images.service bind-mounts each into K3s's images directory.
      out.push({ component: 'k3s', version: k3s.version, name: images, url: releaseUrl(base, 'k3s-io/k3s', k3s.version, images), checksumUrl: releaseUrl(base, 'k3s-io/k3s', k3s.version, sums), checksumName: sums, installPath: `${NODE_PATHS.k3sImagesShipped}/${images}`, mode: 0o644 });
    }
  }
  if (kine) {
    const bin = `kine-${arch}`;
    const sums = `sha256sum-${arch}.txt`;
    out.push({ component: 'kine', version: kine.version, name: bin, url: releaseUrl(base, 'k3s-io/kine', kine.version, bin), checksumUrl: releaseUrl(base, 'k3s-io/kine', kine.version, sums), checksumName: sums, installPath: '/usr/local/bin/kine', mode: 0o755 });
  }
  if (kubeVip) {
    const archive = `kube-vip_${kubeVip.version.replace(/^v/, '')}_linux_${arch}.tar.gz`;
    out.push({ component: 'kubeVip', version: kubeVip.version, name: archive, url: releaseUrl(base, 'kube-vip/kube-vip', kubeVip.version, archive), checksumUrl: releaseUrl(base, 'kube-vip/kube-vip', kubeVip.version, 'checksums.txt'), checksumName: 'checksums.txt', installPath: '/usr/local/bin/kube-vip', mode: 0o755, extract: 'kube-vip' });
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
