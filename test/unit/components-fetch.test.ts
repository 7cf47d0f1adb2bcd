import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { artifactsFor, parseChecksums, type ArtifactSpec, type ImageArtifact, type ReleaseArtifact } from '#builder/components/catalog.ts';
import { fetchArtifacts } from '#builder/components/fetch.ts';
import { readLock, writeLock } from '#builder/components/lock.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { cli } from '#lab/cli.ts';
import { addImage, fakeUpstream, platformDigest, tagIndex, tarOf } from '../helpers/fake-upstream.ts';
import { ROOT, loadImageDef, tempDir } from '../helpers/fixtures.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const image = () => loadImageDef('edge-amd64.yaml');
const specsOf = (img: Parameters<typeof artifactsFor>[0], base: string): ArtifactSpec[] => artifactsFor(img, { releases: base, registry: base });
const releases = (specs: ArtifactSpec[]): ReleaseArtifact[] => specs.filter((s): s is ReleaseArtifact => s.kind === 'release');
const kubeVipOf = (specs: ArtifactSpec[]): ImageArtifact => specs.find((s): s is ImageArtifact => s.kind === 'image')!;

test('catalog: upstream asset names per architecture; + in K3s tags is percent-encoded', async (t) => {
  const amd = artifactsFor(await image());
  t.deepEqual(amd.map((a) => a.name), ['k3s', 'k3s-airgap-images-amd64.tar.zst', 'kine-amd64', 'ghcr.io/kube-vip/kube-vip@linux/amd64']);
  t.is(releases(amd)[0]!.url, 'https://github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1/k3s');
  t.is(releases(amd)[0]!.checksumName, 'sha256sum-amd64.txt');
  t.like(kubeVipOf(amd), { registry: 'https://ghcr.io', repository: 'kube-vip/kube-vip', tag: 'v0.9.2', platform: { os: 'linux', architecture: 'amd64' }, member: 'kube-vip', installPath: '/usr/local/bin/kube-vip' });
  const arm = artifactsFor(await loadImageDef('edge-arm64.yaml'));
  t.deepEqual(arm.map((a) => a.name), ['k3s-arm64', 'k3s-airgap-images-arm64.tar.zst', 'kine-arm64', 'ghcr.io/kube-vip/kube-vip@linux/arm64']);
  t.deepEqual(artifactsFor(await loadImageDef('test-amd64.yaml')), []);
  t.deepEqual([...parseChecksums(`${'a'.repeat(64)}  k3s\n${'B'.repeat(64)} *dist/kine-amd64\nnoise\n`)], [['k3s', 'a'.repeat(64)], ['kine-amd64', 'b'.repeat(64)]]);
});

test('happy path: downloads follow redirects, verify, land in the cache; a second run is a cache hit', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const cacheDir = tempDir();
  try {
    const progress: string[] = [];
    const first = await fetchArtifacts(specsOf(img, fake.base), { cacheDir, lock: {}, onProgress: (n) => progress.push(n) });
    t.deepEqual(first.map((r) => r.source), ['download', 'download', 'download', 'download']);
    for (const r of first.filter((x) => x.spec.kind === 'release')) t.is(sha(readFileSync(r.path)), r.sha256);
    const vip = first.find((x) => x.spec.kind === 'image')!;
    t.deepEqual(readFileSync(vip.path), fake.kubeVip.get('amd64'), 'the amd64 image\'s /kube-vip, through the token challenge and the blob redirect');
    t.is(vip.sha256, platformDigest(fake, 'v0.9.2', 'amd64'));
    t.is(fake.tokens, 1);
    t.true(progress.length >= 4);
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), [], 'no temporary files left');
    const hits = fake.hits.length;
    const second = await fetchArtifacts(specsOf(img, fake.base), { cacheDir, lock: {} });
    t.deepEqual(second.map((r) => r.source), ['cache', 'cache', 'cache', 'cache']);
    t.true(fake.hits.length > hits, 'without a lock the checksum files are still consulted');
  } finally {
    fake.close();
  }
});

