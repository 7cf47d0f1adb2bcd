import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { runPlan } from '#common/exec.ts';
import { ClusterSchema } from '#common/schema/cluster.ts';
import { cli } from '#lab/cli.ts';
import { fakeTls, ROOT, tempDir } from '../helpers/fixtures.ts';

const CLUSTER = `apiVersion: geminik8s.io/v1alpha1
kind: Cluster
name: site-a
network:
  prefix: 24
  gateway: 192.168.10.1
  vip: 192.168.10.50
nodes:
  - name: node1
    ip: 192.168.10.11
  - name: node2
    ip: 192.168.10.12
`;

const IMAGE = `apiVersion: geminik8s.io/v1alpha1
kind: Image
name: edge
version: 1.0.0
arch: amd64
components:
  k3s: { version: v1.33.4+k3s1 }
  kine: { version: v0.13.17 }
  kubeVip: { version: v0.9.2 }
  postgresql: { major: 17 }
`;

const SEED = `apiVersion: geminik8s.io/v1alpha1
kind: NodeSeed
node: node1
cluster:
  name: site-a
  network: { prefix: 24, gateway: 192.168.10.1, vip: 192.168.10.50 }
  nodes:
    - { name: node1, ip: 192.168.10.11 }
    - { name: node2, ip: 192.168.10.12 }
secrets:
  k3sToken: k3s-token-0123456789abcdef
  postgresPassword: postgres-password-0123456789
  replicationPassword: replication-password-0123456789
  agentToken: agent-token-0123456789abcdef
  witnessToken: witness-token-0123456789abcdef
  readToken: read-token-0123456789abcdef
  adminToken: admin-token-0123456789abcdef
${stringify({ tls: fakeTls('node1') })}`;

/** Replace the first occurrence of `from` with `to` (the mutation under test). */
const edit = (base: string, from: string, to: string): string => {
  if (!base.includes(from)) throw new Error(`fixture lacks ${from}`);
  return base.replace(from, to);
};

const PROBE_REFUSED = /witness is refused: a reachability probe cannot tell a dead leader from one cut off from its peer.*two writable primaries.*acknowledged writes are lost/;

interface Case {
  title: string;
  text: string;
  /** Each expected problem: `line:col path` plus a fragment of the message. */
  expect: { at: string; path: string; message: RegExp }[];
}

