import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import { elfClosure, elfLinking } from '#builder/upgrade/elf.ts';
import { readOciArchive, readOciImage, writeOciArchive } from '#builder/upgrade/oci.ts';
import { parseChallenge, parseImageRef, pushOci } from '#builder/upgrade/registry.ts';
import { runPlan } from '#common/exec.ts';
import { generateKeyPair } from '#common/minisign.ts';
import { cli } from '#lab/cli.ts';
import { freePort, until } from '#lab/guest-cluster.ts';
import { tempDir } from '../helpers/fixtures.ts';
import { bundle } from '../helpers/upgrade-node.ts';

// The host's own root stands in for a node root: it has busybox (a host dependency) and the
// loader and libc it needs, and the host can run them, so the layer is tested by running it.
const HOST_TREE = '/';
const asRoot = process.getuid?.() === 0;

async function ociImage(): Promise<{ dir: string; file: string; bundleFile: string }> {
  const dir = tempDir('gk-oci-');
  const bundleFile = await bundle(dir, generateKeyPair());
  const file = join(dir, 'edge-1.1.0-amd64.oci.tar');
  const work = join(dir, 'work');
  mkdirSync(work);
  await writeOciArchive(file, { tree: HOST_TREE, bundle: bundleFile, image: 'edge', version: '1.1.0', arch: 'amd64', sourceDateEpoch: 1_700_000_000, workDir: work });
  return { dir, file, bundleFile };
}

/** The image's one layer, extracted into `into`. */
async function extractLayer(file: string, into: string): Promise<void> {
  const { archive, manifest } = await readOciImage(file);
  const layer = archive.members.get(`blobs/sha256/${manifest.layers[0]!.digest.slice(7)}`)!;
  const layerFile = join(into, '..', `layer-${Math.random().toString(36).slice(2)}.tar`);
  writeFileSync(layerFile, readFileSync(file).subarray(layer.offset, layer.offset + layer.size));
  mkdirSync(into, { recursive: true });
  await runPlan({ cmd: 'tar', args: ['-xpf', layerFile, '-C', into] });
  rmSync(layerFile);
}

test('ELF: the interpreter and DT_NEEDED of the host\'s busybox, and its closure resolved through merged-/usr links', async (t) => {
  const linking = elfLinking(readFileSync('/usr/bin/busybox'), 'busybox');
  t.is(linking.interpreter, '/lib64/ld-linux-x86-64.so.2');
  t.true(linking.needed.includes('libc.so.6'));
  const closure = await elfClosure(HOST_TREE, '/usr/bin/busybox', 'amd64');
  t.deepEqual(closure.map((c) => c.at).filter((a) => /ld-linux|libc\.so/.test(a)), ['/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2'], 'libc names the loader too');
  t.regex(closure.find((c) => c.at === '/lib64/ld-linux-x86-64.so.2')!.from, /^\/usr\/lib\/x86_64-linux-gnu\/ld-linux-x86-64\.so\.2$/, 'symlinks followed inside the tree');
  t.throws(() => elfLinking(Buffer.from('#!/bin/sh\n'.padEnd(80)), 'script'), { message: 'script: not an ELF file' });
  const fake = tempDir();
  mkdirSync(join(fake, 'usr/bin'), { recursive: true });
  cpSync('/usr/bin/busybox', join(fake, 'usr/bin/busybox'));
  await t.throwsAsync(elfClosure(fake, '/usr/bin/busybox', 'amd64'), { message: /\/lib64\/ld-linux-x86-64\.so\.2: \/lib64 does not exist/ });
});