test('a wrong checksum fails (exit 6) and never enters the cache', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const cacheDir = tempDir();
  try {
    const kine = releases(specsOf(img, fake.base)).find((s) => s.component === 'kine')!;
    fake.files.set(decodeURIComponent(new URL(kine.url).pathname), randomBytes(1000));
    const err = await t.throwsAsync(fetchArtifacts([kine], { cacheDir, lock: {} }), { instanceOf: GeminiError });
    t.is(err!.exitCode, ExitCode.artifact);
    t.regex(err!.message, /checksum mismatch for kine-amd64 .*was not cached/);
    t.false(existsSync(join(cacheDir, 'sha256')) && readdirSync(join(cacheDir, 'sha256')).length > 0);
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  } finally {
    fake.close();
  }
});

test('a truncated body fails and leaves nothing behind', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const cacheDir = tempDir();
  try {
    const k3s = releases(specsOf(img, fake.base))[0]!;
    fake.truncate.add(decodeURIComponent(new URL(k3s.url).pathname));
    const err = await t.throwsAsync(fetchArtifacts([k3s], { cacheDir, lock: {} }));
    t.regex(err!.message, /truncated|broke off after \d+ bytes/);
    t.false(existsSync(join(cacheDir, 'sha256')));
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  } finally {
    fake.close();
  }
});

test('a 404 names the URL and the status', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  try {
    const spec = { ...releases(specsOf(img, fake.base))[2]!, url: `${fake.base}/k3s-io/kine/releases/download/v0.13.17/nope` };
    const err = await t.throwsAsync(fetchArtifacts([spec], { cacheDir: tempDir(), lock: {} }));
    t.regex(err!.message, /cannot download .*\/nope: HTTP 404/);
  } finally {
    fake.close();
  }
});

test('offline: a pinned cache hit opens no connection; a miss names every missing artifact', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const cacheDir = tempDir();
  try {
    const specs = specsOf(img, fake.base);
    const online = await fetchArtifacts(specs, { cacheDir, lock: {} });
    const lock = { k3s: { 'v1.33.4+k3s1': Object.fromEntries(online.filter((r) => r.spec.component === 'k3s').map((r) => [r.spec.name, r.sha256])) } };
    const hits = fake.hits.length;
    const k3sOnly = specs.filter((s) => s.component === 'k3s');
    const offline = await fetchArtifacts(k3sOnly, { cacheDir, lock, offline: true });
    t.deepEqual(offline.map((r) => r.source), ['cache', 'cache']);
    t.is(fake.hits.length, hits, 'no connection was opened');
    const err = await t.throwsAsync(fetchArtifacts(specs, { cacheDir: tempDir(), lock, offline: true }));
    t.is((err as GeminiError).exitCode, ExitCode.artifact);
    for (const name of ['k3s', 'k3s-airgap-images-amd64.tar.zst', 'kine-amd64', 'ghcr.io/kube-vip/kube-vip@linux/amd64']) t.true(err!.message.includes(`${name} (`), name);
    t.regex(err!.message, /4 artifacts are missing \(--offline opens no connection\)/);
    t.is(fake.hits.length, hits);
  } finally {
    fake.close();
  }
});

test('a lock that disagrees with the release is refused, naming both sums', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  try {
    const kine = specsOf(img, fake.base).find((s) => s.component === 'kine')!;
    const lock = { kine: { 'v0.13.17': { 'kine-amd64': 'f'.repeat(64) } } };
    const err = await t.throwsAsync(fetchArtifacts([kine], { cacheDir: tempDir(), lock }));
    t.regex(err!.message, /lock mismatch for kine-amd64 .*pins f{64} but the release publishes [0-9a-f]{64}/);
  } finally {
    fake.close();
  }
});

