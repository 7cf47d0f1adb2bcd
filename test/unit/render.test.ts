import test from 'ava';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '../../common/exec.ts';
import { renderImageFiles, renderIpxe, renderNode, type RenderedFile } from '../../builder/src/render/index.ts';
import { renderTemplate } from '../../builder/src/render/templates.ts';
import { assertGolden } from '../helpers/golden.ts';
import { FAKE_SECRETS, loadFixtureCluster, loadImageDef, tempDir } from '../helpers/fixtures.ts';

const ARCHES = [
  { arch: 'amd64', image: 'edge-amd64.yaml' },
  { arch: 'arm64', image: 'edge-arm64.yaml' },
] as const;

async function renderFor(imageFile: string): Promise<RenderedFile[]> {
  const [image, cluster] = await Promise.all([loadImageDef(imageFile), loadFixtureCluster()]);
  return [...renderNode({ image, cluster, node: 'node1', secrets: FAKE_SECRETS }), renderIpxe(image, cluster, 'node1', 'http://pxe.example.invalid/geminik8s')];
}

function goldenName(arch: string, f: RenderedFile): string {
  return `render/${arch}/${f.scope}/${f.path.replace(/^\/+/, '')}`;
}

for (const { arch, image } of ARCHES) {
  test(`every rendered artifact matches its golden file (${arch})`, async (t) => {
    const files = await renderFor(image);
    t.true(files.length >= 15);
    for (const f of files) assertGolden(t, goldenName(arch, f), f.content);
    // The list of files and modes is itself an artifact worth pinning.
    assertGolden(t, `render/${arch}/INDEX`, files.map((f) => `${f.scope} 0${f.mode.toString(8)} ${f.path}${f.secret ? ' secret' : ''}`).join('\n') + '\n');
  });
}

test('no secret reaches an image or boot file, and secret files are 0600', async (t) => {
  for (const { image } of ARCHES) {
    const files = await renderFor(image);
    for (const f of files.filter((x) => x.scope === 'image' || x.scope === 'boot')) {
      for (const [name, value] of Object.entries(FAKE_SECRETS)) t.false(f.content.includes(value), `${f.path} contains ${name}`);
    }
    for (const f of files.filter((x) => x.secret)) t.is(f.mode, 0o600, f.path);
    const withSecret = files.filter((f) => Object.values(FAKE_SECRETS).some((s) => f.content.includes(s)));
    t.deepEqual(withSecret.filter((f) => !f.secret).map((f) => f.path), [], 'files carrying a secret must be marked secret');
  }
});

test('K3s never uses cluster-init and points at Kine on loopback; Kine points at the VIP', async (t) => {
  const files = await renderFor('edge-amd64.yaml');
  const k3s = files.find((f) => f.path === '/etc/rancher/k3s/config.yaml')!;
  t.regex(k3s.content, /^datastore-endpoint: http:\/\/127\.0\.0\.1:2379$/m);
  t.notRegex(k3s.content, /cluster-init/);
  const kine = files.find((f) => f.path.endsWith('kine.env'))!;
  t.regex(kine.content, /KINE_ENDPOINT=postgres:\/\/kine@192\.168\.10\.50:5432\/kine/);
});

test('the test image (Kubernetes layer off) renders no K3s, Kine or kube-vip files', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const names = renderImageFiles(image).map((f) => f.path);
  t.false(names.some((n) => /k3s|kine|kube-vip/.test(n)), names.join(', '));
  t.true(names.includes('/etc/systemd/system/geminik8s-agent.service'));
});

test('templates are strict: a missing variable is an error, not an empty string', (t) => {
  const err = t.throws(() => renderTemplate('systemd/geminik8s-ready.service.hbs', {}));
  t.regex(err!.message, /readyScript/);
});

test('rendered user-data passes cloud-init\'s own schema', async (t) => {
  for (const { image } of ARCHES) {
    const dir = tempDir();
    const userData = (await renderFor(image)).find((f) => f.path === 'user-data')!;
    const file = join(dir, 'user-data');
    writeFileSync(file, userData.content);
    const r = await runPlan({ cmd: 'cloud-init', args: ['schema', '--config-file', file] }, { allowFailure: true });
    t.is(r.exitCode, 0, r.stdout + r.stderr);
    t.regex(r.stdout, /Valid cloud-config/);
  }
});

test('cloud-init schema check is able to fail (bad key type)', async (t) => {
  const file = join(tempDir(), 'user-data');
  writeFileSync(file, '#cloud-config\nusers: 42\nssh_pwauth: [1]\n');
  const r = await runPlan({ cmd: 'cloud-init', args: ['schema', '--config-file', file] }, { allowFailure: true });
  t.not(r.exitCode, 0);
});

test('rendered units pass systemd-analyze verify where their binaries resolve', async (t) => {
  for (const { image } of ARCHES) {
    const dir = tempDir();
    const units = (await renderFor(image)).filter((f) => f.path.startsWith('/etc/systemd/system/'));
    const expectedUnresolved = new Set<string>();
    for (const u of units) {
      const bins = [...u.content.matchAll(/^Exec\w+=-?(\/\S+)/gm)].map((m) => m[1]!);
      if (bins.some((b) => !existsSync(b))) expectedUnresolved.add(u.path.split('/').pop()!);
    }
    mkdirSync(dir, { recursive: true });
    const names = units.map((u) => u.path.split('/').pop()!);
    for (const u of units) writeFileSync(join(dir, u.path.split('/').pop()!), u.content);
    // One call with every unit, so dependencies between our units resolve.
    const r = await runPlan({ cmd: 'systemd-analyze', args: ['verify', '--man=no', ...names.map((n) => join(dir, n))], cwd: dir }, { allowFailure: true });
    const output = (r.stdout + r.stderr).split('\n').filter((l) => l.trim());
    const unresolved = new Set<string>();
    for (const name of names) {
      const problems = output.filter((l) => l.startsWith(`${name}:`));
      const onlyMissingBinary = problems.length > 0 && problems.every((l) => /is not executable: No such file or directory/.test(l));
      if (onlyMissingBinary) unresolved.add(name);
      else t.deepEqual(problems, [], `${name}: systemd-analyze verify reported problems`);
    }
    t.deepEqual(output.filter((l) => !names.some((n) => l.startsWith(`${n}:`))), [], 'no other output from systemd-analyze');
    t.deepEqual([...unresolved].sort(), [...expectedUnresolved].sort(), 'only units whose binaries are absent on this host may skip');
    t.true(unresolved.size < units.length, 'at least one unit was fully verified');
  }
});

test('grub.cfg passes grub-script-check for both architectures', async (t) => {
  for (const { image } of ARCHES) {
    const grub = (await renderFor(image)).find((f) => f.path === '/grub/grub.cfg')!;
    const file = join(tempDir(), 'grub.cfg');
    writeFileSync(file, grub.content);
    const r = await runPlan({ cmd: 'grub-script-check', args: [file] }, { allowFailure: true });
    t.is(r.exitCode, 0, r.stderr);
  }
});
