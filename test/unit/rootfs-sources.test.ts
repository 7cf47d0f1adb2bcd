import test from 'ava';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan } from '#common/exec.ts';
import { Logger } from '#common/log.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { APT_OPTIONS, DPKG_EXCLUDES, mmdebstrapPlan, stagingHooks, stagingTarPlan } from '#builder/rootfs/mmdebstrap.ts';
import { rootPackages } from '#builder/rootfs/packages.ts';
import { osReleaseFragment } from '#builder/rootfs/steps.ts';
import { buildContext, CONTAINERFILE, containerfileBuildArgs, dockerBuildPlan, dockerSource } from '#builder/rootfs/sources/docker.ts';
import { DEBIAN_MASKED_FILES, rootFromDockerExport } from '#builder/rootfs/sources/docker-export.ts';
import { parseRootSource } from '#builder/rootfs/sources/index.ts';
import { OS_RELEASE_KEYS, rootTarProblems, tarSourcePlan, validateRootTar } from '#builder/rootfs/sources/tar.ts';
import { binarySafeExtract, rawPax, TarWriter, type TarHeader } from '#builder/rootfs/sources/tarfile.ts';
import { cli } from '#lab/cli.ts';
import { loadImageDef, ROOT, tempDir } from '../helpers/fixtures.ts';

// No Docker engine in the fast tier: every engine call goes to a socket that does not exist.
const NO_ENGINE = 'unix:///nonexistent-geminik8s-test/docker.sock';
process.env.DOCKER_HOST = NO_ENGINE;

const quiet = new Logger({ level: 'error', color: false, write: () => undefined });

async function sourceCtx() {
  return { image: await loadImageDef('test-amd64.yaml'), staging: tempDir(), cacheDir: tempDir(), workDir: tempDir(), sourceDateEpoch: 1_700_000_000, baseCache: true, logger: quiet, progress: () => undefined };
}

/** Read a tar (bytes) back: header, raw PAX records and body of each entry. */
async function readTar(bytes: Buffer): Promise<{ header: TarHeader & { uname: string; gname: string }; pax?: Map<string, Buffer>; body: Buffer }[]> {
  const extract = binarySafeExtract();
  Readable.from([bytes]).pipe(extract as unknown as NodeJS.WritableStream);
  const out = [];
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(Buffer.from(c as Uint8Array));
    const h = entry.header;
    const header = { ...h, mtime: Math.floor(h.mtime.getTime() / 1000), type: h.type as TarHeader['type'], linkname: h.linkname ?? undefined, pax: undefined };
    out.push({ header, pax: rawPax(h), body: Buffer.concat(chunks) });
  }
  return out;
}

async function writeTar(entries: [TarHeader, Buffer?][]): Promise<Buffer> {
  const sink = new PassThrough();
  const chunks: Buffer[] = [];
  sink.on('data', (c: Buffer) => chunks.push(c));
  const w = new TarWriter(sink);
  for (const [h, body] of entries) await w.add(h, body);
  await w.close();
  return Buffer.concat(chunks);
}

test('--rootfs: mmdebstrap by default, docker with an optional base image, tar with a path', (t) => {
  t.is(parseRootSource(undefined).name, 'mmdebstrap');
  t.is(parseRootSource('mmdebstrap').name, 'mmdebstrap');
  t.like(parseRootSource('docker'), { name: 'docker', origin: 'docker debian:trixie' });
  t.like(parseRootSource('docker:geminik8s-test/trixie-base'), { name: 'docker', origin: 'docker geminik8s-test/trixie-base' });
  t.like(parseRootSource('docker:registry.local:5000/debian:trixie'), { origin: 'docker registry.local:5000/debian:trixie' });
  t.like(parseRootSource('tar:/srv/roots/base.tar.zst'), { name: 'tar', origin: '/srv/roots/base.tar.zst' });
  t.is(parseRootSource('tar:base.tar').origin, join(process.cwd(), 'base.tar'), 'a relative path is taken from the working directory');
});

test('--rootfs: tar without a path, an empty docker base and unknown sources exit 2 with the accepted forms', (t) => {
  for (const [value, message] of [
    ['tar:', /--rootfs tar needs the path of a root tarball: --rootfs tar:PATH/],
    ['tar', /--rootfs tar needs the path/],
    ['docker:', /--rootfs docker: needs an image after the colon/],
    ['podman', /unknown root source "podman"; expected mmdebstrap, docker\[:BASE-IMAGE\], tar:PATH/],
    ['mmdebstrap:sid', /unknown root source "mmdebstrap:sid"/],
  ] as const) {
    const err = t.throws(() => parseRootSource(value), { instanceOf: GeminiError, message }, value);
    t.is(err?.exitCode, ExitCode.invalidInput);
  }
});

