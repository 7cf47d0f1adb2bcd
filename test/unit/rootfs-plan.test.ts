import test from 'ava';
import { runSteps, type BuildContext, type Step, type StepEvent } from '#builder/build/steps.ts';
import { mmdebstrapPlan } from '#builder/rootfs/mmdebstrap.ts';
import { rootPackages } from '#builder/rootfs/packages.ts';
import { enabledUnits } from '#builder/rootfs/steps.ts';
import { loadImageDef } from '../helpers/fixtures.ts';

test('package lists: kernel per architecture, PostgreSQL major pinned, extras added, sorted', async (t) => {
  const amd = rootPackages(await loadImageDef('edge-amd64.yaml'));
  t.true(amd.includes('linux-image-amd64'));
  t.true(amd.includes('postgresql-17'));
  t.true(amd.includes('openssh-server'));
  t.false(amd.some((p) => /^postgresql-(1[0-68]|9)/.test(p)));
  t.deepEqual(amd, [...amd].sort());
  const arm = rootPackages(await loadImageDef('edge-arm64.yaml'));
  t.true(arm.includes('linux-image-arm64'));
  t.true(arm.includes('grub-efi-arm64-bin'), 'arm64-efi GRUB modules come from the arm64 root');
});

test('the mmdebstrap plan: trixie, tar output, docs excluded, apt cache reused but not shipped', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const plan = mmdebstrapPlan({ image, output: '/out/.x.tmp', staging: '/work/staging', stagingTar: '/work/staging.tar', aptCache: '/cache/apt', sourceDateEpoch: 1700000000 });
  t.snapshot(plan);
  t.is(plan.env?.SOURCE_DATE_EPOCH, '1700000000');
  t.is(plan.env?.QEMU_CPU, undefined, 'a native root runs no emulator');
  const arm = mmdebstrapPlan({ image: await loadImageDef('test-arm64.yaml'), output: '/out/.x.tmp', staging: '/work/staging', stagingTar: '/work/staging.tar', aptCache: '/cache/apt', sourceDateEpoch: 1700000000 });
  // qemu-user's cheap pointer-authentication hash for a foreign arm64 root.
  t.is(arm.env?.QEMU_CPU, process.arch === 'arm64' ? undefined : 'max,pauth-impdef=on');
  t.deepEqual(plan.args.slice(-3), ['trixie', '/out/.x.tmp', 'http://deb.debian.org/debian']);
  t.true(plan.args.includes('--format=tar'));
  t.true(plan.args.some((a) => a.includes('path-exclude=/usr/share/doc/*')));
  const syncOut = plan.args.findIndex((a) => a.startsWith('--customize-hook=sync-out /var/cache/apt/archives'));
  const rmDebs = plan.args.findIndex((a) => a.includes('var/cache/apt/archives/*.deb'));
  t.true(syncOut >= 0 && rmDebs > syncOut, 'packages are saved to the cache before they are removed from the root');
  t.false(enabledUnits({ image }).includes('k3s.service'));
});

test('build steps run in order, skip with a reason, and are timed', async (t) => {
  const order: string[] = [];
  const steps: Step[] = [
    { name: 'one', run: async () => void order.push('one') },
    { name: 'two', skip: () => 'not needed', run: async () => void order.push('two') },
    { name: 'three', run: async () => void order.push('three') },
  ];
  const events: StepEvent[] = [];
  const timings = await runSteps(steps, {} as BuildContext, (e) => events.push(e));
  t.deepEqual(order, ['one', 'three']);
  t.deepEqual(timings.map((x) => x.status), ['done', 'skipped', 'done']);
  t.deepEqual(events.map((e) => `${e.step}:${e.status}`), ['one:start', 'one:done', 'two:skipped', 'three:start', 'three:done']);
  const failing: Step[] = [{ name: 'boom', run: async () => { throw new Error('broke\nsecond line'); } }];
  const seen: StepEvent[] = [];
  await t.throwsAsync(runSteps(failing, {} as BuildContext, (e) => seen.push(e)), { message: /broke/ });
  t.like(seen.at(-1), { step: 'boom', status: 'failed', reason: 'broke' });
});
