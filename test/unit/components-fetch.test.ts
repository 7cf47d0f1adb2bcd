import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { artifactsFor, parseChecksums } from '../../builder/src/components/catalog.ts';
import { fetchArtifacts } from '../../builder/src/components/fetch.ts';
import { readLock, writeLock } from '../../builder/src/components/lock.ts';
import { ExitCode, GeminiError } from '../../common/errors.ts';
import { cli } from '../helpers/cli.ts';
import { ROOT, loadImageDef, tempDir } from '../helpers/fixtures.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A loopback stand-in for GitHub releases (with its redirect to a download host). */
interface FakeRelease {
  base: string;
  server: Server;
  files: Map<string, Buffer>;
  /** Paths whose body is cut short (Content-Length larger than what is sent). */
  truncate: Set<string>;
  hits: string[];
}

async function fakeReleases(image: Parameters<typeof artifactsFor>[0]): Promise<FakeRelease> {
  const files = new Map<string, Buffer>();
  const fake: FakeRelease = { base: '', server: undefined as unknown as Server, files, truncate: new Set(), hits: [] };
  fake.server = createServer((req, res) => {
    const url = req.url ?? '/';
    fake.hits.push(url);
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
  // Generate every asset and the checksum files that list them.
  const sums = new Map<string, string[]>();
  for (const spec of artifactsFor(image, fake.base)) {
    const body = randomBytes(64 * 1024 + Math.floor(Math.random() * 1024));
    const path = decodeURIComponent(new URL(spec.url).pathname);
    files.set(path, body);
    const sumPath = decodeURIComponent(new URL(spec.checksumUrl).pathname);
    sums.set(sumPath, [...(sums.get(sumPath) ?? []), `${sha(body)}  ${spec.name}`]);
  }
  for (const [path, lines] of sums) files.set(path, Buffer.from(`${lines.join('\n')}\n`));
  return fake;
}

const image = () => loadImageDef('edge-amd64.yaml');

test('catalog: upstream asset names per architecture; + in K3s tags is percent-encoded', async (t) => {
  const amd = artifactsFor(await image());
  t.deepEqual(amd.map((a) => a.name), ['k3s', 'k3s-airgap-images-amd64.tar.zst', 'kine-amd64', 'kube-vip_0.9.2_linux_amd64.tar.gz']);
  t.is(amd[0]!.url, 'https://github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1/k3s');
  t.is(amd[0]!.checksumName, 'sha256sum-amd64.txt');
  const arm = artifactsFor(await loadImageDef('edge-arm64.yaml'));
  t.deepEqual(arm.map((a) => a.name), ['k3s-arm64', 'k3s-airgap-images-arm64.tar.zst', 'kine-arm64', 'kube-vip_0.9.2_linux_arm64.tar.gz']);
  t.deepEqual(artifactsFor(await loadImageDef('test-amd64.yaml')), []);
  t.deepEqual([...parseChecksums(`${'a'.repeat(64)}  k3s\n${'B'.repeat(64)} *dist/kine-amd64\nnoise\n`)], [['k3s', 'a'.repeat(64)], ['kine-amd64', 'b'.repeat(64)]]);
});

test('happy path: downloads follow redirects, verify, land in the cache; a second run is a cache hit', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  const cacheDir = tempDir();
  try {
    const progress: string[] = [];
    const first = await fetchArtifacts(artifactsFor(img, fake.base), { cacheDir, lock: {}, onProgress: (n) => progress.push(n) });
    t.deepEqual(first.map((r) => r.source), ['download', 'download', 'download', 'download']);
    for (const r of first) t.is(sha(readFileSync(r.path)), r.sha256);
    t.true(progress.length >= 4);
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), [], 'no temporary files left');
    const hits = fake.hits.length;
    const second = await fetchArtifacts(artifactsFor(img, fake.base), { cacheDir, lock: {} });
    t.deepEqual(second.map((r) => r.source), ['cache', 'cache', 'cache', 'cache']);
    t.true(fake.hits.length > hits, 'without a lock the checksum files are still consulted');
  } finally {
    fake.server.close();
  }
});

test('a wrong checksum fails (exit 6) and never enters the cache', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  const cacheDir = tempDir();
  try {
    const kine = artifactsFor(img, fake.base).find((s) => s.component === 'kine')!;
    fake.files.set(decodeURIComponent(new URL(kine.url).pathname), randomBytes(1000));
    const err = await t.throwsAsync(fetchArtifacts([kine], { cacheDir, lock: {} }), { instanceOf: GeminiError });
    t.is(err!.exitCode, ExitCode.artifact);
    t.regex(err!.message, /checksum mismatch for kine-amd64 .*was not cached/);
    t.false(existsSync(join(cacheDir, 'sha256')) && readdirSync(join(cacheDir, 'sha256')).length > 0);
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  } finally {
    fake.server.close();
  }
});

test('a truncated body fails and leaves nothing behind', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  const cacheDir = tempDir();
  try {
    const k3s = artifactsFor(img, fake.base)[0]!;
    fake.truncate.add(decodeURIComponent(new URL(k3s.url).pathname));
    const err = await t.throwsAsync(fetchArtifacts([k3s], { cacheDir, lock: {} }));
    t.regex(err!.message, /truncated|broke off after \d+ bytes/);
    t.false(existsSync(join(cacheDir, 'sha256')));
    t.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  } finally {
    fake.server.close();
  }
});

