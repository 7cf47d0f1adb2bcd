// npm run bench:upload -- [--mib N] [--json FILE]
// Why does `geminik8s upgrade` move a bundle into a TCG guest at about 0.7 MB/s? One guest from
// the test image (unseeded) on a private bridge, and the same N MiB (default 64) sent from the
// host side of that bridge four ways, each timed by the guest's receiver (first byte to last):
//   tcp        plain TCP, discarded
//   tcp-disk   plain TCP, written to PERSISTENT as the agent writes an uploaded bundle
//   https      Node's https server (TLS 1.3, the cipher Node picks), discarded
//   https-chacha  the same with TLS_CHACHA20_POLY1305_SHA256
// and, inside the guest, what its CPU does alone: AES-256-GCM, ChaCha20-Poly1305 and SHA-256
// over 64 MiB in Node, and the CPU flags that decide OpenSSL's code paths. Prints figures;
// asserts nothing.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { bootVm, GuestShell, READY_MARKER } from '#qemu/index.ts';
import { createGuestLan, destroyGuestLan } from '#lab/guest-lan.ts';
import { inNs } from '#lab/netns.ts';
import { testImage } from '#lab/test-image.ts';
import { arg } from './args.ts';

const mib = Math.max(1, Number.parseInt(arg('--mib', '64'), 10) || 64);
const jsonFile = arg('--json', '');
const NS = 'gk-bench-upload';
const HOST = '192.168.79.1';
const GUEST = '192.168.79.11';

/** The guest's receiver: one connection per port, timed from its first byte to its end. */
const RECEIVER = `
const fs = require('fs'), net = require('net'), https = require('https');
const tls = { key: fs.readFileSync('/root/up.key'), cert: fs.readFileSync('/root/up.crt') };
function timed(stream, sink, label, done) {
  let first, bytes = 0;
  stream.on('data', (c) => { first ??= process.hrtime.bigint(); bytes += c.length; if (sink) sink.write(c); });
  stream.on('end', () => {
    const finish = () => { const s = Number(process.hrtime.bigint() - first) / 1e9; done(JSON.stringify({ label, bytes, seconds: s, mbPerS: bytes / 1e6 / s })); };
    if (sink) sink.end(() => { fs.fsyncSync(fs.openSync('/var/lib/geminik8s/upload.bin', 'r')); finish(); }); else finish();
  });
}
net.createServer((s) => timed(s, null, 'tcp', (r) => s.end(r))).listen(9000);
// allowHalfOpen: the answer goes after the write and its fsync, once the sender has ended its side.
net.createServer({ allowHalfOpen: true }, (s) => timed(s, fs.createWriteStream('/var/lib/geminik8s/upload.bin'), 'tcp-disk', (r) => s.end(r))).listen(9001);
const h = (req, res) => timed(req, null, 'https ' + req.socket.getCipher().name, (r) => res.end(r));
https.createServer(tls, h).listen(9443);
https.createServer({ ...tls, ciphers: 'TLS_CHACHA20_POLY1305_SHA256' }, h).listen(9444);
console.log('listening');
`;

/** The host's sender, run inside the bridge's namespace: one transfer, prints the receiver's answer. */
const SENDER = `
const net = require('net'), https = require('https');
const [kind, host, port, mib] = process.argv.slice(2);
const chunk = Buffer.alloc(1024 * 1024, 7);
let left = Number(mib);
function pump(w, end) { while (left > 0) { left--; if (!w.write(chunk)) { w.once('drain', () => pump(w, end)); return; } } end(); }
if (kind === 'tcp') {
  const s = net.connect(Number(port), host, () => pump(s, () => s.end()));
  let out = ''; s.on('data', (d) => (out += d)).on('end', () => console.log(out));
} else {
  const req = https.request({ host, port: Number(port), method: 'POST', rejectUnauthorized: false, headers: { 'content-length': String(Number(mib) * 1048576) } }, (res) => {
    let out = ''; res.on('data', (d) => (out += d)).on('end', () => console.log(out));
  });
  pump(req, () => req.end());
}
`;

const CPU_BENCH = `
const c = require('crypto');
const data = Buffer.alloc(64 * 1048576, 3), key = Buffer.alloc(32, 1), iv = Buffer.alloc(12, 2);
const time = (label, fn) => { const t = process.hrtime.bigint(); fn(); const s = Number(process.hrtime.bigint() - t) / 1e9; console.log(JSON.stringify({ label, mbPerS: data.length / 1e6 / s })); };
time('aes-256-gcm', () => { const e = c.createCipheriv('aes-256-gcm', key, iv); e.update(data); e.final(); });
time('chacha20-poly1305', () => { const e = c.createCipheriv('chacha20-poly1305', key, iv, { authTagLength: 16 }); e.update(data); e.final(); });
time('sha256', () => c.createHash('sha256').update(data).digest());
`;