test('build --output oci: an OCI layout skopeo reads; its layer runs and hands the bundle to the host agent through /proc, copying nothing', async (t) => {
  const { dir, file, bundleFile } = await ociImage();
  const inspect = await runPlan({ cmd: 'skopeo', args: ['inspect', '--config', `oci-archive:${file}`] });
  const config = JSON.parse(inspect.stdout) as { architecture: string; os: string; config: { Entrypoint: string[] } };
  t.like(config, { architecture: 'amd64', os: 'linux', config: { Entrypoint: ['/geminik8s/suc-job'] } });
  const raw = JSON.parse((await runPlan({ cmd: 'skopeo', args: ['inspect', '--raw', `oci-archive:${file}`] })).stdout) as { layers: { mediaType: string; size: number }[] };
  t.is(raw.layers[0]!.mediaType, 'application/vnd.oci.image.layer.v1.tar');
  // Same inputs, same bytes: the tag can be rebuilt.
  const again = join(dir, 'again.oci.tar');
  mkdirSync(join(dir, 'work2'));
  await writeOciArchive(again, { tree: HOST_TREE, bundle: bundleFile, image: 'edge', version: '1.1.0', arch: 'amd64', sourceDateEpoch: 1_700_000_000, workDir: join(dir, 'work2') });
  t.is(createHash('sha256').update(readFileSync(again)).digest('hex'), createHash('sha256').update(readFileSync(file)).digest('hex'));

  if (!asRoot) {
    t.log('not root: the layer is not run (chroot needs root; CI runs as root)');
    return;
  }
  const root = join(dir, 'job');
  await extractLayer(file, root);
  t.is(statSync(join(root, 'geminik8s/suc-job')).mode & 0o777, 0o755);
  const ok = await runPlan({ cmd: 'chroot', args: [root, '/bin/busybox', 'echo', 'the layer runs'] });
  t.is(ok.stdout.trim(), 'the layer runs');

  // No geminik8s host at /host: a clear refusal.
  const bare = await runPlan({ cmd: 'chroot', args: [root, '/geminik8s/suc-job'] }, { allowFailure: true });
  t.is(bare.exitCode, 3);
  t.regex(bare.stderr, /\/host\/usr\/bin\/geminik8s-agent is missing/);

  // A host root at /host whose "agent" records how it was called and what it could read.
  // Both see the host's PID namespace, through their own /proc, as under SUC (hostPID).
  const host = join(root, 'host');
  await extractLayer(file, host);
  rmSync(join(host, 'geminik8s'), { recursive: true });
  for (const d of [join(host, 'usr/bin'), join(host, 'var/lib/geminik8s'), join(root, 'proc'), join(host, 'proc')]) mkdirSync(d, { recursive: true });
  writeFileSync(join(host, 'usr/bin/geminik8s-agent'), '#!/bin/busybox sh\necho "$@" > /var/lib/geminik8s/called\n/bin/busybox env > /var/lib/geminik8s/env\n/bin/busybox sha256sum < "$3" > /var/lib/geminik8s/bundle.sha256\nexit 0\n');
  chmodSync(join(host, 'usr/bin/geminik8s-agent'), 0o755);
  for (const p of [join(root, 'proc'), join(host, 'proc')]) {
    await runPlan({ cmd: 'mount', args: ['-t', 'proc', 'proc', p] });
    t.teardown(() => runPlan({ cmd: 'umount', args: [p] }, { allowFailure: true }).then(() => undefined));
  }
  const env = { SYSTEM_UPGRADE_NODE_NAME: 'node1', SYSTEM_UPGRADE_PLAN_NAME: 'geminik8s-os-site-a', SYSTEM_UPGRADE_PLAN_LATEST_VERSION: '1.1.0', LD_LIBRARY_PATH: '/lib/x86_64-linux-gnu' };
  const run = await runPlan({ cmd: 'chroot', args: [root, '/geminik8s/suc-job'], env }, { allowFailure: true });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(readFileSync(join(host, 'var/lib/geminik8s/called'), 'utf8').trim(), /^upgrade suc-job \/proc\/\d+\/root\/geminik8s\/bundle\.tar$/);
  t.is(readFileSync(join(host, 'var/lib/geminik8s/bundle.sha256'), 'utf8').split(' ')[0], createHash('sha256').update(readFileSync(bundleFile)).digest('hex'), 'the host read the job\'s bundle through /proc, byte for byte');
  t.false(existsSync(join(host, 'var/lib/geminik8s/upgrade')), 'nothing copied onto the host');
  const seen = readFileSync(join(host, 'var/lib/geminik8s/env'), 'utf8');
  t.regex(seen, /^SYSTEM_UPGRADE_NODE_NAME=node1$/m);
  t.regex(seen, /^SYSTEM_UPGRADE_PLAN_LATEST_VERSION=1\.1\.0$/m);
  t.notRegex(seen, /LD_LIBRARY_PATH/, 'the container\'s library path does not leak into the host\'s agent');
  // The agent's exit code is the job's.
  writeFileSync(join(host, 'usr/bin/geminik8s-agent'), '#!/bin/busybox sh\necho refused >&2\nexit 5\n');
  t.is((await runPlan({ cmd: 'chroot', args: [root, '/geminik8s/suc-job'], env }, { allowFailure: true })).exitCode, 5);
  // Outside the host's PID namespace the host could not reach the bundle: refused.
  const ns = await runPlan({ cmd: 'unshare', args: ['--pid', '--fork', 'chroot', root, '/geminik8s/suc-job'], env }, { allowFailure: true });
  t.is(ns.exitCode, 3);
  t.regex(ns.stderr, /not in the host's PID namespace/);
});

/** Debian's docker-registry (distribution 2.8) on a loopback port, storing under a temp dir. */
async function startRegistry(t: import('ava').ExecutionContext): Promise<{ port: number; proc: ChildProcess }> {
  const dir = tempDir('gk-registry-');
  const port = await freePort();
  writeFileSync(join(dir, 'config.yml'), `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  const proc = spawn('docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  t.teardown(() => proc.kill());
  await until(`docker-registry on 127.0.0.1:${port} (${stderr.slice(-300)})`, 30_000, () => fetch(`http://127.0.0.1:${port}/v2/`).then((r) => (r.status === 200 ? true : undefined), () => undefined));
  return { port, proc };
}

test('push: the image reaches a real registry (Debian\'s docker-registry) under its version tag; skopeo reads it back; a second push uploads nothing', async (t) => {
  const { file } = await ociImage();
  const { port } = await startRegistry(t);
  const r = await cli('push', file, `127.0.0.1:${port}/geminik8s/edge`, '--plain-http', '--json');
  t.is(r.code, 0, r.stderr);
  const result = JSON.parse(r.stdout) as { ref: string; digest: string; blobs: { uploaded: boolean }[] };
  t.is(result.ref, `127.0.0.1:${port}/geminik8s/edge:1.1.0`);
  t.deepEqual(result.blobs.map((b) => b.uploaded), [true, true]);
  const local = await readOciArchive(file);
  t.is(result.digest, local.index.manifests[0]!.digest);
  const remote = JSON.parse((await runPlan({ cmd: 'skopeo', args: ['inspect', '--tls-verify=false', `docker://127.0.0.1:${port}/geminik8s/edge:1.1.0`] })).stdout) as { Digest: string; Architecture: string };
  t.is(remote.Digest, result.digest);
  t.is(remote.Architecture, 'amd64');
  const second = await pushOci(file, `127.0.0.1:${port}/geminik8s/edge:stable`, { plainHttp: true });
  t.deepEqual(second.blobs.map((b) => b.uploaded), [false, false]);
  t.is(second.ref, `127.0.0.1:${port}/geminik8s/edge:stable`);
});

/** A token-authenticated front for the registry: 401 with a Bearer challenge until a token from its realm is shown. */
async function tokenFront(t: import('ava').ExecutionContext, registryPort: number): Promise<{ port: number; issued: string[] }> {
  const issued: string[] = [];
  const server: Server = createServer((req: IncomingMessage, res) => {
    const port = (server.address() as AddressInfo).port;
    if (req.url!.startsWith('/token')) {
      const basic = Buffer.from(String(req.headers.authorization ?? '').replace(/^Basic /, ''), 'base64').toString();
      const scope = new URL(req.url!, 'http://x').searchParams.get('scope');
      if (basic !== 'ci:s3cret' || scope !== 'repository:geminik8s/edge:pull,push') return void res.writeHead(401).end('bad credentials or scope');
      const token = `tok-${issued.length}`;
      issued.push(token);
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
    }
    if (!issued.includes(String(req.headers.authorization ?? '').replace(/^Bearer /, ''))) {
      req.resume();
      return void res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="test-registry",scope="repository:geminik8s/edge:pull,push"` }).end();
    }
    const { authorization: _drop, ...headers } = req.headers;
    const up = request({ host: '127.0.0.1', port: registryPort, method: req.method, path: req.url, headers }, (ur) => {
      res.writeHead(ur.statusCode!, ur.headers);
      ur.pipe(res);
    });
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  return { port: (server.address() as AddressInfo).port, issued };
}

test('push with token authentication: the challenge is followed with the user\'s credentials; bad references and missing credentials are clear errors', async (t) => {
  const { dir, file } = await ociImage();
  const { port: registryPort } = await startRegistry(t);
  const front = await tokenFront(t, registryPort);
  writeFileSync(join(dir, 'password'), 's3cret\n', { mode: 0o600 });
  const r = await cli('push', file, `127.0.0.1:${front.port}/geminik8s/edge`, '--plain-http', '--username', 'ci', '--password-file', join(dir, 'password'));
  t.is(r.code, 0, r.stderr);
  t.true(front.issued.length >= 1);
  t.false(r.stderr.includes('s3cret'), 'the password is never printed');
  const anonymous = await cli('push', file, `127.0.0.1:${front.port}/geminik8s/edge`, '--plain-http');
  t.is(anonymous.code, 5);
  t.regex(anonymous.stderr, /token service .* answered 401 \(no --username given\)/);
  const bad = await cli('push', file, 'edge:1.1.0');
  t.is(bad.code, 2);
  t.regex(bad.stderr, /expected REGISTRY\/REPOSITORY\[:TAG\] with the registry named/);
  t.deepEqual(parseImageRef('registry.example:5000/a/b:1.0'), { registry: 'registry.example:5000', repository: 'a/b', tag: '1.0' });
  t.deepEqual(parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'), {
    scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull' },
  });
});