test('a 404 names the URL and the status', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  try {
    const spec = { ...artifactsFor(img, fake.base)[2]!, url: `${fake.base}/k3s-io/kine/releases/download/v0.13.17/nope` };
    const err = await t.throwsAsync(fetchArtifacts([spec], { cacheDir: tempDir(), lock: {} }));
    t.regex(err!.message, /cannot download .*\/nope: HTTP 404/);
  } finally {
    fake.server.close();
  }
});

test('offline: a pinned cache hit opens no connection; a miss names every missing artifact', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  const cacheDir = tempDir();
  try {
    const specs = artifactsFor(img, fake.base);
    const online = await fetchArtifacts(specs, { cacheDir, lock: {} });
    const lock = { k3s: { 'v1.33.4+k3s1': Object.fromEntries(online.filter((r) => r.spec.component === 'k3s').map((r) => [r.spec.name, r.sha256])) } };
    const hits = fake.hits.length;
    const k3sOnly = specs.filter((s) => s.component === 'k3s');
    const offline = await fetchArtifacts(k3sOnly, { cacheDir, lock, offline: true });
    t.deepEqual(offline.map((r) => r.source), ['cache', 'cache']);
    t.is(fake.hits.length, hits, 'no connection was opened');
    const err = await t.throwsAsync(fetchArtifacts(specs, { cacheDir: tempDir(), lock, offline: true }));
    t.is((err as GeminiError).exitCode, ExitCode.artifact);
    for (const name of ['k3s', 'k3s-airgap-images-amd64.tar.zst', 'kine-amd64', 'kube-vip_0.9.2_linux_amd64.tar.gz']) t.true(err!.message.includes(`${name} (`), name);
    t.regex(err!.message, /4 artifacts are missing \(--offline opens no connection\)/);
    t.is(fake.hits.length, hits);
  } finally {
    fake.server.close();
  }
});

test('a lock that disagrees with the release is refused, naming both sums', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  try {
    const kine = artifactsFor(img, fake.base).find((s) => s.component === 'kine')!;
    const lock = { kine: { 'v0.13.17': { 'kine-amd64': 'f'.repeat(64) } } };
    const err = await t.throwsAsync(fetchArtifacts([kine], { cacheDir: tempDir(), lock }));
    t.regex(err!.message, /lock mismatch for kine-amd64 .*pins f{64} but the release publishes [0-9a-f]{64}/);
  } finally {
    fake.server.close();
  }
});

test('air-gapped --artifacts directory: verified against the checksum file beside it', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  fake.server.close();
  const dir = tempDir();
  for (const spec of artifactsFor(img, fake.base)) {
    mkdirSync(join(dir, spec.component), { recursive: true });
    writeFileSync(join(dir, spec.component, spec.name), fake.files.get(decodeURIComponent(new URL(spec.url).pathname))!);
    writeFileSync(join(dir, spec.component, spec.checksumName), fake.files.get(decodeURIComponent(new URL(spec.checksumUrl).pathname))!);
  }
  const r = await fetchArtifacts(artifactsFor(img, fake.base), { cacheDir: tempDir(), lock: {}, artifactsDir: dir });
  t.deepEqual(r.map((x) => x.source), ['artifacts', 'artifacts', 'artifacts', 'artifacts']);
  writeFileSync(join(dir, 'kine', 'kine-amd64'), 'tampered');
  await t.throwsAsync(fetchArtifacts(artifactsFor(img, fake.base), { cacheDir: tempDir(), lock: {}, artifactsDir: dir }), { message: /checksum mismatch for .*kine-amd64/ });
});

test('geminik8s lock pins the release checksums; geminik8s fetch --offline then works from the cache', async (t) => {
  const img = await image();
  const fake = await fakeReleases(img);
  const work = tempDir();
  const imageFile = join(work, 'edge.yaml');
  writeFileSync(imageFile, readFileSync(join(ROOT, 'images/edge-amd64.yaml')));
  process.env.GEMINIK8S_RELEASE_BASE_URL = fake.base;
  try {
    const lock = await cli('lock', '--image', imageFile);
    t.is(lock.code, 0, lock.stderr);
    const pins = readLock(join(work, 'components.lock.json'));
    t.is(Object.keys(pins.k3s!['v1.33.4+k3s1']!).length, 2);
    const cacheDir = join(work, 'cache');
    const online = await cli('fetch', '--image', imageFile, '--cache-dir', cacheDir, '--json');
    t.is(online.code, 0, online.stderr);
    const offline = await cli('fetch', '--image', imageFile, '--cache-dir', cacheDir, '--offline');
    t.is(offline.code, 0, offline.stderr);
    t.regex(offline.stdout, /kine-amd64 .*\(cache\)/);
    const miss = await cli('fetch', '--image', imageFile, '--cache-dir', join(work, 'empty'), '--offline');
    t.is(miss.code, 6);
  } finally {
    delete process.env.GEMINIK8S_RELEASE_BASE_URL;
    fake.server.close();
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
