import test from 'ava';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

// The real .ci/run, in a tree of its own where `npm` and QEMU are stand-ins: `npm run e2e --
// SUITE` records when the suite started and ended, sleeps, and fails when told to. What is
// under test is the script's own scheduling: what runs beside what, and what the deadline skips.

const SUITES = ['failover', 'rootfs', 'edge', 'edge-arm64', 'rootless', 'rootfs-arm64', 'boot', 'cluster', 'upgrade', 'demo', 'pxe', 'iso', 'rootfs-docker'];

const FAKE_NPM = `#!/usr/bin/env bash
# npm ci, npm run typecheck, npm test: nothing to do.
[ "$1 $2" = "run e2e" ] || exit 0
suite=$4
echo "start $suite $(date +%s%N)" >> "$FAKE_EVENTS"
echo "running $suite"
var=FAKE_SLEEP_\${suite//-/_}
sleep "\${!var:-\${FAKE_SLEEP:-0.3}}"
echo "end $suite $(date +%s%N)" >> "$FAKE_EVENTS"
# The lane's job itself killed (as by the OOM killer): the shell that runs the suite's pipeline.
if [ "$FAKE_KILL_JOB" = "$suite" ]; then kill -9 "$(ps -o ppid= -p "$PPID" | tr -d ' ')"; fi
case " $FAKE_FAIL " in *" $suite "*) echo "  ✘ $suite: a test failed"; exit 1 ;; esac
exit 0
`;

interface Run { code: number; out: string; spans: Map<string, { start: number; end: number }> }

async function ciRun(env: Record<string, string>): Promise<Run> {
  const dir = tempDir('gk-ci-run-');
  const main = join(dir, 'main');
  for (const d of ['.ci', 'scripts', 'bin']) mkdirSync(join(main, d), { recursive: true });
  for (const s of SUITES) mkdirSync(join(main, 'test/e2e', s), { recursive: true });
  copyFileSync(join(ROOT, '.ci/run'), join(main, '.ci/run'));
  writeFileSync(join(main, 'scripts/install-host-deps.sh'), 'echo host packages: stand-in\n');
  writeFileSync(join(main, 'bin/npm'), FAKE_NPM);
  writeFileSync(join(main, 'bin/qemu-system-x86_64'), '#!/bin/sh\necho "QEMU emulator version 0.0 (stand-in)"\n');
  for (const b of ['npm', 'qemu-system-x86_64']) chmodSync(join(main, 'bin', b), 0o755);
  const events = join(dir, 'events');
  writeFileSync(events, '');
  // The run's own settings only: a CI run of the suite must not hand its selection down.
  const unset = ['GEMINIK8S_CI_E2E_SUITES', 'GEMINIK8S_CI_DEADLINE_SECONDS', 'GEMINIK8S_CI_BESIDE_FAILOVER', 'GEMINIK8S_CI_BESIDE_BOOT', 'GEMINIK8S_CI_LANES'].filter((v) => !(v in env)).flatMap((v) => ['-u', v]);
  const r = await runPlan(
    // TMPDIR: the script's own mktemp files go with the test's directory.
    { cmd: 'env', args: [...unset, 'bash', join(main, '.ci/run')], env: { PATH: `${join(main, 'bin')}:${process.env.PATH}`, TMPDIR: dir, FAKE_EVENTS: events, FAKE_FAIL: '', FAKE_KILL_JOB: '', ...env } },
    { allowFailure: true, timeoutMs: 60_000 },
  );
  const spans = new Map<string, { start: number; end: number }>();
  for (const line of readFileSync(events, 'utf8').split('\n').filter(Boolean)) {
    const [what, suite, ns] = line.split(' ');
    const span = spans.get(suite!) ?? { start: NaN, end: NaN };
    span[what as 'start' | 'end'] = Number(BigInt(ns!) / 1_000_000n);
    spans.set(suite!, span);
  }
  return { code: r.exitCode, out: `${r.stdout}${r.stderr}`, spans };
}

