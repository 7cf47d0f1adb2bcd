import test from 'ava';
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { baseKey, baseKeyInput, basesToPrune, ensureBase, releaseDigest, type BasePorts } from '#builder/rootfs/base-cache.ts';
import { EARLY_STAGING_FILES, fromBasePlan, mmdebstrapBasePlan, mmdebstrapPlan } from '#builder/rootfs/mmdebstrap.ts';
import type { CommandPlan } from '#common/exec.ts';
import { loadImageDef, tempDir } from '../helpers/fixtures.ts';

function staging(early = 'create_main_cluster = false\n'): string {
  const dir = tempDir();
  for (const f of EARLY_STAGING_FILES) {
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    writeFileSync(join(dir, f), f.includes('postgresql') ? early : 'MODULES=list\n');
  }
  return dir;
}

test('the base key changes with every input that changes the installed root, and only with those', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const st = staging();
  const key = baseKey(baseKeyInput(image, st, 'r1', 'mmdebstrap 1.3.5\n'));
  t.regex(key, /^[0-9a-f]{16}$/);
  t.is(baseKey(baseKeyInput(image, staging(), 'r1', 'mmdebstrap 1.3.5')), key, 'same inputs, another staging directory');
  t.is(baseKey(baseKeyInput({ ...image, packages: [...image.packages].reverse() }, st, 'r1', 'mmdebstrap 1.3.5')), key, 'package order');
  const others = {
    'the mirror\'s InRelease': baseKeyInput(image, st, 'r2', 'mmdebstrap 1.3.5'),
    'mmdebstrap': baseKeyInput(image, st, 'r1', 'mmdebstrap 1.3.6'),
    'a package': baseKeyInput({ ...image, packages: [...image.packages, 'openssh-server'] }, st, 'r1', 'mmdebstrap 1.3.5'),
    'the architecture': baseKeyInput(await loadImageDef('test-arm64.yaml'), st, 'r1', 'mmdebstrap 1.3.5'),
    'the mirror': baseKeyInput({ ...image, base: { ...image.base, mirror: 'http://mirror.example/debian' } }, st, 'r1', 'mmdebstrap 1.3.5'),
    'an early file': baseKeyInput(image, staging('create_main_cluster = true\n'), 'r1', 'mmdebstrap 1.3.5'),
  };
  for (const [what, input] of Object.entries(others)) t.not(baseKey(input), key, what);
});

test('pruning keeps the most recently used bases of one suite and arch, and nothing else is touched', (t) => {
  const e = (name: string, mtimeMs: number) => ({ name, mtimeMs });
  const entries = [
    e('trixie-amd64-0000000000000001.tar', 1), e('trixie-amd64-0000000000000002.tar', 4), e('trixie-amd64-0000000000000003.tar', 3),
    e('trixie-amd64-0000000000000004.tar', 2), e('trixie-arm64-0000000000000005.tar', 0), e('.trixie-amd64-0000000000000006.tar.tmp-1', 0), e('notes.txt', 0),
  ];
  t.deepEqual(basesToPrune(entries, 'trixie', 'amd64', 3), ['trixie-amd64-0000000000000001.tar']);
  t.deepEqual(basesToPrune(entries, 'trixie', 'amd64', 1).sort(), ['trixie-amd64-0000000000000001.tar', 'trixie-amd64-0000000000000003.tar', 'trixie-amd64-0000000000000004.tar']);
  t.deepEqual(basesToPrune(entries, 'trixie', 'arm64', 1), []);
});

test('the InRelease digest comes from the mirror\'s dists/SUITE/InRelease; a missing one or no answer names the URL', async (t) => {
  const seen: string[] = [];
  const timers: NodeJS.Timeout[] = [];
  const server = createServer((req, res) => {
    seen.push(req.url!);
    if (req.url === '/debian/dists/trixie/InRelease') res.end('-----BEGIN PGP SIGNED MESSAGE-----\nSuite: trixie\n');
    else if (req.url === '/slow/dists/trixie/InRelease') timers.push(setTimeout(() => res.end('late'), 2000));
    else res.writeHead(404).end();
  }).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const a = await releaseDigest(`${base}/debian/`, 'trixie');
    t.regex(a, /^[0-9a-f]{64}$/);
    t.deepEqual(seen, ['/debian/dists/trixie/InRelease']);
    await t.throwsAsync(releaseDigest(`${base}/debian`, 'forky'), { message: `could not read ${base}/debian/dists/forky/InRelease: HTTP 404` });
    await t.throwsAsync(releaseDigest(`${base}/slow`, 'trixie', fetch, 200), { message: new RegExp(`could not read ${base}/slow/dists/trixie/InRelease: `) });
  } finally {
    for (const x of timers) clearTimeout(x);
    server.closeAllConnections();
    server.close();
  }
});

