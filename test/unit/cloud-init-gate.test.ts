import test from 'ava';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { metaData, userData } from '#builder/render/cloud-init.ts';
import { loadFixtureCluster, ROOT, tempDir } from '../helpers/fixtures.ts';

// overlays/usr/lib/geminik8s/cloud-init-gate.sh, the script the initramfs runs before systemd's
// generators: cloud-init runs only for a seed whose instance it has not applied yet. Run for
// real on directories standing in for the root's /etc, /var/lib/cloud and the mounted media,
// with busybox sh as in the initramfs when the host has it.
const SCRIPT = join(ROOT, 'overlays/usr/lib/geminik8s/cloud-init-gate.sh');
const SHELL = existsSync('/bin/busybox') ? ['/bin/busybox', 'sh'] : ['sh'];

interface Layout { etc: string; cloud: string; media: string[] }

function layout(): Layout {
  const dir = tempDir('gk-gate-');
  const etc = join(dir, 'etc');
  const cloud = join(dir, 'var/lib/cloud');
  mkdirSync(etc, { recursive: true });
  mkdirSync(cloud, { recursive: true });
  return { etc, cloud, media: [] };
}

/** A seed medium as `geminik8s seed` writes it for node1 of the test cluster. */
async function seededMedium(l: Layout, extra: Record<string, string> = {}): Promise<string> {
  const spec = await loadFixtureCluster();
  const m = join(l.etc, `../medium-${l.media.length}`);
  mkdirSync(join(m, 'geminik8s'), { recursive: true });
  writeFileSync(join(m, 'meta-data'), metaData(spec, 'node1'));
  writeFileSync(join(m, 'user-data'), userData(spec, 'node1'));
  for (const [k, v] of Object.entries(extra)) writeFileSync(join(m, k), v);
  l.media.push(m);
  return m;
}

async function gate(l: Layout): Promise<{ out: string; disabled: boolean }> {
  const r = await runPlan({ cmd: SHELL[0]!, args: [...SHELL.slice(1), SCRIPT, l.etc, l.cloud, ...l.media] });
  return { out: r.stdout.trim(), disabled: existsSync(join(l.etc, 'cloud/cloud-init.disabled')) };
}

const iidOf = (medium: string): string => /^instance-id: (\S+)$/m.exec(readFileSync(join(medium, 'meta-data'), 'utf8'))![1]!;
const finish = (l: Layout, iid: string): void => {
  mkdirSync(join(l.cloud, 'instances', iid), { recursive: true });
  writeFileSync(join(l.cloud, 'instances', iid, 'boot-finished'), '1 - v. 25.1\n');
};

test('no seed medium: cloud-init stays off', async (t) => {
  const r = await gate(layout());
  t.true(r.disabled);
  t.regex(r.out, /cloud-init skip: no seed medium/);
});

test('an unseeded CONFIG partition (README only) does not count as a NoCloud source', async (t) => {
  const l = layout();
  const m = join(l.etc, '../config');
  mkdirSync(m);
  writeFileSync(join(m, 'README.txt'), 'write the seed here\n');
  l.media.push(m);
  t.true((await gate(l)).disabled);
});

test('a seed not applied yet runs cloud-init; once applied it stays off; a changed seed runs it again', async (t) => {
  const l = layout();
  const m = await seededMedium(l);
  const first = await gate(l);
  t.false(first.disabled, first.out);
  t.regex(first.out, /run: instance geminik8s-\S+ is not applied yet/);

  finish(l, iidOf(m));
  const again = await gate(l);
  t.true(again.disabled, again.out);
  t.regex(readFileSync(join(l.etc, 'cloud/cloud-init.disabled'), 'utf8'), /^geminik8s: skip: instance \S+ is already applied/);

  // A re-seed with a new instance-id (changed users, keys or addressing).
  writeFileSync(join(m, 'meta-data'), 'instance-id: "geminik8s-test-node1-0123456789ab"\nlocal-hostname: node1\n');
  const changed = await gate(l);
  t.false(changed.disabled, changed.out);
  t.regex(changed.out, /geminik8s-test-node1-0123456789ab is not applied yet/);
});

test('the first medium with NoCloud data decides; an empty one before it is passed over', async (t) => {
  const l = layout();
  const empty = join(l.etc, '../empty');
  mkdirSync(empty);
  l.media.push(empty);
  await seededMedium(l);
  t.false((await gate(l)).disabled);
});

test('NoCloud data without a readable instance-id: cloud-init runs (when in doubt, run)', async (t) => {
  const l = layout();
  const m = await seededMedium(l);
  writeFileSync(join(m, 'meta-data'), '{}\n');
  const r = await gate(l);
  t.false(r.disabled);
  t.regex(r.out, /without a readable instance-id/);
  writeFileSync(join(m, 'meta-data'), 'instance-id: ../../etc\n');
  t.false((await gate(l)).disabled, 'a path-like id is not looked up');
});

test('a cloud-init.disabled written by someone else is left alone', async (t) => {
  const l = layout();
  await seededMedium(l);
  mkdirSync(join(l.etc, 'cloud'));
  writeFileSync(join(l.etc, 'cloud/cloud-init.disabled'), '');
  const r = await gate(l);
  t.true(r.disabled);
  t.regex(r.out, /written by someone else/);
});
