import test from 'ava';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { httpWitnessPort } from '#agent/witness/http.ts';
import { loadCluster, loadClusterTls } from '#common/config.ts';
import { spawnPlan } from '#common/exec.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

const INIT = ['init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1', '--witness', '192.168.10.9'];

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

test('witness credentials → witness serve --tls-dir: the real process answers a node over mutual TLS; without --tls-dir it refuses to start', async (t) => {
  const dir = tempDir();
  t.is((await cli(...INIT, '--config-dir', dir)).code, 0);
  const clusterFile = join(dir, 'cluster.yaml');
  const out = join(dir, 'witness-box');
  // The witness runs on loopback here: its certificate is issued for 127.0.0.1.
  const r = await cli('witness', 'credentials', '--cluster', clusterFile, '--out', out, '--host', '127.0.0.1');
  t.is(r.code, 0, r.stderr);
  t.is(statSync(out).mode & 0o777, 0o700);
  t.deepEqual(readdirSync(out).sort(), ['ca.crt', 'witness-token', 'witness.crt', 'witness.key']);
  for (const f of readdirSync(out)) t.is(statSync(join(out, f)).mode & 0o777, 0o600, f);
  t.false(r.stdout.includes(readFileSync(join(out, 'witness.key'), 'utf8').split('\n')[1]!) || r.stderr.includes(readFileSync(join(out, 'witness-token'), 'utf8').trim()));
  const again = await cli('witness', 'credentials', '--cluster', clusterFile, '--out', out);
  t.is(again.code, 5, 'an existing --out is kept without --force');

  const port = await freePort();
  const bin = join(ROOT, 'bin/geminik8s.js');
  const base = ['witness', 'serve', '--listen', `127.0.0.1:${port}`, '--token-file', join(out, 'witness-token'), '--state-dir', join(dir, 'state')];
  const plain = await cli(...base);
  t.is(plain.code, 2);
  t.regex(plain.stderr, /the witness speaks mutual TLS: pass --tls-dir DIR/);

  const lines: string[] = [];
  const p = spawnPlan({ cmd: process.execPath, args: [bin, ...base, '--tls-dir', out] }, { stdout: (l) => lines.push(l), stderr: (l) => lines.push(l) });
  t.teardown(async () => {
    p.kill('SIGKILL');
    await p.exited;
  });
  const cluster = await loadCluster(clusterFile);
  const tls = (await loadClusterTls(clusterFile, cluster, 'node1'))!;
  const token = readFileSync(join(out, 'witness-token'), 'utf8').trim();
  const witness = httpWitnessPort(`https://127.0.0.1:${port}`, token, 'site-a', 2000, tls);
  let answer;
  for (let i = 0; i < 200 && !answer; i++) {
    answer = await witness.call({ op: 'acquire', node: 'node1', generation: 0, ttlMs: 6000, bootstrap: true }).catch(() => undefined);
    if (!answer) await new Promise((res) => setTimeout(res, 100));
  }
  t.like(answer, { ok: true, code: 'granted', holder: 'node1' }, lines.join('\n'));
  t.regex(lines.join('\n'), /geminik8s witness listening \(mutual TLS\)/);
  await t.throwsAsync(witness.call({ op: 'release', node: 'node2', generation: 1 }), { message: /403/ });
});

test('witness unit: TLS files and the token as systemd credentials, --tls-dir %d; plain HTTP only when asked', async (t) => {
  const r = await cli('witness', 'unit', '--tls-dir', '/etc/geminik8s/witness');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^ExecStart=.* witness serve --listen 0\.0\.0\.0:7444 --token-file %d\/token --tls-dir %d --state-dir /m);
  for (const f of ['witness.crt', 'witness.key', 'ca.crt']) t.regex(r.stdout, new RegExp(`^LoadCredential=${f.replace('.', '\\.')}:/etc/geminik8s/witness/${f.replace('.', '\\.')}$`, 'm'));
  t.regex(r.stdout, /^LoadCredential=token:\/etc\/geminik8s\/witness\/witness-token$/m);
  const plain = await cli('witness', 'unit', '--insecure-plaintext');
  t.regex(plain.stdout, /--insecure-plaintext --state-dir/);
  t.notRegex(plain.stdout, /LoadCredential=ca\.crt/);
});
