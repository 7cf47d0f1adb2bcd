import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadCluster, loadSecrets } from '#common/config.ts';
import { runPlan } from '#common/exec.ts';
import { tlsMaterialProblem } from '#common/tls.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

const BASE = ['init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1'];

test('init writes a commented cluster.yaml that validates, and 0600 secrets in a 0700 directory', async (t) => {
  const dir = tempDir();
  const r = await cli(...BASE, '--dns', '192.168.10.1', '--config-dir', dir);
  t.is(r.code, 0, r.stderr);
  const text = readFileSync(join(dir, 'cluster.yaml'), 'utf8');
  t.regex(text, /^# .*geminik8s validate/m);
  t.regex(text, /# Virtual IP of the control plane/);
  const cluster = await loadCluster(join(dir, 'cluster.yaml'));
  t.is(cluster.network.vip, '192.168.10.50');
  t.deepEqual(cluster.network.dns, ['192.168.10.1']);
  t.is(statSync(join(dir, 'secrets')).mode & 0o777, 0o700);
  const files = readdirSync(join(dir, 'secrets')).filter((f) => f !== 'tls').sort();
  t.deepEqual(files, ['admin-token', 'agent-token', 'k3s-token', 'postgres-password', 'read-token', 'replication-password', 'witness-token']);
  for (const f of files) t.is(statSync(join(dir, 'secrets', f)).mode & 0o777, 0o600, f);
  // The cluster CA and a certificate per party; no witness certificate without a lease witness.
  t.is(statSync(join(dir, 'secrets/tls')).mode & 0o777, 0o700);
  const tls = readdirSync(join(dir, 'secrets/tls')).sort();
  t.deepEqual(tls, ['ca.crt', 'ca.key', 'node1.crt', 'node1.key', 'node2.crt', 'node2.key']);
  for (const f of tls) t.is(statSync(join(dir, 'secrets/tls', f)).mode & 0o777, 0o600, f);
  const ca = readFileSync(join(dir, 'secrets/tls/ca.crt'), 'utf8');
  for (const [node, ip] of [['node1', '192.168.10.11'], ['node2', '192.168.10.12']] as const) {
    const material = { ca, cert: readFileSync(join(dir, `secrets/tls/${node}.crt`), 'utf8'), key: readFileSync(join(dir, `secrets/tls/${node}.key`), 'utf8') };
    t.is(tlsMaterialProblem(material, { cluster: 'site-a', name: node, host: ip }, new Date()), undefined, node);
    t.is(tlsMaterialProblem(material, { cluster: 'site-a', name: node, host: '127.0.0.1' }), undefined, `${node} covers loopback`);
    t.is(tlsMaterialProblem(material, { cluster: 'site-a', name: node, host: '192.168.10.50' }), undefined, `${node} covers the VIP`);
    t.false(r.stderr.includes(material.key), 'a key was printed');
  }
  // openssl agrees that the CA issued them.
  const verify = await runPlan({ cmd: 'openssl', args: ['verify', '-CAfile', join(dir, 'secrets/tls/ca.crt'), '-purpose', 'sslclient', join(dir, 'secrets/tls/node1.crt'), join(dir, 'secrets/tls/node2.crt')] });
  t.regex(verify.stdout, /node1\.crt: OK\n.*node2\.crt: OK/);
  const secrets = await loadSecrets(join(dir, 'secrets'));
  t.is(new Set(Object.values(secrets)).size, 7);
  for (const s of Object.values(secrets)) {
    t.true(s.length >= 32);
    t.false(r.stdout.includes(s) || r.stderr.includes(s), 'a secret was printed');
  }
});

test('init without --witness writes witness none (manual failover) and explains both choices in the comment', async (t) => {
  const dir = tempDir();
  const r = await cli(...BASE, '--config-dir', dir);
  t.is(r.code, 0, r.stderr);
  const text = readFileSync(join(dir, 'cluster.yaml'), 'utf8');
  t.regex(text, /^witness:\n {2}type: none\n/m);
  t.deepEqual((await loadCluster(join(dir, 'cluster.yaml'))).witness, { type: 'none' });
  const comment = /((?:^#.*\n)+)^witness:/m.exec(text)?.[1] ?? '';
  t.regex(comment, /type: lease.*url: https:\/\/HOST:7444/);
  t.regex(comment, /geminik8s witness credentials/);
  t.regex(comment, /third box/);
  t.regex(comment, /geminik8s witness serve/);
  t.regex(comment, /automatic failover/);
  t.regex(comment, /type: none +\(the default\) manual failover only/);
  t.regex(comment, /geminik8s failover/);
  t.regex(text, /record at the witness that nobody may be promoted, then drop to async/);
  t.regex(text, /by its own deadline: fenceAfter after it sent the last renewal/);
  t.regex(text, /lease expire promoteAfter after granting it/);
  t.regex(text, /fenceAfter \+ checkInterval < promoteAfter/);
  t.notRegex(text, /type: gateway|default (failover )?witness/i, 'the gateway is no longer offered as the witness');
});

for (const [flag, url] of [['10.0.0.9', 'https://10.0.0.9:7444'], ['10.0.0.9:8000', 'https://10.0.0.9:8000'], ['witness.example.org', 'https://witness.example.org:7444'], ['https://10.0.0.9:9443', 'https://10.0.0.9:9443']] as const) {
  test(`init --witness ${flag} writes the lease witness at ${url}`, async (t) => {
    const dir = tempDir();
    const r = await cli(...BASE, '--witness', flag, '--config-dir', dir);
    t.is(r.code, 0, r.stderr);
    t.regex(readFileSync(join(dir, 'cluster.yaml'), 'utf8'), new RegExp(`^witness:\\n {2}type: lease\\n {2}url: ${url.replace(/\./g, '\\.')}\\n`, 'm'));
    t.deepEqual((await loadCluster(join(dir, 'cluster.yaml'))).witness, { type: 'lease', url });
  });
}

test('init --witness none is accepted; a probe witness or a witness on a node is refused, naming --witness (exit 2)', async (t) => {
  const dir = tempDir();
  const none = await cli(...BASE, '--witness', 'none', '--config-dir', dir);
  t.is(none.code, 0, none.stderr);
  t.deepEqual((await loadCluster(join(dir, 'cluster.yaml'))).witness, { type: 'none' });
  for (const spec of ['gateway', 'tcp://10.0.0.9:7444']) {
    const r = await cli(...BASE, '--witness', spec, '--dry-run');
    t.is(r.code, 2, spec);
    t.regex(r.stderr, /--witness: witness\.type: the (gateway|tcp) witness is refused: a reachability probe cannot tell a dead leader from one cut off from its peer/, spec);
  }
  for (const spec of ['192.168.10.11', '192.168.10.12:7444', 'http://192.168.10.50:7444']) {
    const r = await cli(...BASE, '--witness', spec, '--dry-run');
    t.is(r.code, 2, spec);
    t.regex(r.stderr, /--witness: witness\.url: the witness must run on a third box/, spec);
  }
  const port = await cli(...BASE, '--witness', '10.0.0.9:70000', '--dry-run');
  t.is(port.code, 2);
  t.regex(port.stderr, /--witness: witness: not a witness.*port must be 1-65535/);
});

test('init refuses to overwrite without --force (exit 5) and keeps secrets with --force', async (t) => {
  const dir = tempDir();
  t.is((await cli(...BASE, '--config-dir', dir)).code, 0);
  const before = readFileSync(join(dir, 'secrets', 'k3s-token'), 'utf8');
  const again = await cli(...BASE, '--name', 'site-b', '--config-dir', dir);
  t.is(again.code, 5);
  t.regex(again.stderr, /cluster\.yaml already exists; pass --force/);
  t.regex(readFileSync(join(dir, 'cluster.yaml'), 'utf8'), /name: site-a/);
  t.is((await cli(...BASE, '--name', 'site-b', '--force', '--config-dir', dir)).code, 0);
  t.regex(readFileSync(join(dir, 'cluster.yaml'), 'utf8'), /name: site-b/);
  t.is(readFileSync(join(dir, 'secrets', 'k3s-token'), 'utf8'), before, 'secrets are kept by --force');
  t.is((await cli(...BASE, '--force', '--rotate-secrets', '--config-dir', dir)).code, 0);
  t.not(readFileSync(join(dir, 'secrets', 'k3s-token'), 'utf8'), before, '--rotate-secrets replaces them');
});

test('init --dry-run validates and prints, writes nothing', async (t) => {
  const dir = join(tempDir(), 'new');
  const r = await cli(...BASE, '--dry-run', '--config-dir', dir);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /kind: Cluster/);
  t.false(existsSync(dir));
});

test('init reports every bad flag at once, naming the flag (exit 2), and writes nothing', async (t) => {
  const dir = join(tempDir(), 'new');
  const r = await cli('init', '--name', 'Bad_Name', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.11', '--vip', '10.0.0.1', '--gateway', '192.168.10.1', '--prefix', 'x', '--witness', 'ftp://w', '--config-dir', dir);
  t.is(r.code, 2);
  t.regex(r.stderr, /--name: name: must be a DNS label/);
  t.regex(r.stderr, /--prefix: network\.prefix: not a whole number/);
  t.regex(r.stderr, /--witness: witness: not a witness/);
  t.false(existsSync(dir));
});

test('init --template supplies defaults that flags override; template errors carry line:col', async (t) => {
  const dir = tempDir();
  const template = join(dir, 'template.yaml');
  writeFileSync(template, 'network:\n  interface: enp1s0\n  prefix: 24\npostgresql:\n  syncPolicy: strict\n');
  const r = await cli(...BASE, '--template', template, '--interface', 'eno1', '--config-dir', dir);
  t.is(r.code, 0, r.stderr);
  const cluster = await loadCluster(join(dir, 'cluster.yaml'));
  t.is(cluster.network.interface, 'eno1');
  t.is(cluster.postgresql.syncPolicy, 'strict');
  writeFileSync(template, 'postgresql:\n  syncPolicy: sometimes\n');
  const bad = await cli(...BASE, '--template', template, '--dry-run');
  t.is(bad.code, 2);
  t.regex(bad.stderr, new RegExp(`${template}:2:15: postgresql\\.syncPolicy`));
});

test('init --interactive without a terminal refuses cleanly (exit 2)', async (t) => {
  const r = await runPlan({ cmd: 'node', args: [join(ROOT, 'bin/geminik8s.js'), 'init', '--interactive', '--config-dir', tempDir()], input: '' }, { allowFailure: true });
  t.is(r.exitCode, 2);
  t.regex(r.stderr, /--interactive needs a terminal/);
});

/**
 * Run `cmd` on a pseudo-terminal (`script`), typing the next answer each time the output ends
 * with a prompt (": "). Typed ahead instead, a loaded machine lost them: they reached the
 * terminal before the CLI had set it up, which discards pending input.
 */
function onTerminal(cmd: string, answers: string[], timeoutMs: number): Promise<{ exitCode: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let answeredAt = 0;
    const left = [...answers];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const output = (d: Buffer): void => {
      stdout += d.toString();
      // readline follows its prompt with cursor movements: look at the text without them.
      const text = stdout.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
      if (text.endsWith(': ') && text.length > answeredAt && left.length) {
        answeredAt = text.length;
        child.stdin.write(`${left.shift()}\n`);
        if (!left.length) child.stdin.end();
      }
    };
    child.stdout.on('data', output);
    child.stderr.on('data', output);
    child.on('close', (exitCode) => {
      clearTimeout(timer);
      resolve({ exitCode, stdout });
    });
  });
}

test('init --interactive on a terminal asks for each missing value', async (t) => {
  const answers = ['site-x', '192.168.20.11', '192.168.20.12', '192.168.20.50', '', '192.168.20.1', '', '192.168.20.9'];
  const r = await onTerminal(`node ${join(ROOT, 'bin/geminik8s.js')} init --interactive --dry-run`, answers, 180_000);
  t.is(r.exitCode, 0, r.stdout);
  t.regex(r.stdout, /IP of node1/);
  t.regex(r.stdout, /name: site-x/);
  t.regex(r.stdout, /vip: 192\.168\.20\.50/);
  t.regex(r.stdout, /gateway: 192\.168\.20\.1\b/);
  t.regex(r.stdout, /Witness HOST\[:PORT\]/);
  t.regex(r.stdout, /url: https:\/\/192\.168\.20\.9:7444/);
});

test('init --witness HOST issues the witness certificate for HOST; --rotate-certs reissues every certificate from the kept CA; --force alone keeps them', async (t) => {
  const dir = tempDir();
  t.is((await cli(...BASE, '--witness', '192.168.10.9', '--config-dir', dir)).code, 0);
  const read = (f: string): string => readFileSync(join(dir, 'secrets/tls', f), 'utf8');
  const ca = read('ca.crt');
  t.is(tlsMaterialProblem({ ca, cert: read('witness.crt'), key: read('witness.key') }, { cluster: 'site-a', name: 'witness', host: '192.168.10.9' }), undefined);
  const before = { ca, caKey: read('ca.key'), node1: read('node1.crt'), witness: read('witness.crt') };
  t.is((await cli(...BASE, '--witness', '192.168.10.9', '--config-dir', dir, '--force')).code, 0);
  t.deepEqual({ ca: read('ca.crt'), caKey: read('ca.key'), node1: read('node1.crt'), witness: read('witness.crt') }, before, '--force keeps valid certificates');
  const refused = await cli(...BASE, '--witness', '192.168.10.9', '--config-dir', tempDir(), '--rotate-certs');
  t.is(refused.code, 2);
  t.regex(refused.stderr, /--rotate-certs changes the credentials of a running cluster; it needs --force too/);
  t.is((await cli(...BASE, '--witness', '192.168.10.9', '--config-dir', dir, '--force', '--rotate-certs')).code, 0);
  t.is(read('ca.crt'), before.ca, 'the CA is kept, so old and new certificates verify alike during the rollout');
  t.not(read('node1.crt'), before.node1);
  t.not(read('witness.crt'), before.witness);
  t.is(tlsMaterialProblem({ ca, cert: read('node1.crt'), key: read('node1.key') }, { cluster: 'site-a', name: 'node1', host: '192.168.10.11' }), undefined);
  // A node that moves gets a certificate for its new address on the next init --force.
  t.is((await cli(...BASE.map((a) => (a === '192.168.10.11' ? '192.168.10.21' : a)), '--witness', '192.168.10.9', '--config-dir', dir, '--force')).code, 0);
  t.is(tlsMaterialProblem({ ca, cert: read('node1.crt'), key: read('node1.key') }, { cluster: 'site-a', name: 'node1', host: '192.168.10.21' }), undefined);
});

test('init --insecure-plaintext: no CA, no certificates, a plain http witness, and a warning', async (t) => {
  const dir = tempDir();
  const r = await cli(...BASE, '--witness', '192.168.10.9', '--insecure-plaintext', '--config-dir', dir);
  t.is(r.code, 0, r.stderr);
  const cluster = await loadCluster(join(dir, 'cluster.yaml'));
  t.true(cluster.agent.insecurePlaintext);
  t.deepEqual(cluster.witness, { type: 'lease', url: 'http://192.168.10.9:7444' });
  t.false(existsSync(join(dir, 'secrets/tls')));
  t.regex(r.stderr, /insecurePlaintext: no TLS; bearer tokens cross the network in the clear/);
});
