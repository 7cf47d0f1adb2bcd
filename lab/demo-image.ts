import { artifactSources, artifactsFor, type ArtifactSources, type ReleaseArtifact } from '#builder/components/catalog.ts';
import type { Image } from '#common/schema/image.ts';

/** The image the demo boots, and why that one. */
export type DemoImage =
  | { kind: 'given'; raw: string; why: string }
  | { kind: 'build'; file: 'edge-amd64.yaml' | 'test-amd64.yaml'; artifactsDir?: string; why: string };

/** What a probe of the upstream release server found. */
export interface UpstreamProbe {
  reachable: boolean;
  /** The URL asked and its answer, or why there was none. */
  detail: string;
}

/**
 * Which image `npm run demo` boots: `--image` as given; with `--artifacts DIR` the full edge
 * image (the Kubernetes layer included) built from that directory; else the full edge image
 * when the upstream release server answered, and the test image (no Kubernetes layer) when it
 * did not. Pure: the probe's outcome is an input.
 */
export function chooseDemoImage(opts: { image?: string; artifacts?: string; upstream?: UpstreamProbe }): DemoImage {
  if (opts.image) return { kind: 'given', raw: opts.image, why: `--image ${opts.image}` };
  if (opts.artifacts) return { kind: 'build', file: 'edge-amd64.yaml', artifactsDir: opts.artifacts, why: `the full edge image from the release files in ${opts.artifacts} (--artifacts), checked against images/components.lock.json` };
  if (opts.upstream?.reachable) return { kind: 'build', file: 'edge-amd64.yaml', why: `the full edge image: upstream answered (${opts.upstream.detail})` };
  return {
    kind: 'build', file: 'test-amd64.yaml',
    why: `the test image, Kubernetes layer off: K3s, Kine and kube-vip cannot be fetched (${opts.upstream?.detail ?? 'not probed'}); give --artifacts DIR with their release files for the full image (docs/components.md)`,
  };
}

/**
 * Ask the release server for the first release file the image needs (a HEAD request, no
 * download; a redirect counts as an answer, as GitHub sends one to its storage).
 */
export async function probeUpstream(image: Image, timeoutMs = 5000, sources: ArtifactSources = artifactSources()): Promise<UpstreamProbe> {
  const first = artifactsFor(image, sources).find((a): a is ReleaseArtifact => a.kind === 'release');
  if (!first) return { reachable: false, detail: 'the image needs no release file' };
  try {
    const r = await fetch(first.url, { method: 'HEAD', redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
    return { reachable: r.status < 400, detail: `HEAD ${first.url}: ${r.status}` };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    return { reachable: false, detail: `HEAD ${first.url}: ${e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (e.cause?.code ?? e.cause?.message ?? e.message)}` };
  }
}