const overlaps = (a: { start: number; end: number }, b: { start: number; end: number }) => a.start < b.end && b.start < a.end;

test('rootfs runs alone first; three build suites run beside failover, rootfs-docker beside boot; every other suite runs alone', async (t) => {
  // failover and boot the longest of their phases: their lanes fit beside them, also while the
  // file's other tests load the machine.
  const r = await ciRun({ FAKE_SLEEP_failover: '4', FAKE_SLEEP_boot: '2' });
  t.is(r.code, 0, r.out);
  t.deepEqual([...r.spans.keys()].sort(), [...SUITES].sort(), 'every suite ran');
  const span = (s: string) => r.spans.get(s)!;
  for (const s of SUITES.filter((x) => x !== 'rootfs')) t.true(span('rootfs').end <= span(s).start, `${s} after rootfs`);
  const builds = ['edge', 'edge-arm64', 'rootless'];
  for (const s of builds) t.true(overlaps(span('failover'), span(s)), `${s} beside failover`);
  for (const a of builds) for (const b of builds) if (a < b) t.false(overlaps(span(a), span(b)), `${a} and ${b} one after the other`);
  t.true(overlaps(span('boot'), span('rootfs-docker')), 'rootfs-docker beside boot');
  for (const o of SUITES.filter((x) => x !== 'boot' && x !== 'rootfs-docker')) {
    t.false(overlaps(span('boot'), span(o)), `boot not beside ${o}`);
    t.false(overlaps(span('rootfs-docker'), span(o)), `rootfs-docker not beside ${o}`);
  }
  const alone = ['rootfs-arm64', 'cluster', 'upgrade', 'demo', 'pxe', 'iso'];
  for (const s of alone) {
    for (const o of SUITES.filter((x) => x !== s)) t.false(overlaps(span(s), span(o)), `${s} alone, not beside ${o}`);
  }
  t.true(span('rootfs-arm64').end <= span('boot').start && span('boot').end <= span('cluster').start, 'boot\'s phase in its place: after rootfs-arm64, before cluster');
  t.regex(r.out, /slow tier \(with edge edge-arm64 rootless beside it\): failover/);
  t.regex(r.out, /slow tier \(beside failover\): edge-arm64/);
  t.regex(r.out, /slow tier \(with rootfs-docker beside it\): boot/);
  t.regex(r.out, /slow tier \(beside boot\): rootfs-docker passed/);
  t.regex(r.out, /\[edge-arm64\] running edge-arm64/);
  t.regex(r.out, /\[ci \+\d+s\] done/);
});

test('GEMINIK8S_CI_BESIDE_FAILOVER="" and GEMINIK8S_CI_BESIDE_BOOT="" run every suite one after another', async (t) => {
  const r = await ciRun({ GEMINIK8S_CI_BESIDE_FAILOVER: '', GEMINIK8S_CI_BESIDE_BOOT: '', FAKE_SLEEP: '0.1' });
  t.is(r.code, 0, r.out);
  const all = [...r.spans.entries()];
  for (const [a, sa] of all) for (const [b, sb] of all) if (a < b) t.false(overlaps(sa, sb), `${a} and ${b}`);
});

test('boot not selected: rootfs-docker, its lane, still runs, alone, after the others', async (t) => {
  const r = await ciRun({ GEMINIK8S_CI_E2E_SUITES: 'rootfs rootfs-docker cluster', FAKE_SLEEP: '0.1' });
  t.is(r.code, 0, r.out);
  t.deepEqual([...r.spans.keys()], ['rootfs', 'cluster', 'rootfs-docker']);
  t.regex(r.out, /slow tier: rootfs-docker passed/);
  t.notRegex(r.out, /beside boot/);
});