test('geminik8s build --rootfs: a bad value exits 2 before anything is built or written', async (t) => {
  for (const [value, message] of [['tar:', /error: --rootfs tar needs the path/], ['nspawn', /error: --rootfs: unknown root source "nspawn"/]] as const) {
    const out = join(tempDir(), 'out');
    const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'rootfs', '--rootfs', value, '--out', out);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, message);
    t.false(existsSync(out), 'nothing written');
  }
});

test('the Containerfile build: one package list, dpkg filters and apt options, passed as build arguments (snapshot)', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const plan = dockerBuildPlan(image, 'debian:trixie');
  t.snapshot(plan);
  t.deepEqual(plan.buildargs.PACKAGES!.split(' '), rootPackages(image));
  t.deepEqual(plan.buildargs.DPKG_EXCLUDES!.split('\n'), DPKG_EXCLUDES);
  t.deepEqual(plan.buildargs.APT_OPTIONS!.split('\n'), APT_OPTIONS);
  t.like(plan.buildargs, { BASE: 'debian:trixie', SUITE: 'trixie', MIRROR: 'http://deb.debian.org/debian' });
  t.is(plan.platform, 'linux/amd64');
  const arm = dockerBuildPlan(await loadImageDef('edge-arm64.yaml'), 'geminik8s-test/trixie-base');
  t.is(arm.platform, 'linux/arm64');
  t.deepEqual(arm.buildargs.PACKAGES!.split(' '), rootPackages(await loadImageDef('edge-arm64.yaml')));
  t.is(arm.buildargs.BASE, 'geminik8s-test/trixie-base');
});

test('the Containerfile stays in sync: it declares every build argument and repeats no list of its own', async (t) => {
  const text = readFileSync(CONTAINERFILE, 'utf8');
  const code = text.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n');
  const args = containerfileBuildArgs(await loadImageDef('edge-amd64.yaml'), 'debian:trixie');
  t.regex(code, /^ARG BASE=debian:trixie\nFROM \$\{BASE\}$/m, 'BASE defaults to debian:trixie, declared before FROM');
  for (const name of Object.keys(args).filter((n) => n !== 'BASE')) {
    t.regex(code, new RegExp(`^ARG ${name}$`, 'm'), `ARG ${name} declared after FROM, with no default`);
    t.regex(code, new RegExp(`\\$\\{?${name}\\b`), `${name} used`);
  }
  // No package name, dpkg filter or apt option written into the Containerfile itself.
  for (const pkg of rootPackages(await loadImageDef('edge-amd64.yaml'))) t.false(new RegExp(`(^|\\s)${pkg.replace(/[+.]/g, '\\$&')}(\\s|$)`, 'm').test(code), pkg);
  for (const rule of [...DPKG_EXCLUDES, ...APT_OPTIONS]) t.false(code.includes(rule), rule);
  t.regex(code, /apt-get install --yes \$PACKAGES/);
  t.regex(code, /^COPY staging\/ \/$/m);
  t.true(code.includes(NODE_PATHS.customizeScript), 'runs the same customize script as the mmdebstrap hooks');
});

test('the tar source plan: mmdebstrap --variant=custom unpacks the tarball and ends with the same hooks (snapshot)', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const plan = tarSourcePlan({ image, tarball: '/srv/roots/base.tar.zst', output: '/out/.x.tmp', stagingTar: '/work/staging.tar', sourceDateEpoch: 1700000000 });
  t.snapshot(plan);
  t.is(plan.cmd, 'mmdebstrap');
  t.true(plan.args.includes('--variant=custom') && plan.args.includes('--skip=update'));
  const setup = plan.args.find((a) => a.startsWith('--setup-hook='))!;
  t.regex(setup, /^--setup-hook=tar --extract --file=\/srv\/roots\/base\.tar\.zst --directory="\$1" --numeric-owner --preserve-permissions --xattrs/);
  t.regex(setup, /--anchored '--exclude=\.\/dev\/\*' '--exclude=dev\/\*'/, 'globs quoted for the hook shell');
  const hooks = stagingHooks('/work/staging.tar');
  t.deepEqual(hooks[0], '--customize-hook=tar-in /work/staging.tar /', 'the packed staging tree, root-owned whoever builds');
  const mm = mmdebstrapPlan({ image, output: '/o', staging: '/work/staging', stagingTar: '/work/staging.tar', aptCache: '/c', sourceDateEpoch: 1700000000 });
  t.deepEqual(plan.args.slice(-3 - hooks.length, -3), hooks, 'the staging hooks end the tar plan...');
  t.deepEqual(mm.args.slice(-3 - hooks.length, -3), hooks, '...and the mmdebstrap plan');
  t.deepEqual(plan.args.slice(-3), ['trixie', '/out/.x.tmp', 'http://deb.debian.org/debian']);
  t.is(plan.env?.SOURCE_DATE_EPOCH, '1700000000');
});

