import test from 'ava';
import { createReadStream, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { runPlan, spawnPlan, type RunningProcess } from '#common/exec.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { assertNodeRoot } from '../../helpers/node-root.ts';

// The docker and tar:PATH root sources, on the offline test image (Kubernetes layer off).
// - Uses the Docker engine at $DOCKER_HOST (or the default socket); when none answers, starts
//   Debian's dockerd itself with its own data root and socket under a temporary directory, and
//   stops it afterwards.
// - No registry is reachable: the base image is a minimal Debian trixie made here with
//   mmdebstrap --variant=apt and imported as geminik8s-test/trixie-base.
// - tar:PATH is given an mmdebstrap-built root: $GEMINIK8S_E2E_ROOTFS_TAR when set (e.g. the
//   test image's root from `build --stage rootfs`), else built here with --rootfs mmdebstrap.
// The apt cache under ~/.cache/geminik8s serves the mmdebstrap runs; the Docker build downloads
// its packages from deb.debian.org (~300 MB).
const NAME = 'test-0.1.0-amd64';
const BASE_TAG = 'geminik8s-test/trixie-base';
const IMAGE = join(ROOT, 'images/test-amd64.yaml');
const APT_CACHE = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'geminik8s', 'apt', 'trixie-amd64');

let work: string;
let dockerd: RunningProcess | undefined;
const dockerdLog: string[] = [];
let docker: Docker;
let imagesBefore: string[] = [];
const seconds: Record<string, number> = {};
const out = { docker: '', mmdebstrap: '', tar: '' };
const roots = { docker: '', tar: '' };

async function answers(d: Docker): Promise<boolean> {
  try {
    await d.ping();
    return true;
  } catch {
    return false;
  }
}

async function timed<T>(label: string, fn: () => Promise<T>): Promise<T> {
  const started = Date.now();
  try {
    return await fn();
  } finally {
    seconds[label] = (Date.now() - started) / 1000;
  }
}

/** Start Debian's dockerd with everything under `dir`; resolves when its socket answers. */
async function startDockerd(dir: string): Promise<void> {
  const sock = join(dir, 'docker.sock');
  dockerd = spawnPlan(
    { cmd: 'dockerd', args: ['--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'), '--host', `unix://${sock}`] },
    { stderr: (l) => dockerdLog.push(l), stdout: (l) => dockerdLog.push(l) },
  );
  process.env.DOCKER_HOST = `unix://${sock}`;
  docker = new Docker();
  for (let i = 0; i < 120; i++) {
    if (existsSync(sock) && (await answers(docker))) return;
    const status = await Promise.race([dockerd.exited, new Promise((r) => setTimeout(() => r(undefined), 500))]);
    if (status !== undefined) throw new Error(`dockerd exited (${status}):\n${dockerdLog.slice(-20).join('\n')}`);
  }
  throw new Error(`dockerd did not answer on ${sock} within 60 s:\n${dockerdLog.slice(-20).join('\n')}`);
}

/** A minimal Debian trixie root (mmdebstrap --variant=apt), imported as the Containerfile's base. */
async function importBase(dir: string): Promise<void> {
  mkdirSync(APT_CACHE, { recursive: true });
  const tar = join(dir, 'base.tar');
  await runPlan({
    cmd: 'mmdebstrap',
    args: ['--variant=apt', '--format=tar', '--skip=download/empty', '--skip=essential/unlink',
      '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/', `--setup-hook=sync-in ${APT_CACHE} /var/cache/apt/archives/`,
      `--customize-hook=sync-out /var/cache/apt/archives ${APT_CACHE}`, '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
      'trixie', tar, 'http://deb.debian.org/debian'],
  }, { timeoutMs: 20 * 60_000 });
  const [repo, tag] = BASE_TAG.split(':');
  const progress = await docker.importImage(createReadStream(tar), { repo, tag: tag ?? 'latest' });
  await new Promise<void>((resolve, reject) => docker.modem.followProgress(progress, (err: Error | null) => (err ? reject(err) : resolve())));
  await rm(tar);
}