test('air-gapped --artifacts directory: release files verified against the checksum file beside them, the kube-vip image from an OCI layout against the lock', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  fake.close();
  const dir = tempDir();
  const specs = specsOf(img, fake.base);
  for (const spec of releases(specs)) {
    mkdirSync(join(dir, spec.component), { recursive: true });
    writeFileSync(join(dir, spec.component, spec.name), fake.files.get(decodeURIComponent(new URL(spec.url).pathname))!);
    writeFileSync(join(dir, spec.component, spec.checksumName), fake.files.get(decodeURIComponent(new URL(spec.checksumUrl).pathname))!);
  }
  // What `skopeo copy docker://ghcr.io/kube-vip/kube-vip:v0.9.2 oci:DIR/kubeVip/oci:v0.9.2` leaves.
  const layout = join(dir, 'kubeVip', 'oci');
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  for (const [digest, { body }] of fake.registry.manifests) if (/^[0-9a-f]{64}$/.test(digest)) writeFileSync(join(layout, 'blobs', 'sha256', digest), body);
  for (const [digest, body] of fake.registry.blobs) writeFileSync(join(layout, 'blobs', 'sha256', digest), body);
  const indexBody = fake.registry.manifests.get('v0.9.2')!.body;
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: `sha256:${sha(indexBody)}`, size: indexBody.length, annotations: { 'org.opencontainers.image.ref.name': 'v0.9.2' } }] }));
  const lock = { kubeVip: { 'v0.9.2': { 'ghcr.io/kube-vip/kube-vip@linux/amd64': platformDigest(fake, 'v0.9.2', 'amd64') } } };
  const r = await fetchArtifacts(specs, { cacheDir: tempDir(), lock, artifactsDir: dir });
  t.deepEqual(r.map((x) => x.source), ['artifacts', 'artifacts', 'artifacts', 'artifacts']);
  t.deepEqual(readFileSync(r[3]!.path), fake.kubeVip.get('amd64'));
  const unpinned = await t.throwsAsync(fetchArtifacts(specs, { cacheDir: tempDir(), lock: {}, artifactsDir: dir }));
  t.regex(unpinned!.message, /kube-vip@linux\/amd64: cannot verify the image in .*kubeVip\/oci offline: the lock file does not pin it/);
  // geminik8s lock --artifacts pins the same digest from the layout's index.
  const work = tempDir();
  const imageFile = join(work, 'edge.yaml');
  writeFileSync(imageFile, readFileSync(join(ROOT, 'images/edge-amd64.yaml')));
  const pinnedRun = await cli('lock', '--image', imageFile, '--artifacts', dir, '--cache-dir', join(work, 'cache'));
  t.is(pinnedRun.code, 0, pinnedRun.stderr);
  t.deepEqual(readLock(join(work, 'components.lock.json')).kubeVip, lock.kubeVip);
  // A layout blob whose content does not hash to its name is refused.
  const layer = [...fake.registry.blobs.entries()].find(([, b]) => b.length > 90 * 1024)![0];
  writeFileSync(join(layout, 'blobs', 'sha256', layer), randomBytes(2000));
  await t.throwsAsync(fetchArtifacts(specs.slice(3), { cacheDir: tempDir(), lock, artifactsDir: dir }), { message: /digest mismatch for .*blobs\/sha256\// });
  writeFileSync(join(dir, 'kine', 'kine-amd64'), 'tampered');
  await t.throwsAsync(fetchArtifacts(releases(specs), { cacheDir: tempDir(), lock: {}, artifactsDir: dir }), { message: /checksum mismatch for .*kine-amd64/ });
});

