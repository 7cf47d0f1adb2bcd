import test from 'ava';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { artifactsFor, type ReleaseArtifact } from '#builder/components/catalog.ts';
import { readLock } from '#builder/components/lock.ts';
import { runPlan } from '#common/exec.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { cli } from '#lab/cli.ts';
import { fakeUpstream, platformDigest, type FakeUpstream } from './fake-upstream.ts';
import { loadImageDef, ROOT, tempDir } from './fixtures.ts';
import { elfHeader, EM, inRoot } from './root-files.ts';

// K3s server flags the renderer may write, as K3s v1.33 defines them: pkg/cli/cmds/server.go
// (ServerFlags) and pkg/cli/cmds/agent.go (node-name, node-ip, node-label, shared by `k3s server`).
const K3S_SERVER_FLAGS = new Set([
  'datastore-endpoint', 'token-file', 'node-name', 'node-ip', 'advertise-address', 'tls-san', 'cluster-cidr', 'service-cidr',
  'cluster-domain', 'write-kubeconfig-mode', 'disable', 'kube-apiserver-arg', 'node-label',
]);

/**
 * The edge image's suite for one architecture: images/edge-<arch>.yaml, the production image with
 * the Kubernetes layer, built through the real lock, fetch and verify path. K3s, Kine and
 * kube-vip cannot be downloaded here, so a loopback stand-in for GitHub releases and for ghcr.io
 * serves files this suite generates, in upstream's formats (sha256sum-<arch>.txt; a multi-arch OCI
 * index with kube-vip at /kube-vip). The lock is made by `geminik8s lock` against it, beside a
 * copy of the image definition: the committed lock pins the real upstream sums, which the
 * generated files do not match (and must not). The asset names are written out here as upstream
 * publishes them, not taken from the catalog under test.
 */