async function extract(tar: string, dir: string): Promise<string> {
  mkdirSync(dir);
  await runPlan({ cmd: 'tar', args: ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', tar, '-C', dir] });
  return dir;
}

async function build(kind: 'docker' | 'mmdebstrap' | 'tar', rootfs: string): Promise<string> {
  const dir = join(work, `out-${kind}`);
  const r = await timed(kind, () => cli('build', '--image', IMAGE, '--stage', 'rootfs', '--rootfs', rootfs, '--out', dir));
  if (r.code !== 0) throw new Error(`build --rootfs ${rootfs} failed (${r.code}): ${r.stderr.slice(-4000)}`);
  return dir;
}

async function imageIds(): Promise<string[]> {
  return (await docker.listImages({ all: true })).map((i) => i.Id).sort();
}

test.before(async () => {
  work = tempDir('gk-e2e-rootfs-docker-');
  docker = new Docker();
  if (!(await answers(docker))) await timed('start dockerd', () => startDockerd(work));
  await timed('base image', () => importBase(work));
  imagesBefore = await imageIds();
  out.docker = await build('docker', `docker:${BASE_TAG}`);
  const given = process.env.GEMINIK8S_E2E_ROOTFS_TAR;
  const mmTar = given ?? join((out.mmdebstrap = await build('mmdebstrap', 'mmdebstrap')), `${NAME}.rootfs.tar`);
  out.tar = await build('tar', `tar:${mmTar}`);
  roots.docker = await extract(join(out.docker, `${NAME}.rootfs.tar`), join(work, 'root-docker'));
  roots.tar = await extract(join(out.tar, `${NAME}.rootfs.tar`), join(work, 'root-tar'));
});

test.after.always(async () => {
  if (!dockerd) await docker?.getImage(BASE_TAG).remove({ force: true }).catch(() => undefined);
  if (dockerd) {
    dockerd.kill('SIGTERM');
    const status = await Promise.race([dockerd.exited, new Promise((r) => setTimeout(() => r(undefined), 30_000))]);
    if (status === undefined) dockerd.kill('SIGKILL');
    await dockerd.exited;
  }
  // A dockerd that had to be killed may leave its overlay mounts behind: keep the directory then.
  if (work) await rm(work, { recursive: true, force: true }).catch((err: Error) => console.error(`could not remove ${work}: ${err.message}`));
});


test('timings and outputs: root tar and manifest under their final names, nothing temporary left', (t) => {
  t.log(Object.entries(seconds).map(([k, s]) => `${k}: ${s.toFixed(0)} s`).join(', '));
  for (const [kind, dir] of Object.entries(out)) {
    if (!dir) continue;
    t.deepEqual(readdirSync(dir).sort(), [`${NAME}.manifest.json`, `${NAME}.rootfs.tar`], kind);
    t.log(`${kind}: ${(statSync(join(dir, `${NAME}.rootfs.tar`)).size / 1048576).toFixed(0)} MiB`);
  }
  const manifest = (dir: string) => JSON.parse(readFileSync(join(dir, `${NAME}.manifest.json`), 'utf8'));
  t.like(manifest(out.docker), { image: 'test', version: '0.1.0', arch: 'amd64', kubernetes: false, rootSource: { name: 'docker', origin: `docker ${BASE_TAG}` } });
  t.like(manifest(out.tar), { image: 'test', rootSource: { name: 'tar' } });
  t.like(JSON.parse(readFileSync(join(roots.docker, 'usr/share/geminik8s/manifest.json'), 'utf8')), { rootSource: { name: 'docker' } });
});

test('docker: the root is the node OS', async (t) => {
  await assertNodeRoot(t, roots.docker);
});

test('docker: none of Docker\'s own files; Debian\'s /etc/hosts, /etc/resolv.conf, /etc/mtab and /dev', (t) => {
  const root = roots.docker;
  t.false(existsSync(join(root, '.dockerenv')), 'no /.dockerenv');
  t.false(existsSync(join(root, 'etc/hostname')), "no Docker hostname stub (cloud-init names the node)");
  t.is(readlinkSync(join(root, 'etc/resolv.conf')), '../run/systemd/resolve/stub-resolv.conf');
  t.regex(readFileSync(join(root, 'etc/hosts'), 'utf8'), /^127\.0\.0\.1\tlocalhost$/m);
  t.is(readlinkSync(join(root, 'etc/mtab')), '../proc/self/mounts');
  t.true(lstatSync(join(root, 'dev/console')).isCharacterDevice());
  t.true(lstatSync(join(root, 'dev/null')).isCharacterDevice());
  t.deepEqual(readdirSync(join(root, 'etc/apt/apt.conf.d')).filter((n) => n.startsWith('docker-')), []);
  t.is(readFileSync(join(root, 'etc/apt/sources.list'), 'utf8').trim(), 'deb http://deb.debian.org/debian trixie main');
});

test('docker: the engine is left as it was: no container, no image of the build', async (t) => {
  const containers = await docker.listContainers({ all: true, filters: { label: ['io.geminik8s.build'] } });
  t.deepEqual(containers.map((c) => c.Id), []);
  t.deepEqual(await imageIds(), imagesBefore, 'the built image and its intermediate images removed');
});

test('tar:PATH: the mmdebstrap root re-made from its tarball is the node OS, os-release lines not repeated', async (t) => {
  await assertNodeRoot(t, roots.tar);
});

test('docker and tar:PATH (an mmdebstrap root) make the same node OS', async (t) => {
  const read = (root: string, f: string) => (existsSync(join(root, f)) ? readFileSync(join(root, f), 'utf8') : `(no ${f})`);
  const pkgs = (root: string) => read(root, 'usr/share/geminik8s/packages.tsv').split('\n').map((l) => l.split('\t')[0]).filter(Boolean);
  t.deepEqual(pkgs(roots.docker), pkgs(roots.tar), 'the same Debian packages');
  for (const f of ['usr/lib/os-release', 'etc/dpkg/dpkg.cfg.d/99mmdebstrap', 'etc/apt/apt.conf.d/99mmdebstrap', 'etc/apt/sources.list', 'etc/hosts', 'etc/fstab']) {
    t.is(read(roots.docker, f), read(roots.tar, f), f);
  }
  for (const d of ['etc/systemd/system/multi-user.target.wants', 'etc/systemd/system/sysinit.target.wants', 'etc/systemd/system']) {
    t.deepEqual(readdirSync(join(roots.docker, d)).sort(), readdirSync(join(roots.tar, d)).sort(), d);
  }
  // Every path, but what mmdebstrap copies from the build host (hostname, the resolv.conf backup)
  // and the name of the per-build snakeoil certificate's hash link.
  const hostCopies = new Set(['./etc/hostname', './etc/.resolv.conf.systemd-resolved.bak']);
  const snakeoil = (root: string, p: string) => /^\.\/etc\/ssl\/certs\/[0-9a-f]{8}\.0$/.test(p) && readlinkSync(join(root, p)) === 'ssl-cert-snakeoil.pem';
  const paths = async (root: string) => (await runPlan({ cmd: 'find', args: ['.'], cwd: root })).stdout.split('\n').filter((p) => p && !hostCopies.has(p) && !snakeoil(root, p));
  const [a, b] = await Promise.all([paths(roots.docker), paths(roots.tar)]);
  const [sa, sb] = [new Set(a), new Set(b)];
  const onlyDocker = a.filter((p) => !sb.has(p));
  const onlyTar = b.filter((p) => !sa.has(p));
  t.log(`${a.length} paths; only in the docker root: ${onlyDocker.length}, only in the mmdebstrap root: ${onlyTar.length}`);
  t.deepEqual({ onlyDocker, onlyTar }, { onlyDocker: [], onlyTar: [] });
});