test('geminik8s lock pins the release checksums; geminik8s fetch --offline then works from the cache', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const work = tempDir();
  const imageFile = join(work, 'edge.yaml');
  writeFileSync(imageFile, readFileSync(join(ROOT, 'images/edge-amd64.yaml')));
  process.env.GEMINIK8S_RELEASE_BASE_URL = fake.base;
  process.env.GEMINIK8S_REGISTRY_URL = fake.base;
  try {
    const lock = await cli('lock', '--image', imageFile, '--cache-dir', join(work, 'lock-cache'));
    t.is(lock.code, 0, lock.stderr);
    const pins = readLock(join(work, 'components.lock.json'));
    t.is(Object.keys(pins.k3s!['v1.33.4+k3s1']!).length, 2);
    t.deepEqual(pins.kubeVip, { 'v0.9.2': { 'ghcr.io/kube-vip/kube-vip@linux/amd64': platformDigest(fake, 'v0.9.2', 'amd64') } }, 'the platform manifest, not the index');
    const cacheDir = join(work, 'cache');
    const online = await cli('fetch', '--image', imageFile, '--cache-dir', cacheDir, '--json');
    t.is(online.code, 0, online.stderr);
    const offline = await cli('fetch', '--image', imageFile, '--cache-dir', cacheDir, '--offline');
    t.is(offline.code, 0, offline.stderr);
    t.regex(offline.stdout, /kine-amd64 .*\(cache\)/);
    t.regex(offline.stdout, /kube-vip@linux\/amd64 .*\(cache\)/);
    const miss = await cli('fetch', '--image', imageFile, '--cache-dir', join(work, 'empty'), '--offline');
    t.is(miss.code, 6);
  } finally {
    delete process.env.GEMINIK8S_RELEASE_BASE_URL;
    delete process.env.GEMINIK8S_REGISTRY_URL;
    fake.close();
  }
});

test('the lock file may carry a $comment: readLock ignores it, writeLock keeps it, a comment of another type is refused; the committed lock parses', async (t) => {
  const committed = readLock(join(ROOT, 'images/components.lock.json'));
  t.regex(committed.k3s!['v1.33.4+k3s1']!.k3s!, /^[0-9a-f]{64}$/);
  t.false('$comment' in committed);
  const dir = tempDir();
  const file = join(dir, 'components.lock.json');
  writeFileSync(file, JSON.stringify({ $comment: ['where the pins come from'], kine: { 'v0.13.17': { 'kine-amd64': 'a'.repeat(64) } } }));
  const lock = readLock(file);
  lock.k3s = { v1: { k3s: 'b'.repeat(64) } };
  await writeLock(file, lock);
  const written = JSON.parse(readFileSync(file, 'utf8'));
  t.deepEqual(Object.keys(written), ['$comment', 'k3s', 'kine'], 'the comment first, then the pins sorted');
  t.deepEqual(written.$comment, ['where the pins come from']);
  writeFileSync(file, JSON.stringify({ $comment: 7 }));
  const err = t.throws(() => readLock(file));
  t.regex(err!.message, /components\.lock\.json: \$comment: expected a string or a list of strings/);
});

test('kube-vip for arm64 is the arm64 image\'s binary (never arm/v7, never the attestation entry)', async (t) => {
  const img = await loadImageDef('edge-arm64.yaml');
  const fake = await fakeUpstream(img);
  try {
    const [r] = await fetchArtifacts([kubeVipOf(specsOf(img, fake.base))], { cacheDir: tempDir(), lock: {} });
    t.deepEqual(readFileSync(r!.path), fake.kubeVip.get('arm64'));
    t.is(r!.sha256, platformDigest(fake, 'v0.9.2', 'arm64'));
  } finally {
    fake.close();
  }
});

test('an image blob that does not hash to its digest is refused and never cached; nothing is extracted', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  const cacheDir = tempDir();
  try {
    const spec = kubeVipOf(specsOf(img, fake.base));
    const manifest = JSON.parse(fake.registry.manifests.get(platformDigest(fake, 'v0.9.2', 'amd64'))!.body.toString()) as { layers: { digest: string }[] };
    const layer = manifest.layers[1]!.digest.replace('sha256:', '');
    const good = fake.registry.blobs.get(layer)!;
    fake.registry.blobs.set(layer, Buffer.concat([good.subarray(0, good.length - 1), Buffer.from([good[good.length - 1]! ^ 1])]));
    const err = await t.throwsAsync(fetchArtifacts([spec], { cacheDir, lock: {} }), { instanceOf: GeminiError });
    t.is(err!.exitCode, ExitCode.artifact);
    t.regex(err!.message, new RegExp(`blob sha256:${layer} of ghcr.io/kube-vip/kube-vip .*is not what the manifest names .*nothing was cached`));
    t.false(existsSync(join(cacheDir, 'sha256', layer)));
    t.false(existsSync(join(cacheDir, 'extracted')) && readdirSync(join(cacheDir, 'extracted')).some((d) => readdirSync(join(cacheDir, 'extracted', d)).length > 0));
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  } finally {
    fake.close();
  }
});