const CASES: Case[] = [
  { title: 'cluster name not a DNS label', text: edit(CLUSTER, 'name: site-a', 'name: Site_A'), expect: [{ at: '3:7', path: 'name', message: /DNS label/ }] },
  { title: 'node IPs equal', text: edit(CLUSTER, 'ip: 192.168.10.12', 'ip: 192.168.10.11'), expect: [{ at: '12:9', path: 'nodes.1.ip', message: /node IPs must differ/ }] },
  { title: 'node names equal', text: edit(CLUSTER, 'name: node2', 'name: node1'), expect: [{ at: '11:11', path: 'nodes.1.name', message: /names must differ/ }] },
  { title: 'VIP outside the subnet', text: edit(CLUSTER, 'vip: 192.168.10.50', 'vip: 10.1.2.3'), expect: [{ at: '7:8', path: 'network.vip', message: /in the nodes' subnet/ }] },
  { title: 'VIP equal to a node', text: edit(CLUSTER, 'vip: 192.168.10.50', 'vip: 192.168.10.12'), expect: [{ at: '7:8', path: 'network.vip', message: /differ from both node IPs/ }] },
  { title: 'gateway equal to the VIP', text: edit(CLUSTER, 'gateway: 192.168.10.1', 'gateway: 192.168.10.50'), expect: [{ at: '6:12', path: 'network.gateway', message: /differ from the node IPs and the VIP/ }] },
  { title: 'nodes in different subnets', text: edit(CLUSTER, 'ip: 192.168.10.12', 'ip: 192.168.11.12'), expect: [{ at: '12:9', path: 'nodes.1.ip', message: /one \/24 subnet/ }] },
  { title: 'node on the broadcast address', text: edit(CLUSTER, 'ip: 192.168.10.12', 'ip: 192.168.10.255'), expect: [{ at: '12:9', path: 'nodes.1.ip', message: /broadcast/ }] },
  { title: 'not an IPv4 address', text: edit(CLUSTER, 'ip: 192.168.10.12', 'ip: 192.168.10.300'), expect: [{ at: '12:9', path: 'nodes.1.ip', message: /IPv4/ }] },
  { title: 'three nodes', text: `${CLUSTER}  - name: node3\n    ip: 192.168.10.13\n`, expect: [{ at: '9:3', path: 'nodes', message: /exactly two nodes/ }] },
  { title: 'fenceAfter not before promoteAfter', text: `${CLUSTER}failover:\n  fenceAfter: 6s\n  promoteAfter: 6s\n  degradeAfter: 6s\n`, expect: [{ at: '14:15', path: 'failover.fenceAfter', message: /strictly before the follower may promote/ }] },
  { title: 'duration without unit', text: `${CLUSTER}failover:\n  fenceAfter: 4 seconds\n`, expect: [{ at: '14:15', path: 'failover.fenceAfter', message: /duration/ }] },
  { title: 'unknown field', text: `${CLUSTER}failovr:\n  fenceAfter: 4s\n`, expect: [{ at: '14:3', path: 'failovr', message: /unknown field/ }] },
  { title: 'bad sync policy', text: `${CLUSTER}postgresql:\n  syncPolicy: async\n`, expect: [{ at: '14:15', path: 'postgresql.syncPolicy', message: /not allowed/ }] },
  { title: 'YAML 1.1 boolean where a string belongs', text: edit(CLUSTER, 'gateway: 192.168.10.1', 'gateway: no'), expect: [{ at: '6:12', path: 'network.gateway', message: /YAML 1\.1.*quote it/ }] },
  { title: 'YAML 1.1 `on` as a node name', text: edit(CLUSTER, 'name: node2', 'name: on'), expect: [{ at: '11:11', path: 'nodes.1.name', message: /YAML 1\.1/ }] },
  { title: 'YAML 1.1 sexagesimal number as a MAC', text: edit(CLUSTER, '    ip: 192.168.10.12', '    ip: 192.168.10.12\n    mac: 52:54:00:12:34:56'), expect: [{ at: '13:10', path: 'nodes.1.mac', message: /wrong type/ }] },
  { title: 'duplicate key', text: edit(CLUSTER, 'name: site-a', 'name: site-a\nname: site-b'), expect: [{ at: '4:1', path: '', message: /YAML syntax.*unique/i }] },
  { title: 'YAML syntax error', text: edit(CLUSTER, 'nodes:', 'nodes: [unclosed'), expect: [{ at: '8:9', path: '', message: /YAML syntax/ }] },
  { title: 'bootstrapLeader unknown', text: `${CLUSTER}bootstrapLeader: node3\n`, expect: [{ at: '13:18', path: 'bootstrapLeader', message: /one of the two nodes/ }] },
  // Reachability probes are refused as witnesses whatever the sync policy (design decision 3).
  ...(['degrade', 'strict'] as const).flatMap((policy) => [
    { title: `gateway (ICMP) witness refused, syncPolicy ${policy}`, text: `${CLUSTER}witness:\n  type: gateway\npostgresql:\n  syncPolicy: ${policy}\n`, expect: [{ at: '14:9', path: 'witness.type', message: PROBE_REFUSED }] },
    { title: `tcp witness refused, syncPolicy ${policy}`, text: `${CLUSTER}witness:\n  type: tcp\n  host: 192.168.10.9\n  port: 7444\npostgresql:\n  syncPolicy: ${policy}\n`, expect: [{ at: '14:9', path: 'witness.type', message: PROBE_REFUSED }] },
    { title: `http witness refused, syncPolicy ${policy}`, text: `${CLUSTER}witness:\n  type: http\n  url: http://192.168.10.9/healthz\npostgresql:\n  syncPolicy: ${policy}\n`, expect: [{ at: '14:9', path: 'witness.type', message: PROBE_REFUSED }] },
  ]),
  { title: 'agent.tls of an older cluster.yaml', text: `${CLUSTER}agent:\n  tls: false\n`, expect: [{ at: '14:8', path: 'agent.tls', message: /agent\.tls is gone: .*mutual TLS .*geminik8s init --force/ }] },
  { title: 'lease witness over plain http', text: `${CLUSTER}witness:\n  type: lease\n  url: http://192.168.10.9:7444\n`, expect: [{ at: '15:8', path: 'witness.url', message: /must be https:\/\/ \(plain HTTP only with agent\.insecurePlaintext/ }] },
  { title: 'seed: no TLS material', text: SEED.replace(/^tls:[\s\S]*$/m, ''), expect: [{ at: '1:1', path: 'tls', message: /the node needs its TLS material/ }] },
  { title: 'seed: TLS material of the other node', text: SEED.replace('node: node1', 'node: node2'), expect: [{ at: '32:9', path: 'tls.cert', message: /names node1 of cluster site-a, not node2/ }] },
  { title: 'lease witness on a node', text: `${CLUSTER}witness:\n  type: lease\n  url: https://192.168.10.12:7444\n`, expect: [{ at: '15:8', path: 'witness.url', message: /third box.*node node2's IP/ }] },
  { title: 'lease witness behind the VIP', text: `${CLUSTER}witness:\n  type: lease\n  url: https://192.168.10.50:7444/\n`, expect: [{ at: '15:8', path: 'witness.url', message: /third box.*the VIP/ }] },
  { title: 'lease witness on loopback', text: `${CLUSTER}witness:\n  type: lease\n  url: https://127.0.0.1:7444\n`, expect: [{ at: '15:8', path: 'witness.url', message: /third box.*loopback/ }] },
  { title: 'seed: probe witness inside the seed', text: edit(SEED, '  nodes:\n', '  witness: { type: gateway }\n  nodes:\n'), expect: [{ at: '7:20', path: 'cluster.witness.type', message: PROBE_REFUSED }] },
  { title: 'cluster CIDR overlaps the node subnet', text: `${CLUSTER}k3s:\n  clusterCidr: 192.168.0.0/16\n`, expect: [{ at: '14:16', path: 'k3s.clusterCidr', message: /overlaps the nodes' subnet/ }] },
  { title: 'K3s extra arg that geminik8s owns', text: `${CLUSTER}k3s:\n  extraArgs: [--kubelet-arg=max-pods=200, --cluster-init]\n`, expect: [{ at: '14:43', path: 'k3s.extraArgs.1', message: /--cluster-init is set by geminik8s: geminik8s never runs embedded etcd/ }] },
  { title: 'K3s audit flag beside k3s.auditLog', text: `${CLUSTER}k3s:\n  auditLog: { enabled: true }\n  extraArgs: [--kube-apiserver-arg=audit-log-maxage=3]\n`, expect: [{ at: '15:15', path: 'k3s.extraArgs.0', message: /kube-apiserver's audit-log-maxage is set by k3s\.auditLog/ }] },
  { title: 'audit policy rule with an unknown level', text: `${CLUSTER}k3s:\n  auditLog:\n    enabled: true\n    policy:\n      apiVersion: audit.k8s.io/v1\n      kind: Policy\n      rules:\n        - level: Everything\n`, expect: [{ at: '20:18', path: 'k3s.auditLog.policy.rules.0.level', message: /not allowed|expected one of/ }] },
  { title: 'audit policy without rules', text: `${CLUSTER}k3s:\n  auditLog:\n    enabled: true\n    maxAge: 0\n    policy: { apiVersion: audit.k8s.io/v1, kind: Policy, rules: [] }\n`, expect: [{ at: '16:13', path: 'k3s.auditLog.maxAge', message: /.*/ }, { at: '17:65', path: 'k3s.auditLog.policy.rules', message: /at least one rule/ }] },
  { title: 'wrong apiVersion', text: edit(CLUSTER, 'geminik8s.io/v1alpha1', 'geminik8s.io/v9'), expect: [{ at: '1:13', path: 'apiVersion', message: /.*/ }] },
  { title: 'unknown kind', text: edit(CLUSTER, 'kind: Cluster', 'kind: Clustr'), expect: [{ at: '2:7', path: 'kind', message: /cannot tell what kind/ }] },
  { title: 'image: an erofs slot with a squashfs codec', text: `${IMAGE}rootfs:\n  type: erofs\n  compression: zstd\n`, expect: [{ at: '13:16', path: 'rootfs.compression', message: /erofs slot is compressed with lz4hc or lz4/ }] },
  { title: 'image: a squashfs slot with an erofs codec', text: `${IMAGE}rootfs:\n  compression: lz4hc\n`, expect: [{ at: '12:16', path: 'rootfs.compression', message: /lz4hc is an erofs codec/ }] },
  { title: 'image: squashfs block size out of the list', text: `${IMAGE}rootfs:\n  blockSize: 2M\n`, expect: [{ at: '12:14', path: 'rootfs.blockSize', message: /.*/ }] },
  { title: 'image: a debug shell on an image with the Kubernetes layer', text: `${IMAGE}boot:\n  debugShell: true\n`, expect: [{ at: '12:15', path: 'boot.debugShell', message: /offline test images only/ }] },
  { title: 'image: arm64 with BIOS boot', text: `${edit(IMAGE, 'arch: amd64', 'arch: arm64')}boot:\n  modes: [bios, uefi]\n`, expect: [{ at: '12:10', path: 'boot.modes', message: /no BIOS/ }] },
  { title: 'image: Kubernetes on without K3s', text: edit(IMAGE, '  k3s: { version: v1.33.4+k3s1 }\n', ''), expect: [{ at: '7:3', path: 'components.k3s', message: /components.k3s is required/ }] },
  { title: 'image: bad version tag', text: edit(IMAGE, 'v0.13.17', '0.13'), expect: [{ at: '8:20', path: 'components.kine.version', message: /wrong type/ }] },
  { title: 'image: tag without v', text: edit(IMAGE, 'v0.13.17', '"0.13.17"'), expect: [{ at: '8:20', path: 'components.kine.version', message: /release tag/ }] },
  { title: 'image: unknown arch', text: edit(IMAGE, 'arch: amd64', 'arch: riscv64'), expect: [{ at: '5:7', path: 'arch', message: /not allowed/ }] },
  { title: 'image: partition too small', text: `${IMAGE}partitions:\n  root: 100MiB\n`, expect: [{ at: '12:9', path: 'partitions.root', message: /too small/ }] },
  { title: 'image: size without unit', text: `${IMAGE}partitions:\n  root: 2G\n`, expect: [{ at: '12:9', path: 'partitions.root', message: /size such as/ }] },
  { title: 'image: PostgreSQL major out of range', text: edit(IMAGE, 'major: 17', 'major: 9'), expect: [{ at: '10:24', path: 'components.postgresql.major', message: /.*/ }] },
  { title: 'image: kernel arg owned by the bootloader', text: `${IMAGE}boot:\n  kernelArgs: [root=/dev/sda2]\n`, expect: [{ at: '12:16', path: 'boot.kernelArgs.0', message: /set by the bootloader/ }] },
  { title: 'seed: node not in the cluster', text: edit(SEED, 'node: node1', 'node: node9'), expect: [{ at: '3:7', path: 'node', message: /one of the cluster nodes/ }] },
  { title: 'seed: short secret', text: edit(SEED, 'agentToken: agent-token-0123456789abcdef', 'agentToken: short'), expect: [{ at: '14:15', path: 'secrets.agentToken', message: /at least 16/ }] },
  { title: 'seed: cluster rule inside the seed', text: edit(SEED, 'vip: 192.168.10.50', 'vip: 192.168.10.11'), expect: [{ at: '6:54', path: 'cluster.network.vip', message: /differ from both node IPs/ }] },
];

for (const c of CASES) {
  test(`invalid: ${c.title}`, async (t) => {
    const file = join(tempDir(), 'input.yaml');
    writeFileSync(file, c.text);
    const r = await cli('validate', '--output', 'json', file);
    t.is(r.code, 2, r.stderr);
    const report = JSON.parse(r.stdout) as { valid: boolean; issues: { line?: number; col?: number; path: string; message: string; file: string }[] };
    t.false(report.valid);
    for (const e of c.expect) {
      const hit = report.issues.find((i) => i.path === e.path && e.message.test(i.message));
      t.truthy(hit, `no issue at ${e.path} matching ${e.message}; got ${JSON.stringify(report.issues, null, 1)}`);
      if (hit) {
        t.is(`${hit.line}:${hit.col}`, e.at, `${e.path}: location`);
        t.is(hit.file, file);
      }
    }
  });
}

test('all problems of several files are reported at once, in text form with file:line:col', async (t) => {
  const dir = tempDir();
  const a = join(dir, 'a.yaml');
  const b = join(dir, 'b.yaml');
  writeFileSync(a, edit(edit(CLUSTER, 'name: site-a', 'name: Site_A'), 'vip: 192.168.10.50', 'vip: 10.1.2.3'));
  writeFileSync(b, edit(IMAGE, 'arch: amd64', 'arch: sparc'));
  const r = await cli('validate', a, b);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`${a}:3:7: name: must be a DNS label`));
  t.regex(r.stderr, new RegExp(`${a}:7:8: network.vip: the VIP must be in the nodes' subnet \\(found 10.1.2.3; expected an address in 192.168.10.0/24\\)`));
  t.regex(r.stderr, new RegExp(`${b}:5:7: arch: value not allowed`));
  t.regex(r.stderr, /3 problems in 2 file\(s\)/);
});

test('valid files pass, and the shipped examples are valid', async (t) => {
  const dir = tempDir();
  for (const [name, text] of [['c.yaml', CLUSTER], ['i.yaml', IMAGE], ['s.yaml', SEED]] as const) writeFileSync(join(dir, name), text);
  const r = await cli('validate', join(dir, 'c.yaml'), join(dir, 'i.yaml'), join(dir, 's.yaml'), join(ROOT, 'images/edge-amd64.yaml'), join(ROOT, 'images/edge-arm64.yaml'), join(ROOT, 'images/test-amd64.yaml'), join(ROOT, 'test/fixtures/cluster.yaml'));
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /c\.yaml: ok \(Cluster\)/);
  t.regex(r.stdout, /s\.yaml: ok \(NodeSeed\)/);
});

test('witness: the default is none (manual failover), a lease witness on a third box is valid, a probe is refused with what to use instead', async (t) => {
  t.deepEqual(ClusterSchema.parse(parse(CLUSTER, { version: '1.1' })).witness, { type: 'none' });
  const dir = tempDir();
  const lease = join(dir, 'lease.yaml');
  writeFileSync(lease, `${CLUSTER}witness:\n  type: lease\n  url: https://192.168.10.9:7444\n`);
  const ok = await cli('validate', lease);
  t.is(ok.code, 0, ok.stderr);
  const probe = join(dir, 'probe.yaml');
  writeFileSync(probe, `${CLUSTER}witness:\n  type: gateway\n`);
  const r = await cli('validate', probe);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`${probe}:14:9: witness\\.type: the gateway witness is refused: a reachability probe cannot tell a dead leader from one cut off from its peer`));
  t.regex(r.stderr, /\(found gateway; expected lease \(a geminik8s witness on a third box; init: --witness HOST\[:PORT\], port 7444 by default\) or none \(manual failover\)\)/);
  t.notRegex(r.stderr, /invalid union|invalid input/i, 'the probe types still parse, so the reason is given instead');
});

test('a missing file exits 2 naming it', async (t) => {
  const r = await cli('validate', '/nonexistent/cluster.yaml');
  t.is(r.code, 2);
  t.regex(r.stderr, /cannot read \/nonexistent\/cluster.yaml: no such file/);
});

test('the installed binary exits 2 on invalid input (real process, both names)', async (t) => {
  const file = join(tempDir(), 'bad.yaml');
  writeFileSync(file, edit(CLUSTER, 'name: site-a', 'name: -bad'));
  for (const bin of ['geminik8s', 'gemin_k8s']) {
    const r = await runPlan({ cmd: 'node', args: [join(ROOT, 'bin/geminik8s.js'), 'validate', file], env: { NO_COLOR: '1' } }, { allowFailure: true });
    t.is(r.exitCode, 2, `${bin}: ${r.stderr}`);
    t.regex(r.stderr, /bad\.yaml:3:7: name:/);
  }
  const pkg = JSON.parse((await import('node:fs')).readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  t.deepEqual(Object.keys(pkg.bin).sort(), ['gemin_k8s', 'geminik8s']);
});
