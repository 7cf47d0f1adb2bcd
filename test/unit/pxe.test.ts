import test from 'ava';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { renderDnsmasqConfig } from '#builder/pxe/dnsmasq.ts';
import { bootScript, chainScript, normalizeMac, PXE_FILES, ruleArgs, sha256Listed } from '#builder/pxe/server.ts';
import { cli } from '#lab/cli.ts';
import { freePort, MAC1, MAC2, pxeSite, startPxeServe } from '../helpers/pxe.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

/** A cluster from init with disk rules added to node1, and a served directory of generated files. */
const site = () => pxeSite({ serial: 'SMALL-1', model: 'QEMU HARDDISK', maxSize: '40GiB' });

test('boot scripts: the chain by MAC, the installer with its rules and URLs, the disk once installed, a refusal for a stranger', (t) => {
  t.is(normalizeMac('52-54-00-AA-00-11'), MAC1);
  t.is(normalizeMac('52:54:00:aa:00:11'), MAC1);
  t.is(normalizeMac('5254.00aa.0011'), MAC1);
  t.is(normalizeMac('52:54:00:aa:00'), undefined);
  t.is(normalizeMac('zz:54:00:aa:00:11'), undefined);
  t.regex(chainScript('http://10.0.0.1:8080'), /^#!ipxe\n.*\nchain http:\/\/10\.0\.0\.1:8080\/boot\?mac=\$\{net0\/mac\} \|\| goto failed$/m);
  t.deepEqual(ruleArgs({ model: 'QEMU HARDDISK', minSize: '16GiB' }), ['"geminik8s.install.model=QEMU HARDDISK"', 'geminik8s.install.min_size=16GiB']);
  const o = { baseUrl: 'http://10.0.0.1:8080', cmdline: 'console=ttyS0,115200 panic=10', rootfsType: 'squashfs' };
  const node = { name: 'node1', mac: MAC1, seed: [], disk: { serial: 'SMALL-1' } };
  const install = bootScript(o, MAC1, node, undefined);
  t.is(install.kind, 'boot-install');
  t.regex(install.script, /^kernel http:\/\/10\.0\.0\.1:8080\/files\/vmlinuz initrd=initrd\.img boot=geminik8s-live geminik8s\.live=http:\/\/10\.0\.0\.1:8080\/files\/root\.squashfs rootfstype=squashfs ro geminik8s\.install\.image_url=http:\/\/10\.0\.0\.1:8080\/files\/image\.raw\.zst geminik8s\.install\.seed_url=http:\/\/10\.0\.0\.1:8080\/seed\/52-54-00-aa-00-11 geminik8s\.install\.report_url=http:\/\/10\.0\.0\.1:8080\/progress\/52-54-00-aa-00-11 geminik8s\.install\.serial=SMALL-1 console=ttyS0,115200 panic=10$/m);
  t.regex(install.script, /^initrd --name initrd\.img http:\/\/10\.0\.0\.1:8080\/files\/initrd\.img$/m);
  const sum = 'ab'.repeat(32);
  t.regex(bootScript({ ...o, rootSha256: sum }, MAC1, node, undefined).script, new RegExp(`root\\.squashfs geminik8s\\.live\\.sha256=${sum} rootfstype`));
  t.is(sha256Listed(`${'cd'.repeat(32)}  vmlinuz\n${sum}  root.squashfs\n`, 'root.squashfs'), sum);
  t.is(sha256Listed(`${sum} *root.squashfs.old\n`, 'root.squashfs'), undefined);
  const disk = bootScript(o, MAC1, node, { node: 'node1', installed: '2026-12-02T15:00:00.000Z' });
  t.is(disk.kind, 'boot-disk');
  t.notRegex(disk.script, /kernel/);
  const stranger = bootScript(o, MAC2, undefined, undefined);
  t.is(stranger.kind, 'refused');
  t.regex(stranger.script, /52:54:00:aa:00:12 is not a node of this cluster.*nothing is installed/);
  t.regex(stranger.script, /^exit 1$/m);
});

test('cluster.yaml: a node\'s install.disk rules are checked with their path', async (t) => {
  const { clusterFile } = await site();
  const doc = parseDocument(readFileSync(clusterFile, 'utf8'));
  doc.setIn(['nodes', 1, 'install'], { disk: { minSize: '2T', maxSize: '1T', type: 'tape' } });
  writeFileSync(clusterFile, doc.toString());
  const r = await cli('validate', clusterFile);
  t.is(r.code, 2);
  t.regex(r.stderr, /cluster\.yaml:\d+:\d+: nodes\.1\.install\.disk\.type:/);
  doc.setIn(['nodes', 1, 'install'], { disk: { minSize: '2T', maxSize: '1T' } });
  writeFileSync(clusterFile, doc.toString());
  const crossed = await cli('validate', clusterFile);
  t.is(crossed.code, 2);
  t.regex(crossed.stderr, /nodes\.1\.install\.disk\.minSize: minSize is larger than maxSize/);
});

test('pxe serve: per-MAC installer, seed only to its MAC and never after the install, progress kept across a restart, refusals logged', async (t) => {
  const { clusterFile, served } = await site();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const start = async () => {
    const s = await startPxeServe(served, clusterFile, port);
    t.teardown(s.stop);
    return { lines: () => s.events().map((e) => JSON.stringify(e)), err: s.stderr, stop: s.stop };
  };
  const s1 = await start();
  t.regex(s1.err.join('\n'), /node2 has no install\.disk rules/);
  const get = (path: string) => fetch(`${base}${path}`);
  t.regex(await (await get('/boot.ipxe')).text(), /chain http:\/\/127\.0\.0\.1:\d+\/boot\?mac=\$\{net0\/mac\}/);

  const install = await (await get(`/boot?mac=${MAC1}`)).text();
  t.regex(install, /^kernel .*\/files\/vmlinuz .*geminik8s\.install\.seed_url=http:\/\/127\.0\.0\.1:\d+\/seed\/52-54-00-aa-00-11 .*geminik8s\.install\.serial=SMALL-1 "geminik8s\.install\.model=QEMU HARDDISK" geminik8s\.install\.max_size=40GiB console=tty0/m);
  const refused = await (await get('/boot?mac=52:54:00:ff:ff:ff')).text();
  t.regex(refused, /not a node of this cluster/);
  t.is((await get('/boot?mac=nonsense')).status, 400);

  const seed = (await (await get('/seed/52-54-00-aa-00-11')).json()) as { node: string; disk: Record<string, string>; files: { path: string; mode: number; content: string }[] };
  t.is(seed.node, 'node1');
  t.deepEqual(seed.disk, { serial: 'SMALL-1', model: 'QEMU HARDDISK', maxSize: '40GiB' });
  t.true(seed.files.some((f) => f.path === 'meta-data' && /node1/.test(f.content)));
  t.true(seed.files.some((f) => /seed\.yaml$/.test(f.path)), seed.files.map((f) => f.path).join(' '));
  t.is((await get('/seed/52-54-00-ff-ff-ff')).status, 404);

  const kernel = await get('/files/vmlinuz');
  t.deepEqual(Buffer.from(await kernel.arrayBuffer()), readFileSync(join(served, 'vmlinuz')));
  const part = await fetch(`${base}/files/image.raw.zst`, { headers: { range: 'bytes=10-19' } });
  t.is(part.status, 206);
  t.is((await part.arrayBuffer()).byteLength, 10);
  t.is((await get('/files/..%2Fcluster.yaml')).status, 404);
  t.is((await get('/files/pxe-state.json')).status, 404);

  const report = (mac: string, stage: string, detail?: string) => fetch(`${base}/progress/${mac}`, { method: 'POST', body: JSON.stringify({ stage, detail }) });
  t.is((await report('52-54-00-aa-00-11', 'disk-chosen', '/dev/sda (serial SMALL-1)')).status, 204);
  t.is((await report('52-54-00-aa-00-11', 'written')).status, 204);
  t.is((await report('52-54-00-aa-00-11', 'formatting')).status, 400);
  t.is((await report('52-54-00-ff-ff-ff', 'written')).status, 404);
  const mid = (await (await get('/status')).json()) as Record<string, { stage: string; installed?: string }>;
  t.is(mid[MAC1]?.stage, 'written');
  t.is(mid[MAC1]?.installed, undefined);
  // Still installing: a reboot now (a power cut) boots the installer again.
  t.regex(await (await get(`/boot?mac=${MAC1}`)).text(), /^kernel /m);
  t.is((await report('52-54-00-aa-00-11', 'rebooting')).status, 204);
  t.regex(await (await get(`/boot?mac=${MAC1}`)).text(), /installed at .*; booting from its disk\nexit\n/);
  t.is((await get('/seed/52-54-00-aa-00-11')).status, 410);

  const events = s1.lines().map((l) => JSON.parse(l) as { kind: string; mac: string; stage?: string; node?: string; detail?: string });
  t.deepEqual(events.filter((e) => e.mac === MAC1).map((e) => e.stage ?? e.kind), ['boot-install', 'seed', 'disk-chosen', 'written', 'boot-install', 'rebooting', 'boot-disk', 'refused']);
  t.true(events.some((e) => e.kind === 'refused' && e.mac === '52:54:00:ff:ff:ff' && /unknown MAC/.test(e.detail ?? '')));
  t.false(s1.lines().join('\n').includes(seed.files.find((f) => /seed\.yaml$/.test(f.path))!.content.split('\n').find((l) => /token|password/i.test(l)) ?? '\u0000'), 'no secret in the event stream');
  s1.stop();

  // The state survives a restart: node1 boots from disk, node2 still gets its installer.
  const stateFile = join(served, 'pxe-state.json');
  t.is(statSync(stateFile).mode & 0o777, 0o600);
  const s2 = await start();
  t.regex(await (await get(`/boot?mac=${MAC1}`)).text(), /booting from its disk/);
  t.regex(await (await get(`/boot?mac=${MAC2}`)).text(), /^kernel /m);
  s2.stop();
  t.deepEqual(readdirSync(served).filter((f) => f.includes('.tmp')), []);
});

test('pxe serve refuses a directory without its files, naming them', async (t) => {
  const { clusterFile, served } = await site();
  const { rmSync } = await import('node:fs');
  rmSync(join(served, 'root.squashfs'));
  const r = await cli('pxe', 'serve', '--dir', served, '--cluster', clusterFile, '--image', join(ROOT, 'images/test-amd64.yaml'));
  t.is(r.code, 2);
  t.regex(r.stderr, /--dir .*: missing root\.squashfs/);
  writeFileSync(join(served, 'root.squashfs'), 'slot');
  const noImage = await cli('pxe', 'serve', '--dir', served, '--cluster', clusterFile);
  t.is(noImage.code, 2);
  t.regex(noImage.stderr, /has no pxe\.json: pass --image FILE/);
  writeFileSync(join(served, 'pxe.json'), '{"image": "test"}');
  const badMeta = await cli('pxe', 'serve', '--dir', served, '--cluster', clusterFile);
  t.is(badMeta.code, 2);
  t.regex(badMeta.stderr, /pxe\.json: expected "cmdline" and "rootfsType"/);
  const noIf = await cli('pxe', 'serve', '--dir', served, '--cluster', clusterFile, '--image', join(ROOT, 'images/test-amd64.yaml'), '--dnsmasq-config', join(served, 'd.conf'));
  t.is(noIf.code, 2);
  t.regex(noIf.stderr, /--dnsmasq-config needs --interface and --network/);
});

// CI installs dnsmasq-base (scripts/install-host-deps.sh), so there it always runs.
const withDnsmasq = process.env.CI || ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq'].some((f) => existsSync(f)) ? test : test.skip;

withDnsmasq('the dnsmasq configuration passes dnsmasq --test; a broken one is refused and nothing is left under its name', async (t) => {
  const dir = tempDir('gk-pxe-');
  const text = renderDnsmasqConfig({ iface: 'eth1', network: '10.7.0.0', tftpRoot: '/usr/lib/ipxe', baseUrl: 'http://10.7.0.1:8080' });
  t.regex(text, /^dhcp-range=10\.7\.0\.0,proxy$/m);
  t.regex(text, /^pxe-service=tag:!ipxe,x86PC,"geminik8s: chainload iPXE",undionly\.kpxe$/m);
  t.regex(text, /^dhcp-boot=tag:ipxe,http:\/\/10\.7\.0\.1:8080\/boot\.ipxe$/m);
  const file = join(dir, 'good.conf');
  writeFileSync(file, text);
  const { runPlan } = await import('#common/exec.ts');
  const good = await runPlan({ cmd: 'dnsmasq', args: ['--test', `--conf-file=${file}`] }, { allowFailure: true });
  t.is(good.exitCode, 0, good.stderr);
  // Through the CLI: a network that is not an address makes dnsmasq --test fail.
  const { clusterFile, served } = await site();
  const out = join(dir, 'pxe.conf');
  const port = await freePort();
  const bad = await cli('pxe', 'serve', '--dir', served, '--cluster', clusterFile, '--image', join(ROOT, 'images/test-amd64.yaml'), '--listen', `127.0.0.1:${port}`, '--dnsmasq-config', out, '--interface', 'eth1', '--network', 'not-a-network');
  t.is(bad.code, 4, bad.stderr);
  t.regex(bad.stderr, /dnsmasq --test rejected the configuration/);
  t.false(existsSync(out));
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('pxe.conf')), []);
});