test('the staging tree is packed with every entry owned by root, whoever runs the build', async (t) => {
  const staging = tempDir();
  mkdirSync(join(staging, 'usr/bin'), { recursive: true });
  writeFileSync(join(staging, 'usr/bin/geminik8s-agent'), '#!/bin/sh\n', { mode: 0o755 });
  chownSync(join(staging, 'usr/bin/geminik8s-agent'), 1234, 5678);
  chownSync(join(staging, 'usr/bin'), 1234, 5678);
  const tar = join(tempDir(), 'staging.tar');
  await runPlan(stagingTarPlan(staging, tar));
  const listing = (await runPlan({ cmd: 'tar', args: ['--numeric-owner', '-tvf', tar] })).stdout;
  t.regex(listing, /^-rwxr-xr-x 0\/0 .* \.\/usr\/bin\/geminik8s-agent$/m);
  t.regex(listing, /^drwxr-xr-x 0\/0 .* \.\/usr\/bin\/$/m);
  t.notRegex(listing, /1234|5678/);
});

test('the os-release keys the tar source drops are exactly those the build appends', async (t) => {
  const fragment = osReleaseFragment(await loadImageDef('test-amd64.yaml'));
  t.deepEqual(fragment.trim().split('\n').map((l) => l.split('=')[0]), OS_RELEASE_KEYS);
});

test('root tarball checks: dpkg, package database, kernel, architecture and every package of the image', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const good = ['./', './usr/bin/dpkg', './var/lib/dpkg/status', './boot/vmlinuz-6.12.0-amd64', './var/lib/dpkg/info/libc6:amd64.list',
    ...rootPackages(image).map((p) => `./var/lib/dpkg/info/${p}${p === 'udev' ? ':amd64' : ''}.list`)];
  t.deepEqual(rootTarProblems(good, image), []);
  t.deepEqual(rootTarProblems(good.map((m) => m.slice(2)), image), [], 'names without ./ too');
  t.deepEqual(rootTarProblems(['etc/', 'etc/passwd'], image).slice(0, 3), ['no usr/bin/dpkg: not a Debian root', 'no var/lib/dpkg/status: no Debian package database', 'no kernel (boot/vmlinuz-*)']);
  const arm = good.map((m) => m.replace('libc6:amd64', 'libc6:arm64'));
  t.deepEqual(rootTarProblems(arm, image), ['the root is arm64, the image is amd64']);
  const noPg = good.filter((m) => !m.includes('postgresql-17') && !m.includes('/nodejs'));
  t.deepEqual(rootTarProblems(noPg, image), ['Debian packages not installed: nodejs, postgresql-17']);
});

test('tar:PATH validation exits 2 naming the file and what is missing, compressed or not', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const dir = tempDir();
  mkdirSync(join(dir, 'root/etc'), { recursive: true });
  writeFileSync(join(dir, 'root/etc/os-release'), 'ID=debian\n');
  const tar = join(dir, 'not-a-root.tar');
  await runPlan({ cmd: 'tar', args: ['-cf', tar, '-C', join(dir, 'root'), '.'] });
  await runPlan({ cmd: 'gzip', args: ['-k', tar] });
  for (const file of [tar, `${tar}.gz`]) {
    const err = await t.throwsAsync(validateRootTar(file, image), { instanceOf: GeminiError });
    t.is(err?.exitCode, ExitCode.invalidInput);
    t.true(err!.message.startsWith(`${file} cannot be the root of image test (amd64):`), err!.message);
    t.regex(err!.message, /- no usr\/bin\/dpkg: not a Debian root/);
    t.regex(err!.message, /- Debian packages not installed: busybox, ca-certificates, .*postgresql-17/);
  }
  const missing = await t.throwsAsync(validateRootTar(join(dir, 'nope.tar'), image), { message: /--rootfs tar:.*nope\.tar: no such file/ });
  t.is((missing as GeminiError).exitCode, ExitCode.invalidInput);
  writeFileSync(join(dir, 'junk.tar'), 'this is not a tar archive\n'.repeat(100));
  const junk = await t.throwsAsync(validateRootTar(join(dir, 'junk.tar'), image), { message: /junk\.tar: not a readable tarball/ });
  t.is((junk as GeminiError).exitCode, ExitCode.invalidInput);
  const asDir = await t.throwsAsync(validateRootTar(dir, image), { message: /not a file; expected a root tarball/ });
  t.is((asDir as GeminiError).exitCode, ExitCode.invalidInput);
});

