import test from 'ava';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { ROOT, tempDir } from '../../helpers/fixtures.ts';
import { cachedTestImage, partitionDiff } from '#lab/test-image.ts';

// `geminik8s build` of the test image as an unprivileged user: mmdebstrap chooses unshare mode
// (user namespaces, subordinate ids), the disk stage runs its tools under fakeroot. The result
// must be the image a root build makes from the same inputs, byte for byte; the suite needs
// root only to make the user and show it the source tree. Where user namespaces are forbidden,
// it says so and skips: the build cannot run rootless there.
const USER = 'gk-rootless';
const SUBIDS = '231072-296607';
const NAME = 'test-0.1.0-amd64';
const EPOCH = '1700000000';

let skip = '';
let home = '';
let src = '';
let out = '';
let log = '';
let uid = -1;
let buildSeconds = 0;

test.before(async (t) => {
  t.timeout(45 * 60_000, 'a root build from Debian packages, then a disk image, as an unprivileged user');
  if (process.getuid?.() !== 0) {
    skip = 'the suite needs root to create its build user (the build itself runs as that user)';
    return;
  }
  if ((await runPlan({ cmd: 'id', args: ['-u', USER] }, { allowFailure: true })).exitCode !== 0) {
    await runPlan({ cmd: 'useradd', args: ['--create-home', '--shell', '/usr/sbin/nologin', USER] });
  }
  uid = Number((await runPlan({ cmd: 'id', args: ['-u', USER] })).stdout.trim());
  // mmdebstrap's unshare mode maps the subordinate ids of /etc/subuid and /etc/subgid.
  if (!readFileSync('/etc/subuid', 'utf8').split('\n').some((l) => l.startsWith(`${USER}:`))) {
    await runPlan({ cmd: 'usermod', args: ['--add-subuids', SUBIDS, '--add-subgids', SUBIDS, USER] });
  }
  const probe = await runPlan({ cmd: 'runuser', args: ['-u', USER, '--', 'unshare', '--user', '--map-root-user', 'true'] }, { allowFailure: true });
  if (probe.exitCode !== 0) {
    skip = `this kernel forbids unprivileged user namespaces (unshare --user as ${USER}: ${probe.stderr.trim()}), so mmdebstrap cannot run in unshare mode here`;
    return;
  }
  home = (await runPlan({ cmd: 'getent', args: ['passwd', USER] })).stdout.split(':')[5]!;
  // The apt cache a root build filled, copied for the user: the packages are the same.
  const aptCache = join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '/root', '.cache'), 'geminik8s', 'apt');
  const userCache = join(home, '.cache', 'geminik8s');
  mkdirSync(userCache, { recursive: true });
  if (existsSync(aptCache)) await runPlan({ cmd: 'cp', args: ['-a', '--no-target-directory', aptCache, join(userCache, 'apt')] });
  await runPlan({ cmd: 'chown', args: ['-R', `${USER}:`, join(home, '.cache')] });
  // The source tree is where CI cloned it, perhaps under a directory only root may enter: the
  // user sees it through a bind mount. It only reads it.
  src = tempDir('gk-rootless-src-');
  chmodSync(src, 0o755);
  await runPlan({ cmd: 'mount', args: ['--bind', ROOT, src] });
  out = tempDir('gk-rootless-out-');
  chownSync(out, uid, -1);
  const started = Date.now();
  const r = await runPlan({
    cmd: 'runuser',
    args: ['-u', USER, '--', 'env', `HOME=${home}`, `SOURCE_DATE_EPOCH=${EPOCH}`, `PATH=${process.env.PATH}`, process.execPath, join(src, 'bin/geminik8s.js'),
      'build', '--image', join(src, 'images/test-amd64.yaml'), '--out', out],
    cwd: src,
  }, { allowFailure: true, timeoutMs: 40 * 60_000 });
  buildSeconds = (Date.now() - started) / 1000;
  log = `${r.stdout}${r.stderr}`;
  if (r.exitCode !== 0) throw new Error(`the rootless build failed (${r.exitCode}): ${log.slice(-4000)}`);
});

test.after.always(async () => {
  // The user's copy of the apt cache is half a gigabyte; the next run copies it again.
  if (home) rmSync(join(home, '.cache', 'geminik8s'), { recursive: true, force: true });
  if (src) await runPlan({ cmd: 'umount', args: [src] }, { allowFailure: true });
  if (src) rmSync(src, { recursive: true, force: true });
  if (out) rmSync(out, { recursive: true, force: true });
});