test('the lock pins the platform manifest: a tag pushed again builds the pinned image; an unknown pin is a 404', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  try {
    const spec = kubeVipOf(specsOf(img, fake.base));
    const lock = { kubeVip: { 'v0.9.2': { [spec.name]: platformDigest(fake, 'v0.9.2', 'amd64') } } };
    const other = randomBytes(5000);
    tagIndex(fake.registry, 'v0.9.2', [{ arch: 'amd64', digest: addImage(fake.registry, 'amd64', [await tarOf([{ name: 'kube-vip', body: other }])]) }]);
    const [pinnedRun] = await fetchArtifacts([spec], { cacheDir: tempDir(), lock });
    t.deepEqual(readFileSync(pinnedRun!.path), fake.kubeVip.get('amd64'), 'the pinned image, not what the tag names now');
    const [unpinned] = await fetchArtifacts([spec], { cacheDir: tempDir(), lock: {} });
    t.deepEqual(readFileSync(unpinned!.path), other);
    const err = await t.throwsAsync(fetchArtifacts([spec], { cacheDir: tempDir(), lock: { kubeVip: { 'v0.9.2': { [spec.name]: 'e'.repeat(64) } } } }));
    t.regex(err!.message, /cannot download .*\/v2\/kube-vip\/kube-vip\/manifests\/sha256:e{64}: HTTP 404/);
  } finally {
    fake.close();
  }
});

test('layers apply in order: a later layer replaces the file, a whiteout removes it; a link or a missing platform is refused', async (t) => {
  const img = await image();
  const fake = await fakeUpstream(img);
  try {
    const spec = kubeVipOf(specsOf(img, fake.base));
    const first = randomBytes(3000);
    const second = randomBytes(3000);
    const build = async (tag: string, layers: Parameters<typeof tarOf>[0][]): Promise<ImageArtifact> => {
      const bodies = await Promise.all(layers.map((l) => tarOf(l)));
      tagIndex(fake.registry, tag, [{ arch: 'amd64', digest: addImage(fake.registry, 'amd64', bodies) }]);
      return { ...spec, tag };
    };
    const fetchOne = async (s: ImageArtifact): Promise<Buffer> => readFileSync((await fetchArtifacts([s], { cacheDir: tempDir(), lock: {} }))[0]!.path);
    t.deepEqual(await fetchOne(await build('replaced', [[{ name: 'kube-vip', body: first }], [{ name: './kube-vip', body: second }]])), second);
    const removed = await t.throwsAsync(fetchOne(await build('whiteout', [[{ name: 'kube-vip', body: first }], [{ name: '.wh.kube-vip' }]])));
    t.regex(removed!.message, /ghcr\.io\/kube-vip\/kube-vip@sha256:[0-9a-f]{64} has no \/kube-vip/);
    t.deepEqual(await fetchOne(await build('whiteout-then-back', [[{ name: 'kube-vip', body: first }], [{ name: '.wh.kube-vip' }], [{ name: 'kube-vip', body: second }]])), second);
    const link = await t.throwsAsync(fetchOne(await build('link', [[{ name: 'kube-vip', type: 'symlink', linkname: '/bin/true' }]])));
    t.regex(link!.message, /\/kube-vip is a symlink, not a file/);
    tagIndex(fake.registry, 'armonly', [{ arch: 'arm', variant: 'v7', digest: addImage(fake.registry, 'arm', [await tarOf([{ name: 'kube-vip', body: first }])]) }]);
    const none = await t.throwsAsync(fetchOne({ ...spec, tag: 'armonly' }));
    t.regex(none!.message, /kube-vip:armonly .*has no linux\/amd64 image \(it offers unknown\/unknown, linux\/arm\/v7\)/);
  } finally {
    fake.close();
  }
});