test('no Docker engine: the docker source exits 3 naming what to start or install, and DOCKER_HOST', async (t) => {
  const err = await t.throwsAsync(dockerSource('debian:trixie').check(await sourceCtx()), { instanceOf: GeminiError });
  t.is(err?.exitCode, ExitCode.missingTool);
  t.is(
    err?.message,
    `no Docker engine answers at ${NO_ENGINE} (DOCKER_HOST) (no such socket): start it (systemctl start docker, or run dockerd as root) ` +
      'or install it with the Debian package docker.io (apt-get install docker.io); set DOCKER_HOST to use another engine',
  );
});

test('geminik8s build --rootfs docker with no engine exits 3 and leaves no root tar behind', async (t) => {
  const out = tempDir();
  const r = await cli('build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'rootfs', '--rootfs', 'docker', '--out', out);
  t.is(r.code, 3, r.stderr);
  t.regex(r.stderr, /error: no Docker engine answers at unix:\/\/\/nonexistent-geminik8s-test\/docker\.sock \(DOCKER_HOST\).*systemctl start docker, or run dockerd as root.*docker\.io/);
  t.deepEqual(readdirSync(out), []);
});

test('the build context: the Containerfile and the staging tree under staging/, owned by root, modes kept', async (t) => {
  const staging = tempDir();
  mkdirSync(join(staging, 'usr/lib/geminik8s'), { recursive: true });
  writeFileSync(join(staging, 'usr/lib/geminik8s/ready.sh'), '#!/bin/sh\n', { mode: 0o755 });
  writeFileSync(join(staging, 'usr/lib/geminik8s/agent.mjs'), 'x'.repeat(70_000));
  symlinkSync('ready.sh', join(staging, 'usr/lib/geminik8s/link'));
  const chunks: Buffer[] = [];
  for await (const c of buildContext('FROM scratch\n', staging)) chunks.push(Buffer.from(c as Uint8Array));
  const entries = await readTar(Buffer.concat(chunks));
  t.deepEqual(entries.map((e) => `${e.header.type} ${e.header.name} ${e.header.uid}:${e.header.gid} ${(e.header.mode & 0o7777).toString(8)}`), [
    'file Containerfile 0:0 644', 'directory staging 0:0 755', 'directory staging/usr 0:0 755', 'directory staging/usr/lib 0:0 755',
    'directory staging/usr/lib/geminik8s 0:0 755', 'file staging/usr/lib/geminik8s/agent.mjs 0:0 644', 'symlink staging/usr/lib/geminik8s/link 0:0 777',
    'file staging/usr/lib/geminik8s/ready.sh 0:0 755',
  ]);
  t.is(entries[0]!.body.toString(), 'FROM scratch\n');
  t.is(entries[5]!.body.length, 70_000);
  t.is(entries[6]!.header.linkname, 'ready.sh');
});

test('docker export → root tar: Docker\'s files dropped, Debian\'s written back, /dev as mmdebstrap makes it, xattrs byte for byte', async (t) => {
  const SDE = 1_700_000_000;
  const later = SDE + 86_400;
  const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0xff, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const base = { uid: 0, gid: 0, mtime: later, mode: 0o755 };
  const longName = `usr/share/${'deep/'.repeat(30)}file.txt`;
  const input = await writeTar([
    [{ ...base, name: '.dockerenv', type: 'file', size: 0 }],
    [{ ...base, name: 'bin', type: 'symlink', mode: 0o777, linkname: 'usr/bin' }],
    [{ ...base, name: 'dev/', type: 'directory' }],
    [{ ...base, name: 'dev/console', type: 'file', size: 0 }],
    [{ ...base, name: 'dev/pts/', type: 'directory' }],
    [{ ...base, name: 'etc/', type: 'directory' }],
    [{ ...base, name: 'etc/hostname', type: 'file', size: 0 }],
    [{ ...base, name: 'etc/hosts', type: 'file', size: 0 }],
    [{ ...base, name: 'etc/resolv.conf', type: 'file', size: 0 }],
    [{ ...base, name: 'etc/mtab', type: 'symlink', mode: 0o777, linkname: '/proc/mounts' }],
    [{ ...base, name: 'usr/bin/arping', type: 'file', size: 5, uid: 0, gid: 0, pax: new Map([['SCHILY.xattr.security.capability', cap]]) }, Buffer.from('ELF!\n')],
    [{ ...base, name: 'usr/bin/arping2', type: 'link', linkname: 'usr/bin/arping' }],
    [{ ...base, name: 'var/lib/postgresql/', type: 'directory', uid: 101, gid: 103, mtime: SDE - 10 }],
    [{ ...base, name: longName, type: 'file', size: 3, mode: 0o644 }, Buffer.from('abc')],
    [{ ...base, name: 'var/lib/dpkg/info/netbase.list', type: 'file', size: 0, mode: 0o644 }],
    [{ ...base, name: 'var/lib/dpkg/info/systemd-resolved.list', type: 'file', size: 0, mode: 0o644 }],
  ]);
  const sink = new PassThrough();
  const chunks: Buffer[] = [];
  sink.on('data', (c: Buffer) => chunks.push(c));
  const summary = await rootFromDockerExport(Readable.from([input]), sink, { sourceDateEpoch: SDE });
  t.deepEqual(summary.dropped.filter((p) => !p.startsWith('dev/')), ['.dockerenv', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf', 'etc/mtab']);
  const out = await readTar(Buffer.concat(chunks));
  const byName = new Map(out.map((e) => [e.header.name, e]));
  t.true([...byName.keys()].every((n) => n.startsWith('./')), 'names as ./path');
  for (const gone of ['./.dockerenv', './etc/hostname']) t.false(byName.has(gone), gone);
  t.is(byName.get('./etc/hosts')?.body.toString(), DEBIAN_MASKED_FILES.find((f) => f.path === 'etc/hosts')!.content, "netbase's /etc/hosts");
  t.like(byName.get('./etc/resolv.conf')?.header, { type: 'symlink', linkname: '../run/systemd/resolve/stub-resolv.conf' });
  t.false(byName.has('./etc/mtab'), 'no systemd installed: its /etc/mtab link is not added');
  t.like(byName.get('./dev/console')?.header, { type: 'character-device', devmajor: 5, devminor: 1, mode: 0o666 });
  t.like(byName.get('./dev/stdout')?.header, { type: 'symlink', linkname: '/proc/self/fd/1' });
  t.is(out.filter((e) => e.header.name.startsWith('./dev/') && e.header.name !== './dev/').length, 14, 'console full null ptmx random tty urandom zero, fd stdin stdout stderr, pts shm');
  const arping = byName.get('./usr/bin/arping')!;
  t.is(arping.body.toString(), 'ELF!\n');
  t.deepEqual(arping.pax?.get('SCHILY.xattr.security.capability'), cap, 'security.capability unchanged, bytes >= 0x80 included');
  t.like(byName.get('./usr/bin/arping2')?.header, { type: 'link', linkname: './usr/bin/arping' });
  t.like(byName.get('./var/lib/postgresql/')?.header, { uid: 101, gid: 103, mtime: SDE - 10, uname: '', gname: '' });
  t.is(byName.get(`./${longName}`)?.body.toString(), 'abc', 'long names kept');
  t.true(out.every((e) => e.header.mtime <= SDE), 'times clamped to SOURCE_DATE_EPOCH');
  // GNU tar reads it, extended attributes included.
  const dir = tempDir();
  writeFileSync(join(dir, 'root.tar'), Buffer.concat(chunks));
  const list = await runPlan({ cmd: 'tar', args: ['--xattrs', '--xattrs-include=*', '-tvvf', join(dir, 'root.tar')] });
  t.regex(list.stdout, /\.\/usr\/bin\/arping\n/);
  t.regex(list.stdout, /x: 20 security\.capability/);
});