test('built as an unprivileged user: mmdebstrap in unshare mode, the disk stage under fakeroot, every output the user\'s', async (t) => {
  if (skip) return t.log(`SKIPPED: ${skip}`) as unknown as void;
  t.log(`rootless build: ${buildSeconds.toFixed(0)} s`);
  t.regex(log, /automatically chosen mode: unshare/);
  t.regex(log, /extended attribute\(s\) to set under fakeroot with the slot/);
  for (const f of [`${NAME}.rootfs.tar`, `${NAME}.raw`, `${NAME}.qcow2`]) {
    const owner = (await runPlan({ cmd: 'stat', args: ['-c', '%u', join(out, f)] })).stdout.trim();
    t.is(Number(owner), uid, f);
  }
});

test('the root tar owns nothing by the build user: the staged files are root\'s, as in a root build', async (t) => {
  if (skip) return t.log(`SKIPPED: ${skip}`) as unknown as void;
  const listing = (await runPlan({ cmd: 'tar', args: ['--numeric-owner', '-tvf', join(out, `${NAME}.rootfs.tar`)] })).stdout;
  const theirs = listing.split('\n').filter((l) => new RegExp(`^\\S+ (${uid}/|\\d+/${uid} )`).test(l));
  t.deepEqual(theirs.slice(0, 10), [], `entries owned by uid ${uid}`);
  for (const path of ['./usr/bin/', './usr/bin/geminik8s-agent', './usr/lib/geminik8s/agent.mjs', './etc/geminik8s/']) {
    t.regex(listing, new RegExp(`^\\S+ 0/0 .* ${path.replace(/[.]/g, '\\.')}$`, 'm'), path);
  }
});

test('the image is byte for byte the one a root build makes from the same root tar; the slot keeps arping and its capability', async (t) => {
  if (skip) return t.log(`SKIPPED: ${skip}`) as unknown as void;
  const userRaw = join(out, `${NAME}.raw`);
  const sha = async (f: string): Promise<string> => (await runPlan({ cmd: 'sha256sum', args: [f] })).stdout.split(' ')[0]!;
  const rootOut = tempDir('gk-rootless-rootdisk-');
  try {
    // A root build of the same sources (the boot suite's, when it is cached) is compared whole:
    // the same root tar and the same disk prove both stages at once.
    const cached = cachedTestImage('test-amd64.yaml');
    const sameTar = cached ? (await sha(join(out, `${NAME}.rootfs.tar`))) === (await sha(cached.rootfsTar)) : false;
    if (cached) t.log(`against the root build in ${cached.dir}: root tar ${sameTar ? 'identical' : 'different'}`);
    let diff: Awaited<ReturnType<typeof partitionDiff>>;
    if (cached && sameTar) {
      diff = await partitionDiff(userRaw, cached.raw);
    } else {
      // Otherwise the disk stage as root, from the user's root tar.
      const r = await runPlan({ cmd: process.execPath, args: [join(ROOT, 'bin/geminik8s.js'), 'build', '--image', join(ROOT, 'images/test-amd64.yaml'), '--stage', 'disk', '--rootfs-tar', join(out, `${NAME}.rootfs.tar`), '--out', rootOut], env: { SOURCE_DATE_EPOCH: EPOCH } }, { allowFailure: true, timeoutMs: 30 * 60_000 });
      t.is(r.exitCode, 0, r.stderr.slice(-3000));
      diff = await partitionDiff(userRaw, join(rootOut, `${NAME}.raw`));
    }
    t.deepEqual(diff.filter((p) => p.differingBytes > 0), [], 'regions whose bytes differ between the rootless and the root build');
    // arping needs cap_net_raw for the VIP's gratuitous ARP when not run as root; fakeroot once
    // dropped the file from the slot without a word.
    const slot = join(rootOut, 'slot-a.img');
    const rootA = diff.find((p) => p.name === 'ROOT_A')!;
    await runPlan({ cmd: 'dd', args: [`if=${userRaw}`, `of=${slot}`, 'bs=1M', `skip=${rootA.offset / 1048576}`, `count=${rootA.size / 1048576}`, 'status=none'] });
    const files = (await runPlan({ cmd: 'unsquashfs', args: ['-lls', slot, 'usr/bin/arping'] })).stdout;
    t.regex(files, /^-rwxr-xr-x root\/root .* squashfs-root\/usr\/bin\/arping$/m);
    await runPlan({ cmd: 'unsquashfs', args: ['-n', '-d', join(rootOut, 'x'), slot, 'usr/bin/arping'] });
    const cap = await runPlan({ cmd: 'getfattr', args: ['--absolute-names', '-n', 'security.capability', '-e', 'hex', join(rootOut, 'x/usr/bin/arping')] }, { allowFailure: true });
    t.regex(cap.stdout, /security\.capability=0x0100000200200000/, 'cap_net_raw permitted and effective');
  } finally {
    rmSync(rootOut, { recursive: true, force: true });
  }
});