export function edgeSuite(arch: 'amd64' | 'arm64'): void {
  const imageName = `edge-${arch}.yaml`;
  const release = (component: 'k3s' | 'kine', version: string, asset: string): string => `/k3s-io/${component}/releases/download/${version}/${asset}`;
  const k3sAsset = arch === 'amd64' ? 'k3s' : `k3s-${arch}`;
  let fake: FakeUpstream;
  let work: string;
  let out: string;
  let root: string;
  let buildSeconds = 0;

  test.before(async (t) => {
    // arm64: dpkg runs under qemu-user emulation, about 17 min when no cached base exists.
    t.timeout((arch === 'amd64' ? 30 : 60) * 60_000, 'a root build from Debian packages');
    fake = await fakeUpstream(await loadImageDef(imageName));
    work = tempDir('gk-e2e-edge-');
    const imageFile = join(work, imageName);
    copyFileSync(join(ROOT, 'images', imageName), imageFile);
    process.env.GEMINIK8S_RELEASE_BASE_URL = fake.base;
    process.env.GEMINIK8S_REGISTRY_URL = fake.base;
    const lock = await cli('lock', '--image', imageFile, '--cache-dir', join(work, 'lock-cache'));
    if (lock.code !== 0) throw new Error(`geminik8s lock failed (${lock.code}): ${lock.stderr}`);
    out = join(work, 'out');
    const started = Date.now();
    const r = await cli('build', '--image', imageFile, '--stage', 'rootfs', '--out', out);
    buildSeconds = (Date.now() - started) / 1000;
    if (r.code !== 0) throw new Error(`build failed (${r.code}): ${r.stderr.slice(-3000)}`);
    root = join(work, 'root');
    mkdirSync(root);
    await runPlan({ cmd: 'tar', args: ['--xattrs', '--xattrs-include=*', '-xf', join(out, `edge-0.1.0-${arch}.rootfs.tar`), '-C', root, '--numeric-owner'] });
  });

  test.after.always(() => {
    delete process.env.GEMINIK8S_RELEASE_BASE_URL;
    delete process.env.GEMINIK8S_REGISTRY_URL;
    fake?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test(`geminik8s lock pins every upstream file: K3s and Kine from their checksum files, kube-vip by its ${arch} manifest digest`, async (t) => {
    t.log(`edge rootfs build: ${buildSeconds.toFixed(0)} s`);
    const lock = readLock(join(work, 'components.lock.json'));
    const img = await loadImageDef(imageName);
    for (const spec of artifactsFor(img, { releases: fake.base }).filter((s): s is ReleaseArtifact => s.kind === 'release')) {
      const sums = fake.files.get(decodeURIComponent(new URL(spec.checksumUrl).pathname))!.toString();
      t.true(sums.includes(`${lock[spec.component]![spec.version]![spec.name]}  ${spec.name}`), spec.name);
    }
    t.deepEqual(lock.kubeVip, { 'v0.9.2': { [`ghcr.io/kube-vip/kube-vip@linux/${arch}`]: platformDigest(fake, 'v0.9.2', arch) } });
  });

  test('the Kubernetes layer lands where its units and K3s expect it: binaries, air-gap images in the slot, the manifest records each', (t) => {
    const bin = (p: string): Buffer => readFileSync(join(root, p));
    const served = (path: string): Buffer => fake.files.get(path)!;
    t.deepEqual(bin('usr/local/bin/k3s'), served(release('k3s', 'v1.33.4+k3s1', k3sAsset)));
    t.deepEqual(bin('usr/local/bin/kine'), served(release('kine', 'v0.13.17', `kine-${arch}`)));
    t.deepEqual(bin('usr/local/bin/kube-vip'), fake.kubeVip.get(arch), `the ${arch} image's /kube-vip`);
    for (const f of ['usr/local/bin/k3s', 'usr/local/bin/kine', 'usr/local/bin/kube-vip']) t.is(statSync(join(root, f)).mode & 0o777, 0o755, f);
    const shipped = join(root, NODE_PATHS.k3sImagesShipped, `k3s-airgap-images-${arch}.tar.zst`);
    t.deepEqual(readFileSync(shipped), served(release('k3s', 'v1.33.4+k3s1', `k3s-airgap-images-${arch}.tar.zst`)));
    t.true(existsSync(join(root, NODE_PATHS.k3sImagesScript.replace(/^\//, ''))), 'the script that binds them into K3s\'s images directory');
    const manifest = JSON.parse(readFileSync(join(root, 'usr/share/geminik8s/manifest.json'), 'utf8'));
    t.true(manifest.kubernetes);
    t.is(manifest.arch, arch);
    // The Debian side is this architecture's too (the generated release files are not ELF).
    t.is(elfHeader(inRoot(root, 'usr/bin/node')).machine, EM[arch], `usr/bin/node is an ${arch} program`);
    t.is(manifest.components[`kubeVip:ghcr.io/kube-vip/kube-vip@linux/${arch}`].sha256, platformDigest(fake, 'v0.9.2', arch));
    t.regex(manifest.components[`k3s:${k3sAsset}`].sha256, /^[0-9a-f]{64}$/);
    t.false(existsSync(join(root, NODE_PATHS.k3sImagesDir.replace(/^\//, ''), `k3s-airgap-images-${arch}.tar.zst`)), 'bound at boot onto the persistent partition, not copied there at build time');
  });

  test('units: Kine, K3s and kube-vip enabled; K3s after Kine and the air-gap images, kube-vip after K3s and for Services only', (t) => {
    const unit = (name: string): string => readFileSync(join(root, 'etc/systemd/system', name), 'utf8');
    for (const u of ['kine.service', 'k3s.service', 'kube-vip.service', 'geminik8s-agent.service']) {
      const link = join(root, 'etc/systemd/system/multi-user.target.wants', u);
      t.true(lstatSync(link, { throwIfNoEntry: false })?.isSymbolicLink() ?? false, `${u} enabled`);
      t.is(readlinkSync(link), `/etc/systemd/system/${u}`);
    }
    const k3s = unit('k3s.service');
    t.regex(k3s, /^After=.*\bkine\.service\b.*\bgeminik8s-k3s-images\.service\b/m);
    t.regex(k3s, /^Wants=.*\bgeminik8s-k3s-images\.service\b/m);
    t.regex(k3s, /^ExecStart=\/usr\/local\/bin\/k3s server --config \/etc\/rancher\/k3s\/config\.yaml$/m);
    t.regex(unit('geminik8s-k3s-images.service'), /^Before=k3s\.service$/m);
    const kine = unit('kine.service');
    t.regex(kine, /^After=.*\bgeminik8s-agent\.service\b/m);
    t.regex(kine, /^ExecStart=\/usr\/local\/bin\/kine --listen-address=127\.0\.0\.1:2379 --endpoint=\$\{KINE_ENDPOINT\}/m);
    const vip = unit('kube-vip.service');
    t.regex(vip, /^After=k3s\.service$/m);
    t.regex(vip, /^Environment=cp_enable=false$/m, 'never the control plane: the agent owns that VIP');
    t.regex(vip, /^Environment=svc_enable=true$/m);
    t.regex(vip, /^ExecStart=\/usr\/local\/bin\/kube-vip manager /m);
  });

  test('first boot in the root, from a node seed: K3s config keys are K3s flags, datastore Kine on loopback, never cluster-init; Kine points at the VIP', async (t) => {
    const dir = join(work, 'cluster');
    const init = await cli('init', '--name', 'edge', '--node1-ip', '10.77.0.11', '--node2-ip', '10.77.0.12', '--vip', '10.77.0.50', '--witness', 'none', '--config-dir', dir);
    t.is(init.code, 0, init.stderr);
    const seed = await cli('seed', '--cluster', join(dir, 'cluster.yaml'), '--node', 'node1', '--out', join(work, 'seed'));
    t.is(seed.code, 0, seed.stderr);
    // Where the initramfs leaves the seed medium mounted.
    mkdirSync(join(root, 'run/geminik8s'), { recursive: true });
    await runPlan({ cmd: 'cp', args: ['-a', join(work, 'seed'), join(root, 'run/geminik8s/config')] });
    const fb = await runPlan({ cmd: 'chroot', args: [root, '/usr/bin/node', '/usr/lib/geminik8s/agent.mjs', 'firstboot', '--config', '/etc/geminik8s/agent.yaml'] }, { allowFailure: true });
    t.is(fb.exitCode, 0, `${fb.stdout}${fb.stderr}`);
    t.regex(fb.stdout, /node node1 of cluster edge configured from its seed/);
    const configFile = join(root, 'etc/rancher/k3s/config.yaml');
    t.is(statSync(configFile).mode & 0o777, 0o600);
    const config = parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    t.deepEqual(Object.keys(config).filter((k) => !K3S_SERVER_FLAGS.has(k)), [], 'every key is a K3s server flag');
    t.is(config['datastore-endpoint'], 'http://127.0.0.1:2379');
    t.false('cluster-init' in config);
    t.is(config['node-ip'], '10.77.0.11');
    t.true((config['tls-san'] as string[]).includes('10.77.0.50'));
    const kineEnv = readFileSync(join(root, NODE_PATHS.kineEnvFile.replace(/^\//, '')), 'utf8');
    const endpoint = /^KINE_ENDPOINT=(.*)$/m.exec(kineEnv)?.[1] ?? '';
    t.regex(endpoint, /^postgres(ql)?:\/\/[^@]*@10\.77\.0\.50:5432\//, 'through the VIP, never the local standby');
    t.false(endpoint.includes('10.77.0.11') || endpoint.includes('10.77.0.12'));
    t.regex(readFileSync(join(root, NODE_PATHS.kubeVipEnvFile.replace(/^\//, '')), 'utf8'), /^vip_interface=\S+$/m);
  });
}