for (const [suite, lane] of [['rootless', 'beside failover'], ['failover', 'its own lane'], ['rootfs-docker', 'beside boot'], ['boot', 'its own lane']] as const) {
  test(`${suite} failing (${lane}) fails the run, after every other suite has run, and its failed tests are printed again at the end`, async (t) => {
    const r = await ciRun({ FAKE_FAIL: suite, FAKE_SLEEP: '0.1', FAKE_SLEEP_failover: '0.5' });
    t.is(r.code, 1);
    t.is(r.spans.size, SUITES.length, 'the other suites still ran');
    t.regex(r.out, new RegExp(`slow tier: FAILED: ${suite}`));
    t.regex(r.out, new RegExp(`\\[ci\\] ${suite} FAILED; its failed tests[^\\n]*\\n\\[${suite}\\] +✘ ${suite}: a test failed`));
  });
}

for (const host of ['failover', 'boot']) {
  test(`${host}'s job killed mid-run counts as a failure, not as a pass`, async (t) => {
    const r = await ciRun({ FAKE_KILL_JOB: host, FAKE_SLEEP: '0.1', FAKE_SLEEP_failover: '0.5', FAKE_SLEEP_boot: '0.5' });
    t.is(r.code, 1, r.out);
    t.regex(r.out, new RegExp(`slow tier: ${host}'s job ended early \\(status 137\\)`));
    t.regex(r.out, new RegExp(`slow tier: FAILED: ${host}`));
    t.is(r.spans.size, SUITES.length, 'the other suites still ran');
  });
}

test('a lane naming rootfs, failover or boot, a suite in both lanes, or the old GEMINIK8S_CI_LANES, is refused before any set-up (exit 2)', async (t) => {
  for (const [env, message] of [
    [{ GEMINIK8S_CI_BESIDE_FAILOVER: 'edge rootfs' }, /GEMINIK8S_CI_BESIDE_FAILOVER lists rootfs/],
    [{ GEMINIK8S_CI_BESIDE_FAILOVER: 'failover' }, /GEMINIK8S_CI_BESIDE_FAILOVER lists failover/],
    [{ GEMINIK8S_CI_BESIDE_FAILOVER: 'boot' }, /GEMINIK8S_CI_BESIDE_FAILOVER lists boot/],
    [{ GEMINIK8S_CI_BESIDE_BOOT: 'failover' }, /GEMINIK8S_CI_BESIDE_BOOT lists failover/],
    [{ GEMINIK8S_CI_BESIDE_BOOT: 'rootless' }, /rootless is beside both failover and boot/],
    [{ GEMINIK8S_CI_LANES: '2' }, /GEMINIK8S_CI_LANES is gone/],
  ] as const) {
    const r = await ciRun(env);
    t.is(r.code, 2, r.out);
    t.regex(r.out, message);
    t.notRegex(r.out, /host packages: stand-in/, 'no set-up ran');
    t.is(r.spans.size, 0);
  }
});

test('a suite whose budget would pass the deadline is skipped by name, with the command that runs it', async (t) => {
  // 650 s: rootfs (500) fits, failover (900) and boot (700) do not.
  const r = await ciRun({ GEMINIK8S_CI_DEADLINE_SECONDS: '650', FAKE_SLEEP: '0.1' });
  t.is(r.code, 0, r.out);
  t.true(r.spans.has('rootfs'));
  t.false(r.spans.has('failover'));
  t.true(r.spans.has('edge'), 'a build suite runs without failover beside it');
  t.false(r.spans.has('boot'), 'boot (700) does not fit either');
  t.true(r.spans.has('rootfs-docker'), 'boot\'s lane runs alone');
  t.regex(r.out, /slow tier: edge\n/, 'and says so');
  t.notRegex(r.out, /beside (failover|boot)/);
  t.regex(r.out, /SKIPPED failover: \d+s used, it may take 900s, past the 650s deadline \(run: npm run e2e -- failover\)/);
  t.regex(r.out, /slow tier: skipped for time: [^\n]*failover/);
});