async function main(): Promise<void> {
  const img = await testImage('test-amd64.yaml', (m) => console.error(m));
  const work = mkdtempSync(join(tmpdir(), 'gk-bench-upload-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=upload', '-keyout', join(work, 'up.key'), '-out', join(work, 'up.crt')], { stdio: 'ignore' });
  writeFileSync(join(work, 'sender.js'), SENDER);
  const lan = await createGuestLan(NS, { ip: HOST, prefix: 24 }, ['node1']);
  const vm = await bootVm({ arch: 'amd64', firmware: 'bios', image: img.raw, format: 'raw', console: true, name: 'bench-upload', netns: lan.ns, networks: [{ kind: 'tap', ifname: lan.taps.node1!, mac: '52:54:00:79:00:11' }] });
  const results: Record<string, unknown>[] = [];
  try {
    await vm.waitFor(READY_MARKER, 20 * 60_000);
    const shell = await GuestShell.open(vm.consoleSocket!, 10 * 60_000);
    const put = (file: string, text: string) => shell.check(`echo ${Buffer.from(text).toString('base64')} | base64 -d > ${file}`);
    await put('/root/up.key', readFileSync(join(work, 'up.key'), 'utf8'));
    await put('/root/up.crt', readFileSync(join(work, 'up.crt'), 'utf8'));
    await put('/root/receiver.js', RECEIVER);
    await put('/root/cpu.js', CPU_BENCH);
    const flags = await shell.check("grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\\n' | grep -xE 'aes|pclmulqdq|avx|avx2|avx512f|vaes|vpclmulqdq|sha_ni|ssse3' | tr '\\n' ' '");
    console.log(`guest CPU flags that OpenSSL uses: ${flags.trim()}`);
    console.log(`guest vCPUs: ${(await shell.check('nproc')).trim()}`);
    for (const line of (await shell.check('node /root/cpu.js', 10 * 60_000)).trim().split('\n')) {
      const r = JSON.parse(line) as Record<string, unknown>;
      results.push({ where: 'guest cpu', ...r });
      console.log(`guest cpu  ${String(r.label).padEnd(20)} ${(r.mbPerS as number).toFixed(1)} MB/s`);
    }
    const nic = (await shell.check("ls /sys/class/net | grep -v '^lo$' | head -n1")).trim();
    await shell.check(`ip addr add ${GUEST}/24 dev ${nic} && ip link set ${nic} up && mkdir -p /var/lib/geminik8s`);
    await shell.check('(node /root/receiver.js > /root/receiver.log 2>&1 &)');
    for (let i = 0; i < 60 && !/listening/.test(await shell.check('cat /root/receiver.log')); i++) await new Promise((r) => setTimeout(r, 1000));
    for (const [kind, port, label] of [['tcp', 9000, 'tcp'], ['tcp', 9001, 'tcp-disk'], ['https', 9443, 'https'], ['https', 9444, 'https-chacha']] as const) {
      const started = performance.now();
      const r = await runPlan(inNs(lan.ns, 'node', [join(work, 'sender.js'), kind, GUEST, String(port), String(mib)]), { timeoutMs: 60 * 60_000, allowFailure: true });
      const wall = (performance.now() - started) / 1000;
      let answer: { label: string; bytes: number; seconds: number; mbPerS: number };
      try {
        answer = JSON.parse(r.stdout.trim()) as typeof answer;
      } catch {
        // A transfer the receiver did not answer: say so and go on with the others.
        console.log(`${label.padEnd(13)} no answer (exit ${r.exitCode}: ${r.stderr.trim().split('\n').at(-1) ?? ''}); the receiver's log: ${(await shell.check('tail -n 5 /root/receiver.log')).trim()}`);
        results.push({ where: 'network', kind: label, error: r.stderr.trim().split('\n').at(-1) ?? 'no answer' });
        continue;
      }
      results.push({ where: 'network', kind: label, ...answer, wallSeconds: wall });
      console.log(`${label.padEnd(13)} ${mib} MiB in ${answer.seconds.toFixed(1)} s (guest clock): ${answer.mbPerS.toFixed(2)} MB/s (${answer.label}; ${wall.toFixed(1)} s wall with the handshake)`);
    }
    shell.close();
  } finally {
    await vm.stop();
    await destroyGuestLan(lan);
  }
  if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ mib, at: new Date().toISOString(), results }, null, 2)}\n`);
}

main().catch((err: Error) => {
  console.error(err.message);
  process.exit(1);
});
