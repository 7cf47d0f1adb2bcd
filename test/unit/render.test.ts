import test from 'ava';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { agentUnitContext, renderImageFiles, renderNode, type RenderedFile } from '#builder/render/index.ts';
import { renderTemplate } from '#builder/render/templates.ts';
import { k3sConfig } from '#common/render/k3s.ts';
import { AuditPolicySchema, ClusterSchema } from '#common/schema/cluster.ts';
import { parse } from 'yaml';
import { instanceId, userData } from '#builder/render/cloud-init.ts';
import { NODE_PATHS, pgBinDir, pgDataDir } from '#common/render/paths.ts';
import { assertGolden } from '../helpers/golden.ts';
import { FAKE_SECRETS, fakeTls, loadFixtureCluster, loadImageDef, ROOT, tempDir } from '../helpers/fixtures.ts';

const ARCHES = [
  { arch: 'amd64', image: 'edge-amd64.yaml' },
  { arch: 'arm64', image: 'edge-arm64.yaml' },
] as const;

async function renderFor(imageFile: string): Promise<RenderedFile[]> {
  const [image, cluster] = await Promise.all([loadImageDef(imageFile), loadFixtureCluster()]);
  return renderNode({ image, cluster, node: 'node1', secrets: FAKE_SECRETS, tls: fakeTls('node1') });
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
      t.false(f.content.includes(fakeTls('node1').key.split('\n')[1]!), `${f.path} contains the node's private key`);
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

// kube-apiserver's audit flags (k8s.io/apiserver/pkg/server/options/audit.go: AuditLogOptions
// and AuditPolicyOptions.AddFlags). K3s cannot run here; the names are checked against these.
const APISERVER_AUDIT_FLAGS = ['audit-log-path', 'audit-log-maxage', 'audit-log-maxbackup', 'audit-log-maxsize', 'audit-policy-file'];

test('k3s.auditLog: kube-apiserver audit flags K3s passes on, a default policy file (0600) where they point, merged with other apiserver args; off renders nothing', async (t) => {
  const [image, cluster] = await Promise.all([loadImageDef('edge-amd64.yaml'), loadFixtureCluster()]);
  const off = renderNode({ image, cluster, node: 'node1', secrets: FAKE_SECRETS, tls: fakeTls('node1') });
  t.false(off.some((f) => f.path.includes('audit')));
  t.notRegex(off.find((f) => f.path === '/etc/rancher/k3s/config.yaml')!.content, /audit/);
  for (const arch of ['amd64', 'arm64']) {
    const img = await loadImageDef(`edge-${arch}.yaml`);
    const on = ClusterSchema.parse({ ...cluster, k3s: { ...cluster.k3s, auditLog: { enabled: true, maxAge: 7 }, extraArgs: ['--kube-apiserver-arg=request-timeout=2m'] } });
    const files = renderNode({ image: img, cluster: on, node: 'node1', secrets: FAKE_SECRETS, tls: fakeTls('node1') });
    const config = parse(files.find((f) => f.path === '/etc/rancher/k3s/config.yaml')!.content) as Record<string, unknown>;
    const args = config['kube-apiserver-arg'] as string[];
    t.deepEqual(args.slice(-1), ['request-timeout=2m'], 'extraArgs extend the list');
    const audit = args.filter((a) => a.startsWith('audit'));
    t.deepEqual(audit.map((a) => a.split('=')[0]).sort(), [...APISERVER_AUDIT_FLAGS].sort());
    t.true(audit.includes('audit-log-maxage=7'));
    t.true(audit.includes('audit-log-path=/var/lib/rancher/k3s/server/logs/audit.log'), 'on the persistent partition, under K3s data');
    const policy = files.find((f) => f.path === '/etc/rancher/k3s/audit-policy.yaml')!;
    t.true(audit.includes(`audit-policy-file=${policy.path}`));
    t.is(policy.mode, 0o600);
    const parsed = AuditPolicySchema.parse(parse(policy.content));
    t.deepEqual(parsed.rules.find((r) => r.resources?.some((x) => x.resources?.includes('secrets')))?.level, 'Metadata', 'never the body of a Secret');
    assertGolden(t, `render/edge-${arch}/audit/config.yaml`, files.find((f) => f.path === '/etc/rancher/k3s/config.yaml')!.content);
    assertGolden(t, `render/edge-${arch}/audit/audit-policy.yaml`, policy.content);
  }
  // A policy of the operator's own replaces the default, as written.
  const own = { apiVersion: 'audit.k8s.io/v1' as const, kind: 'Policy' as const, rules: [{ level: 'RequestResponse' as const, verbs: ['delete'] }, { level: 'None' as const }] };
  const custom = ClusterSchema.parse({ ...cluster, k3s: { ...cluster.k3s, auditLog: { enabled: true, policy: own } } });
  const file = renderNode({ image, cluster: custom, node: 'node1', secrets: FAKE_SECRETS, tls: fakeTls('node1') }).find((f) => f.path === '/etc/rancher/k3s/audit-policy.yaml')!;
  t.deepEqual(parse(file.content), own);
});

test('the test image (Kubernetes layer off) renders no K3s, Kine or kube-vip files', async (t) => {
  const image = await loadImageDef('test-amd64.yaml');
  const names = renderImageFiles(image).map((f) => f.path);
  t.false(names.some((n) => /k3s|kine|kube-vip/.test(n)), names.join(', '));
  t.true(names.includes('/etc/systemd/system/geminik8s-agent.service'));
});

test('boot.debugShell: only test images get the root shell on hvc0', async (t) => {
  const test = renderImageFiles(await loadImageDef('test-amd64.yaml'));
  const dropIn = test.find((f) => f.path === '/etc/systemd/system/serial-getty@hvc0.service.d/geminik8s-debug-shell.conf');
  t.truthy(dropIn);
  t.regex(dropIn!.content, /^ConditionPathExists=\/nonexistent\//m, 'no getty competes for hvc0');
  const shell = test.find((f) => f.path === '/etc/systemd/system/geminik8s-debug-shell.service');
  t.regex(shell!.content, /^TTYPath=\/dev\/hvc0$/m);
  assertGolden(t, 'render/test-amd64/debug-shell.conf', dropIn!.content);
  assertGolden(t, 'render/test-amd64/geminik8s-debug-shell.service', shell!.content);
  for (const edge of ['edge-amd64.yaml', 'edge-arm64.yaml']) {
    t.false(renderImageFiles(await loadImageDef(edge)).some((f) => f.path.includes('hvc0')), `${edge} has no debug shell`);
  }
});

test('templates are strict: a missing variable is an error, not an empty string', (t) => {
  const err = t.throws(() => renderTemplate('systemd/geminik8s-ready.service.hbs', {}));
  t.regex(err!.message, /readyScript/);
});

test('rendered user-data passes cloud-init\'s own schema, with and without SSH keys', async (t) => {
  const cluster = await loadFixtureCluster();
  const withKeys = { ...cluster, ssh: { user: 'ops', authorizedKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC0 ops@example', 'ecdsa-sha2-nistp256 AAAAE2VjZHNh ops2@example'] } };
  const variants = [...ARCHES.map((a) => a.image), 'with-keys'];
  for (const variant of variants) {
    const dir = tempDir();
    const content = variant === 'with-keys' ? userData(withKeys, 'node1') : (await renderFor(variant)).find((f) => f.path === 'user-data')!.content;
    if (variant === 'with-keys') t.regex(content, /ssh_authorized_keys:\n\s+- ssh-ed25519 /);
    const file = join(dir, 'user-data');
    writeFileSync(file, content);
    const r = await runPlan({ cmd: 'cloud-init', args: ['schema', '--config-file', file] }, { allowFailure: true });
    t.is(r.exitCode, 0, `${variant}: ${r.stdout}${r.stderr}`);
    t.regex(r.stdout, /Valid cloud-config/);
  }
});

test('cloud-init schema check is able to fail (bad key type)', async (t) => {
  const file = join(tempDir(), 'user-data');
  writeFileSync(file, '#cloud-config\nusers: 42\nssh_pwauth: [1]\n');
  const r = await runPlan({ cmd: 'cloud-init', args: ['schema', '--config-file', file] }, { allowFailure: true });
  t.not(r.exitCode, 0);
});

/** PostgreSQL majors installed on this host (Debian layout), to verify the unit against a real server binary. */
function hostPgMajors(): number[] {
  if (!existsSync('/usr/lib/postgresql')) return [];
  return readdirSync('/usr/lib/postgresql').map(Number).filter((m) => existsSync(`${pgBinDir(m)}/postgres`));
}

/** `systemd-analyze verify` of unit files in one call (so dependencies between them resolve); output lines. */
async function verifyUnits(dir: string, units: { name: string; content: string }[]): Promise<string[]> {
  for (const u of units) writeFileSync(join(dir, u.name), u.content);
  const r = await runPlan({ cmd: 'systemd-analyze', args: ['verify', '--man=no', ...units.map((u) => join(dir, u.name))], cwd: dir }, { allowFailure: true });
  return (r.stdout + r.stderr).split('\n').filter((l) => l.trim());
}

test('rendered units pass systemd-analyze verify; only units whose binaries a build host lacks skip, exactly those', async (t) => {
  // Binaries that exist only inside the node image, never on a build or CI host:
  // upstream components and our overlay scripts. PostgreSQL is checked separately below.
  const imageOnly = [NODE_PATHS.k3sBin, NODE_PATHS.kineBin, NODE_PATHS.kubeVipBin, NODE_PATHS.readyScript, NODE_PATHS.mountSeedScript, NODE_PATHS.firstbootNeededScript, NODE_PATHS.k3sImagesScript];
  for (const p of imageOnly) t.false(existsSync(p), `${p} exists on this host: the expected skips below would be wrong`);
  for (const { arch, image } of ARCHES) {
    const files = await renderFor(image);
    const major = (await loadImageDef(image)).components.postgresql.major;
    const pgBinary = `${pgBinDir(major)}/postgres`;
    const units = files.filter((f) => f.path.startsWith('/etc/systemd/system/')).map((f) => ({ name: f.path.split('/').pop()!, content: f.content }));
    const output = await verifyUnits(tempDir(), units);
    const missing = /^([\w@.-]+\.service): Command (\S+) is not executable: No such file or directory$/;
    const reported = output.filter((l) => missing.test(l)).map((l) => l.replace(missing, '$1 $2')).sort();
    t.deepEqual(output.filter((l) => !missing.test(l)), [], `${arch}: systemd-analyze reported problems`);
    const expected = [
      'geminik8s-ready.service ' + NODE_PATHS.readyScript,
      'geminik8s-grow.service ' + NODE_PATHS.growScript,
      'geminik8s-k3s-images.service ' + NODE_PATHS.k3sImagesScript,
      'k3s.service ' + NODE_PATHS.k3sBin,
      'kine.service ' + NODE_PATHS.kineBin,
      'kube-vip.service ' + NODE_PATHS.kubeVipBin,
      ...(existsSync(pgBinary) ? [] : ['geminik8s-postgresql.service ' + pgBinary]),
    ].sort();
    t.deepEqual(reported, expected, `${arch}: the units skipped for a missing binary`);
  }
});

test('the templates of units that skip above verify cleanly with their real binaries: overlay scripts and a PostgreSQL installed here', async (t) => {
  const majors = hostPgMajors();
  t.true(majors.length > 0, 'a PostgreSQL server (postgresql-NN) must be installed on the test host');
  const major = majors[0]!;
  const overlay = (p: string): string => join(ROOT, 'overlays', p);
  const units = [
    { name: 'geminik8s-ready.service', content: renderTemplate('systemd/geminik8s-ready.service.hbs', { readyScript: overlay(NODE_PATHS.readyScript) }) },
    { name: 'geminik8s-grow.service', content: renderTemplate('systemd/geminik8s-grow.service.hbs', { growScript: overlay(NODE_PATHS.growScript), persistentMount: NODE_PATHS.persistentMount }) },
    { name: 'geminik8s-k3s-images.service', content: renderTemplate('systemd/geminik8s-k3s-images.service.hbs', { k3sImagesDir: NODE_PATHS.k3sImagesDir, k3sImagesShipped: NODE_PATHS.k3sImagesShipped, k3sImagesScript: overlay(NODE_PATHS.k3sImagesScript) }) },
    { name: 'geminik8s-postgresql.service', content: renderTemplate('systemd/geminik8s-postgresql.service.hbs', { pgMajor: major, pgBinDir: pgBinDir(major), pgDataDir: pgDataDir(major) }) },
    // PostgreSQL is bound to the agent (BindsTo=), so the agent's unit is verified beside it.
    { name: 'geminik8s-agent.service', content: renderTemplate('systemd/geminik8s-agent.service.hbs', { ...agentUnitContext(), releaseVipScript: overlay(NODE_PATHS.releaseVipScript) }) },
  ];
  t.deepEqual(await verifyUnits(tempDir(), units), []);
  // And the check can fail: a misspelt key is reported.
  const bad = await verifyUnits(tempDir(), [{ name: 'geminik8s-ready.service', content: units[0]!.content.replace('Type=oneshot', 'Typ=oneshot') }]);
  t.true(bad.some((l) => /Unknown key 'Typ'/.test(l)), bad.join('\n'));
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

test('rendered network-config is accepted by cloud-init\'s own network state and renders to systemd-networkd', async (t) => {
  for (const { arch, image } of ARCHES) {
    const dir = tempDir();
    const nc = (await renderFor(image)).find((f) => f.path === 'network-config')!;
    writeFileSync(join(dir, 'network-config'), nc.content);
    // cloud-init 22.4 has no network-config schema; net-convert parses it with the code the node runs.
    const r = await runPlan({ cmd: 'cloud-init', args: ['devel', 'net-convert', '-p', join(dir, 'network-config'), '-k', 'yaml', '-D', 'debian', '-O', 'networkd', '-d', join(dir, 'out')] }, { allowFailure: true });
    t.is(r.exitCode, 0, `${arch}: ${r.stderr}`);
    const network = readFileSync(join(dir, 'out/etc/systemd/network/10-cloud-init-eth0.network'), 'utf8');
    t.regex(network, /^Address=192\.168\.10\.11\/24$/m);
    t.regex(network, /^MACAddress=52:54:00:0a:00:11$/m);
    t.regex(network, /^Destination=0\.0\.0\.0\/0$/m);
    t.regex(network, /^Gateway=192\.168\.10\.1$/m);
    t.regex(network, /^DNS=192\.168\.10\.1$/m);
  }
});

test('cloud-init net-convert is able to fail (netplan-only `to: default` route)', async (t) => {
  const dir = tempDir();
  writeFileSync(join(dir, 'nc'), 'version: 2\nethernets:\n  eth0:\n    addresses: [192.168.10.11/24]\n    routes: [{to: default, via: 192.168.10.1}]\n');
  const r = await runPlan({ cmd: 'cloud-init', args: ['devel', 'net-convert', '-p', join(dir, 'nc'), '-k', 'yaml', '-D', 'debian', '-O', 'networkd', '-d', join(dir, 'out')] }, { allowFailure: true });
  t.not(r.exitCode, 0);
});

test('K3s extraArgs become config keys: repeated flags as lists, list flags extended, bare flags true', async (t) => {
  const cluster = await loadFixtureCluster();
  const extraArgs = ['--kubelet-arg=max-pods=200', '--tls-san=k8s.example.com', '--kubelet-arg=image-gc-high-threshold=80', '--secrets-encryption', '--kube-apiserver-arg=audit-log-maxage=7', '--disable=traefik'];
  const config = k3sConfig({ ...cluster, k3s: { ...cluster.k3s, extraArgs } }, 'node1');
  t.deepEqual(config['kubelet-arg'], ['max-pods=200', 'image-gc-high-threshold=80']);
  t.is(config['kube-apiserver-arg'], 'audit-log-maxage=7');
  t.is(config['secrets-encryption'], true);
  t.deepEqual(config['tls-san'], ['192.168.10.50', '192.168.10.11', '192.168.10.12', 'k8s.example.com']);
  t.deepEqual(config.disable, ['servicelb', 'traefik']);
  t.is(config['datastore-endpoint'], 'http://127.0.0.1:2379');
  // The cluster rules reject these first (exit 2 with the path); the renderer refuses them too.
  for (const arg of ['--datastore-endpoint=postgres://x', '--cluster-init', '--token=abc']) {
    t.throws(() => k3sConfig({ ...cluster, k3s: { ...cluster.k3s, extraArgs: [arg] } }, 'node1'), { message: /is set by geminik8s/ }, arg);
  }
});

test('first boot runs in the agent, which mounts the seed medium where the agent config says the seed is', async (t) => {
  const files = await renderFor('edge-amd64.yaml');
  t.false(files.some((f) => f.path.endsWith('/geminik8s-firstboot.service')), 'no unit of its own: one Node.js start per boot');
  const agentUnit = files.find((f) => f.path.endsWith('/geminik8s-agent.service'))!;
  t.regex(agentUnit.content, new RegExp(`^ExecStart=/usr/bin/node ${NODE_PATHS.agentBundle} run --firstboot --config ${NODE_PATHS.agentConfig}$`, 'm'));
  // An unconfigured node (exit 2) is not started again in a loop.
  t.regex(agentUnit.content, /^RestartPreventExitStatus=2$/m);
  t.notRegex(agentUnit.content, /^ConditionPathExists=/m, 'the agent starts without a kept seed: it makes one');
  const agentYaml = files.find((f) => f.path === NODE_PATHS.agentConfig)!;
  const seedSource = `${NODE_PATHS.seedMount}/geminik8s/seed.yaml`;
  t.regex(agentYaml.content, new RegExp(`^seedSource: ${seedSource}$`, 'm'));
  // systemd-networkd-wait-online waits only on a node that kept a seed: not before cloud-init's
  // network stage on a first boot, where nothing needs it.
  const waitOnline = readFileSync(join(ROOT, 'overlays/usr/lib/systemd/system/systemd-networkd-wait-online.service.d/geminik8s.conf'), 'utf8');
  t.deepEqual(waitOnline.split('\n').filter((l) => l.startsWith('Condition')), [`ConditionPathExists=${NODE_PATHS.seedFile}`]);
  for (const script of [NODE_PATHS.mountSeedScript, NODE_PATHS.firstbootNeededScript]) t.is(statSync(join(ROOT, 'overlays', script)).mode & 0o111, 0o111, `${script} is executable`);
});

test("the agent unit's ExecStopPost reads the VIP from the file the agent config says the agent writes", async (t) => {
  const files = await renderFor('edge-amd64.yaml');
  const agentUnit = files.find((f) => f.path.endsWith('/geminik8s-agent.service'))!;
  const agentYaml = parse(files.find((f) => f.path === NODE_PATHS.agentConfig)!.content) as { vip: { releaseFile: string } };
  t.regex(agentUnit.content, new RegExp(`^ExecStopPost=-/bin/sh ${NODE_PATHS.releaseVipScript} ${agentYaml.vip.releaseFile} ${NODE_PATHS.agentBundle} ${NODE_PATHS.agentConfig}$`, 'm'));
  t.is(statSync(join(ROOT, 'overlays', NODE_PATHS.releaseVipScript)).mode & 0o111, 0o111, 'release-vip.sh is executable');
});

test('the instance-id is stable for one seed and changes when what cloud-init applies changes', async (t) => {
  const cluster = await loadFixtureCluster();
  const id = instanceId(cluster, 'node1');
  t.regex(id, /^geminik8s-site-a-node1-[0-9a-f]{12}$/);
  t.is(instanceId(structuredClone(cluster), 'node1'), id);
  t.not(instanceId(cluster, 'node2'), id);
  t.not(instanceId({ ...cluster, ssh: { ...cluster.ssh, authorizedKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC0 ops@example'] } }, 'node1'), id);
  t.not(instanceId({ ...cluster, network: { ...cluster.network, dns: ['192.168.10.2'] } }, 'node1'), id);
  // Failover timings are the agent's business, not cloud-init's: no new instance for them.
  t.is(instanceId({ ...cluster, failover: { ...cluster.failover, checkInterval: 500 } }, 'node1'), id);
});