/** Ports whose mmdebstrap writes `content` at the plan's output (or fails), and which record what was said and run. */
function ports(release: string | Error, content: string | Error = 'base') {
  const said: string[] = [];
  const runs: CommandPlan[] = [];
  const p: BasePorts = {
    releaseDigest: async () => {
      if (release instanceof Error) throw release;
      return release;
    },
    mmdebstrapVersion: async () => 'mmdebstrap 1.3.5',
    run: async (plan) => {
      runs.push(plan);
      const out = plan.args.at(-2)!;
      writeFileSync(out, 'partial');
      if (content instanceof Error) throw content;
      writeFileSync(out, content);
    },
    progress: (m) => said.push(m),
  };
  return { p, said, runs };
}

test('ensureBase: a miss installs into a temporary name and keeps it under its key; a hit runs nothing; a failed install leaves nothing', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const st = staging();
  const dir = join(tempDir(), 'base');
  const plan = (out: string) => mmdebstrapBasePlan({ image, output: out, staging: st, aptCache: '/c', sourceDateEpoch: 1 });

  const miss = ports('r1');
  const path = await ensureBase({ image, staging: st, dir, plan }, miss.p);
  t.is(path, join(dir, `trixie-amd64-${baseKey(baseKeyInput(image, st, 'r1', 'mmdebstrap 1.3.5'))}.tar`));
  t.is(readFileSync(path!, 'utf8'), 'base');
  t.is(miss.runs.length, 1);
  t.regex(miss.runs[0]!.args.at(-2)!, /\/\.trixie-amd64-[0-9a-f]{16}\.tar\.tmp-\d+$/);
  t.regex(miss.said.join('\n'), /installing the packages into a new base root/);

  const hit = ports('r1');
  t.is(await ensureBase({ image, staging: st, dir, plan }, hit.p), path);
  t.is(hit.runs.length, 0);
  t.regex(hit.said.join('\n'), /base root from the cache: trixie-amd64-/);

  // A new mirror state is a new base; a failed install of it leaves the old one and no partial file.
  const failed = ports('r2', new Error('mmdebstrap exited 1'));
  await t.throwsAsync(ensureBase({ image, staging: st, dir, plan }, failed.p), { message: 'mmdebstrap exited 1' });
  t.deepEqual(readdirSync(dir), [path!.split('/').at(-1)]);

  // No mirror answer: the cache is not used, and the build is told why.
  const offline = ports(new Error('could not read http://deb.debian.org/debian/dists/trixie/InRelease: fetch failed'));
  t.is(await ensureBase({ image, staging: st, dir, plan }, offline.p), undefined);
  t.regex(offline.said.join('\n'), /base root cache not used: could not read http:\/\/deb\.debian\.org\/debian\/dists\/trixie\/InRelease/);
  t.is(offline.runs.length, 0);
});

test('ensureBase prunes older bases of the same suite and arch once a new one is kept', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const st = staging();
  const dir = join(tempDir(), 'base');
  mkdirSync(dir);
  for (let i = 1; i <= 3; i++) {
    writeFileSync(join(dir, `trixie-amd64-000000000000000${i}.tar`), 'old');
    utimesSync(join(dir, `trixie-amd64-000000000000000${i}.tar`), i * 1000, i * 1000);
  }
  writeFileSync(join(dir, 'trixie-arm64-0000000000000009.tar'), 'arm');
  const path = await ensureBase({ image, staging: st, dir, plan: (out) => mmdebstrapBasePlan({ image, output: out, staging: st, aptCache: '/c', sourceDateEpoch: 1 }) }, ports('r1').p);
  t.true(existsSync(path!));
  t.deepEqual(readdirSync(dir).sort(), [path!.split('/').at(-1)!, 'trixie-amd64-0000000000000002.tar', 'trixie-amd64-0000000000000003.tar', 'trixie-arm64-0000000000000009.tar'].sort());
});

test('the base plan installs what the one-pass plan installs, without the staging tree or /dev; the root from a base lays the staging tree over it', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const input = { image, output: '/out/.x.tmp', staging: '/work/staging', stagingTar: '/work/staging.tar', aptCache: '/cache/apt', sourceDateEpoch: 1700000000 };
  const one = mmdebstrapPlan(input);
  const base = mmdebstrapBasePlan(input);
  const staged = (p: CommandPlan) => p.args.filter((a) => a.includes('staging.tar') || a.includes('customize-root'));
  t.deepEqual(staged(base), []);
  t.true(base.args.includes('--skip=output/dev'));
  t.deepEqual(base.args.filter((a) => a !== '--skip=output/dev'), one.args.filter((a) => !staged(one).includes(a)), 'the same packages, options, apt cache and early files');
  const from = fromBasePlan({ image, base: '/cache/base/trixie-amd64-0123456789abcdef.tar', output: '/out/.x.tmp', stagingTar: '/work/staging.tar', sourceDateEpoch: 1700000000 });
  t.snapshot(from);
  t.true(from.args.includes('--variant=custom') && from.args.includes('--skip=update'));
  t.deepEqual(staged(from), staged(one), 'the same staging hooks as the one-pass build');
  const arm = fromBasePlan({ image: await loadImageDef('test-arm64.yaml'), base: '/b.tar', output: '/o', stagingTar: '/s.tar', sourceDateEpoch: 1 });
  t.is(arm.env?.QEMU_CPU, process.arch === 'arm64' ? undefined : 'max,pauth-impdef=on', 'the customize script of a foreign root runs under the cheap hash too');
});
