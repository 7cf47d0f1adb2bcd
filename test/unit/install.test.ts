import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { installCommand, machinePorts, type InstallPorts } from '#agent/install.ts';
import { runPlan } from '#common/exec.ts';
import type { Disk } from '#common/install/disks.ts';
import { blkdiscardZeroout, LIVE_MEDIUM, partitionOffset, readBack, writeStream, zstdFrameContentSize, type Zeroout } from '#common/install/media.ts';
import { grubMkrescuePlan, ISO_FILES, isIso9660, isoFiles, isoGrubCfg, isoVolumeId, parseReportLba, reportLbaPlan, SEED_SLOT_BYTES, stageIsoTree, type IsoBoot } from '#builder/iso/iso.ts';
import { cli } from '#lab/cli.ts';
import { freePort, MAC1, MAC2, pxeSite, startPxeServe } from '../helpers/pxe.ts';
import { tempDir } from '../helpers/fixtures.ts';

const MiB = 1024 * 1024;

test('zstdFrameContentSize reads the size zstd records, and nothing from a frame without one', async (t) => {
  const dir = tempDir('gk-install-');
  for (const bytes of [0, 200, 300, 70_000, 5 * MiB + 3]) {
    writeFileSync(join(dir, 'f'), randomBytes(bytes));
    await runPlan({ cmd: 'zstd', args: ['-q', '-f', join(dir, 'f'), '-o', join(dir, 'f.zst')] });
    t.is(zstdFrameContentSize(readFileSync(join(dir, 'f.zst')).subarray(0, 32)), bytes, `${bytes} bytes`);
  }
  // Streamed from stdin, zstd cannot know the size beforehand.
  const piped = await runPlan({ cmd: 'sh', args: ['-c', `head -c 1000 /dev/urandom | zstd -q -c > ${join(dir, 'p.zst')}`] });
  t.is(piped.exitCode, 0);
  t.is(zstdFrameContentSize(readFileSync(join(dir, 'p.zst'))), undefined);
  t.is(zstdFrameContentSize(Buffer.from('not zstd at all')), undefined);
});

// Loop devices are real block devices; they need root (CI runs as root).
const canRun = process.getuid?.() === 0;
const serial = canRun ? test.serial : test.serial.skip;
const loops: string[] = [];
test.after.always(async () => {
  for (const l of loops) await runPlan({ cmd: 'losetup', args: ['-d', l] }, { allowFailure: true });
});

async function loop(file: string, bytes: number, fill: number): Promise<string> {
  writeFileSync(file, Buffer.alloc(bytes, fill));
  const dev = (await runPlan({ cmd: 'losetup', args: ['-f', '--show', file] })).stdout.trim();
  loops.push(dev);
  return dev;
}

function sha256(file: string, bytes?: number): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(MiB);
  let pos = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, bytes === undefined ? MiB : Math.min(MiB, bytes - pos), pos);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  closeSync(fd);
  return h.digest('hex');
}

/** A loop device as lsblk would describe a SATA disk with that serial. */
const sataDisk = (path: string, serialNo: string, size: number): Disk => ({ path, byId: [`ata-QEMU_HARDDISK_${serialNo}`], byPath: [], serial: serialNo, model: 'QEMU HARDDISK', sizeBytes: size, type: 'hdd', transport: 'sata', removable: false, readOnly: false, mounts: [] });

/** A 20 MiB GPT disk image with a FAT CONFIG partition and a slot of random data, and its .zst. */
async function diskImage(dir: string): Promise<{ raw: string; zst: string }> {
  const raw = join(dir, 'image.raw');
  writeFileSync(raw, Buffer.alloc(20 * MiB));
  await runPlan({ cmd: 'sfdisk', args: ['--no-reread', '--no-tell-kernel', '-q', raw], input: 'label: gpt\nstart=2048, size=8192, name=CONFIG\nstart=10240, size=16384, name=ROOT_A\n' });
  const fat = join(dir, 'config.fat');
  writeFileSync(fat, Buffer.alloc(4 * MiB));
  await runPlan({ cmd: 'mkfs.vfat', args: ['-n', 'CONFIG', fat] });
  const fd = openSync(raw, 'r+');
  writeSync(fd, readFileSync(fat), 0, 4 * MiB, 2048 * 512);
  writeSync(fd, randomBytes(8 * MiB), 0, 8 * MiB, 10240 * 512);
  closeSync(fd);
  const zst = `${raw}.zst`;
  await runPlan({ cmd: 'zstd', args: ['-q', '-f', raw, '-o', zst] });
  return { raw, zst };
}

serial('an installer PXE-booted by pxe serve: its kernel arguments choose the disk by serial, the image is written and read back, the seed lands on CONFIG, the other disk is untouched, the server follows every stage and then boots it from disk', async (t) => {
  const dir = tempDir('gk-install-');
  const image = await diskImage(dir);
  const site = await pxeSite({ serial: 'SMALL-1' }, readFileSync(image.zst));
  const pxe = await startPxeServe(site.served, site.clusterFile, await freePort());
  t.teardown(pxe.stop);
  const small = await loop(join(dir, 'small.img'), 32 * MiB, 0xab);
  const big = await loop(join(dir, 'big.img'), 64 * MiB, 0xcd);
  const bigBefore = sha256(join(dir, 'big.img'));
  // The machine's disks: real loop devices, described as lsblk would describe two SATA disks.
  const printed: string[] = [];
  let rebooted = 0;
  const ports: InstallPorts = { ...machinePorts((l) => printed.push(l), (l) => printed.push(`WARN ${l}`)), disks: async () => [sataDisk(small, 'SMALL-1', 32 * MiB), sataDisk(big, 'BIG-2', 64 * MiB)], reboot: async () => void rebooted++ };
  // The kernel command line is the one pxe serve's boot script gives node1.
  const script = await (await fetch(`${pxe.base}/boot?mac=${MAC1}`)).text();
  const kernelLine = /^kernel \S+ (.*)$/m.exec(script)![1]!;
  writeFileSync(join(dir, 'cmdline'), kernelLine);

  const code = await installCommand(['--cmdline', join(dir, 'cmdline')], ports);
  t.is(code, 0, printed.join('\n'));
  t.is(rebooted, 1);
  // The slot area is byte for byte the image's; CONFIG now carries the seed.
  const slot = (file: string): string => {
    const fd = openSync(file, 'r');
    const b = Buffer.alloc(8 * MiB);
    readSync(fd, b, 0, b.length, 10240 * 512);
    closeSync(fd);
    return createHash('sha256').update(b).digest('hex');
  };
  t.is(slot(small), slot(image.raw));
  const offset = await partitionOffset(small, 'CONFIG');
  const seed = (await runPlan({ cmd: 'mtype', args: ['-i', `${small}@@${offset}`, '::/meta-data'], env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
  t.regex(seed, /node1/);
  t.is(sha256(join(dir, 'big.img')), bigBefore, 'the other disk is untouched');
  t.regex(printed.join('\n'), /\/dev\/loop\d+ {2}hdd .*serial "BIG-2"[\s\S]*no: serial is not SMALL-1/);

  const stages = pxe.events().filter((e) => e.mac === MAC1 && e.kind === 'stage').map((e) => e.stage);
  t.deepEqual(stages, ['booted', 'disk-chosen', 'written', 'verified', 'seeded', 'rebooting']);
  t.regex(await (await fetch(`${pxe.base}/boot?mac=${MAC1}`)).text(), /booting from its disk/);
});

serial('an installer whose rules match two disks refuses, lists both, writes nothing and reports the failure; a dry run chooses and writes nothing', async (t) => {
  const dir = tempDir('gk-install-');
  const image = await diskImage(dir);
  const site = await pxeSite({ serial: 'SMALL-1' }, readFileSync(image.zst));
  const pxe = await startPxeServe(site.served, site.clusterFile, await freePort());
  t.teardown(pxe.stop);
  const a = await loop(join(dir, 'a.img'), 32 * MiB, 0x11);
  const b = await loop(join(dir, 'b.img'), 64 * MiB, 0x22);
  const before = [sha256(join(dir, 'a.img')), sha256(join(dir, 'b.img'))];
  const printed: string[] = [];
  let rebooted = 0;
  const ports: InstallPorts = { ...machinePorts((l) => printed.push(l), (l) => printed.push(l)), disks: async () => [sataDisk(a, 'A-1', 32 * MiB), sataDisk(b, 'B-2', 64 * MiB)], reboot: async () => void rebooted++ };
  // node2 has no rules in cluster.yaml: the kernel command line gives one that both disks meet.
  const script = await (await fetch(`${pxe.base}/boot?mac=${MAC2}`)).text();
  const kernelLine = /^kernel \S+ (.*)$/m.exec(script)![1]!;
  writeFileSync(join(dir, 'ambiguous'), `${kernelLine} geminik8s.install.min_size=16MiB`);
  t.is(await installCommand(['--cmdline', join(dir, 'ambiguous')], ports), 5);
  t.regex(printed.join('\n'), /refusing to install node2: 2 disks match the rules/);
  t.deepEqual([sha256(join(dir, 'a.img')), sha256(join(dir, 'b.img'))], before);
  const failed = pxe.events().filter((e) => e.mac === MAC2 && e.kind === 'stage');
  t.deepEqual(failed.map((e) => e.stage), ['booted', 'failed']);
  t.regex(failed[1]!.detail ?? '', /2 disks match/);

  // No rule at all (node2 has none in cluster.yaml, none on the command line): refused as bad input.
  writeFileSync(join(dir, 'none'), kernelLine);
  t.is(await installCommand(['--cmdline', join(dir, 'none')], ports), 2);
  t.regex(printed.join('\n'), /never picks a disk by itself/);

  writeFileSync(join(dir, 'dry'), `${kernelLine} geminik8s.install.serial=B-2 geminik8s.install.dry_run=1`);
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'dry')], ports), 0);
  t.regex(printed.join('\n'), /dry run: would write 20971520 bytes of .* onto \/dev\/loop\d+ \(serial B-2, QEMU HARDDISK, 67108864 bytes\).*nothing written/);
  t.deepEqual([sha256(join(dir, 'a.img')), sha256(join(dir, 'b.img'))], before);
  t.is(rebooted, 0);
});

/** A loopback server answering one path with `body` cut in `chunks`, one every `everyMs`, after `headersAfterMs`; `stallAfter` chunks, then silence. */
async function slowServer(body: Buffer, o: { chunks: number; everyMs: number; headersAfterMs?: number; stallAfter?: number }): Promise<{ url: string; close: () => void }> {
  const { createServer } = await import('node:http');
  const srv = createServer((_req, res) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      const size = Math.ceil(body.length / o.chunks);
      let i = 0;
      const next = () => {
        if (o.stallAfter !== undefined && i >= o.stallAfter) return;
        res.write(body.subarray(i * size, (i + 1) * size));
        if (++i < o.chunks) setTimeout(next, o.everyMs);
        else res.end();
      };
      next();
    }, o.headersAfterMs ?? 0);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const close = () => {
    srv.closeAllConnections();
    srv.close();
  };
  return { url: `http://127.0.0.1:${(srv.address() as import('node:net').AddressInfo).port}/image.raw.zst`, close };
}

async function drain(ports: InstallPorts, url: string): Promise<Buffer> {
  const { stream, done } = await ports.openImage(url);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c));
  await done;
  return Buffer.concat(parts);
}

test.serial('the installer streams an image that takes longer than the answer limit, and gives up on one that stalls or never answers', async (t) => {
  const dir = tempDir('gk-install-');
  const raw = randomBytes(3 * MiB);
  writeFileSync(join(dir, 'i.raw'), raw);
  await runPlan({ cmd: 'zstd', args: ['-q', '-f', join(dir, 'i.raw'), '-o', join(dir, 'i.raw.zst')] });
  const zst = readFileSync(join(dir, 'i.raw.zst'));
  const ports = machinePorts(() => undefined, () => undefined, { answerMs: 400, idleMs: 400 });

  // 10 chunks 200 ms apart: 1.8 s in all, far over the 400 ms answer limit, never 400 ms idle.
  const slow = await slowServer(zst, { chunks: 10, everyMs: 200 });
  t.teardown(slow.close);
  const started = Date.now();
  const got = await drain(ports, slow.url);
  t.true(Date.now() - started > 1500, 'the body really took longer than the limits');
  t.true(got.equals(raw), 'the whole image came through, decompressed');

  const stall = await slowServer(zst, { chunks: 10, everyMs: 100, stallAfter: 3 });
  t.teardown(stall.close);
  const stalled = await t.throwsAsync(drain(ports, stall.url));
  t.regex(String(stalled?.message), /no data within 0\.4 s/);

  const mute = await slowServer(zst, { chunks: 1, everyMs: 0, headersAfterMs: 5000 });
  t.teardown(mute.close);
  const silent = await t.throwsAsync(drain(ports, mute.url));
  t.regex(String(silent?.message), /no answer within 0\.4 s/);
});

serial('an installer booted from the ISO: build stages the ISO and grub-mkrescue makes it, seed --into fills its seed slot in a copy (boot records untouched), and the installer reads seed and image from the medium', async (t) => {
  const dir = tempDir('gk-install-');
  const image = await diskImage(dir);
  // A root tree as the build has it: boot/vmlinuz and boot/initrd.img are links to the versioned files.
  mkdirSync(join(dir, 'root/boot'), { recursive: true });
  for (const f of ['vmlinuz', 'initrd.img']) {
    writeFileSync(join(dir, 'root/boot', `${f}-6.12.0-test`), randomBytes(4096));
    symlinkSync(`${f}-6.12.0-test`, join(dir, 'root/boot', f));
  }
  writeFileSync(join(dir, 'root.squashfs'), randomBytes(4096));
  const boot: IsoBoot = { arch: 'amd64', volumeId: isoVolumeId('test', '0.1.0'), cmdline: 'console=ttyS0,115200', rootfsType: 'squashfs', rootSha256: 'ab'.repeat(32), title: 'geminik8s test 0.1.0 (amd64)' };
  const tree = join(dir, 'tree');
  stageIsoTree(tree, boot);
  const iso = join(dir, 'test.iso');
  await runPlan(grubMkrescuePlan(tree, isoFiles(join(dir, 'root'), join(dir, 'root.squashfs'), image.zst), iso, boot.volumeId, 1700000000));
  t.true(isIso9660(iso));
  t.false(isIso9660(image.raw));
  t.regex((await runPlan({ cmd: 'blkid', args: ['-o', 'export', iso] })).stdout, /LABEL=GK_TEST_0_1_0/);

  const site = await pxeSite({ serial: 'SMALL-1' });
  const seeded = join(dir, 'node1.iso');
  const r = await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--into', iso, '--out', seeded);
  t.is(r.code, 0, r.stderr);
  t.is(statSync(seeded).mode & 0o777, 0o600, 'it carries secrets');
  // Only the seed slot differs: El Torito, the MBR and GPT, and every other file are as built.
  const at = parseReportLba((await runPlan(reportLbaPlan(iso, ISO_FILES.seed))).stdout, ISO_FILES.seed)!;
  const a = readFileSync(iso);
  const b = readFileSync(seeded);
  t.is(a.length, b.length);
  t.true(a.subarray(0, at.offset).equals(b.subarray(0, at.offset)) && a.subarray(at.offset + SEED_SLOT_BYTES).equals(b.subarray(at.offset + SEED_SLOT_BYTES)));
  t.false(a.subarray(at.offset, at.offset + SEED_SLOT_BYTES).equals(b.subarray(at.offset, at.offset + SEED_SLOT_BYTES)));
  // Without --force an existing output is kept; an image that is neither raw disk nor our ISO is refused.
  t.is((await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--into', iso, '--out', seeded)).code, 5);

  // The live system mounts the medium at LIVE_MEDIUM; here, a copy of its files from the seeded ISO.
  const medium = join(dir, 'medium');
  const extract = async (from: string): Promise<void> => {
    await runPlan({ cmd: 'rm', args: ['-rf', medium] });
    await runPlan({ cmd: 'xorriso', args: ['-osirrox', 'on', '-indev', from, '-extract', '/live', join(medium, 'live'), '-extract', '/geminik8s', join(medium, 'geminik8s')] });
  };
  // The kernel and initrd are the files themselves, where the menu loads them.
  await runPlan({ cmd: 'xorriso', args: ['-osirrox', 'on', '-indev', seeded, '-extract', '/live/vmlinuz', join(dir, 'iso-vmlinuz')] });
  t.true(readFileSync(join(dir, 'iso-vmlinuz')).equals(readFileSync(join(dir, 'root/boot/vmlinuz-6.12.0-test'))));
  const cfg = (await runPlan({ cmd: 'xorriso', args: ['-osirrox', 'on', '-indev', seeded, '-extract', '/boot/grub/grub.cfg', join(dir, 'grub.cfg')] }), readFileSync(join(dir, 'grub.cfg'), 'utf8'));
  t.is(cfg, isoGrubCfg(boot));
  const kernelLine = /^\s*linux \S+ (.*)$/m.exec(cfg)![1]!.replaceAll(LIVE_MEDIUM, medium);
  writeFileSync(join(dir, 'cmdline'), kernelLine);
  const small = await loop(join(dir, 'small.img'), 32 * MiB, 0xab);
  const big = await loop(join(dir, 'big.img'), 64 * MiB, 0xcd);
  const before = [sha256(join(dir, 'small.img')), sha256(join(dir, 'big.img'))];
  const printed: string[] = [];
  let rebooted = 0;
  const ports: InstallPorts = { ...machinePorts((l) => printed.push(l), (l) => printed.push(`WARN ${l}`)), disks: async () => [sataDisk(small, 'SMALL-1', 32 * MiB), sataDisk(big, 'BIG-2', 64 * MiB)], reboot: async () => void rebooted++ };

  // The ISO as built has an empty seed slot and no seed medium is attached: refused as bad input, nothing written.
  await extract(iso);
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], ports), 2);
  t.regex(printed.join('\n'), /seed\.json carries no seed, and no medium labelled GKSEED is attached: nothing says which node this is: put a seed into the ISO \(geminik8s seed --node NAME --into ISO/);
  t.deepEqual([sha256(join(dir, 'small.img')), sha256(join(dir, 'big.img'))], before);

  // The same ISO with a seed medium attached (seed --format medium, as on a USB stick): node1 installs from it, never onto it.
  const mediumImg = join(dir, 'seed.img');
  const m = await cli('seed', '--cluster', site.clusterFile, '--node', 'node1', '--format', 'medium', '--out', mediumImg);
  t.is(m.code, 0, m.stderr);
  const stick = (await runPlan({ cmd: 'losetup', args: ['-f', '--show', mediumImg] })).stdout.trim();
  loops.push(stick);
  const stickBefore = sha256(mediumImg);
  // Described as the target's twin (serial and size): only its role keeps it out.
  const withStick: InstallPorts = { ...ports, disks: async () => [sataDisk(stick, 'SMALL-1', 32 * MiB), sataDisk(small, 'SMALL-1', 32 * MiB), sataDisk(big, 'BIG-2', 64 * MiB)] };
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline'), '--dry-run'], withStick), 0, printed.join('\n'));
  t.regex(printed.join('\n'), new RegExp(`the seed of node1 comes from ${stick} labelled GKSEED`));
  t.regex(printed.join('\n'), new RegExp(`${stick} [^\\n]*\\n[^\\n]*by-id[^\\n]*\\n\\s+never: the medium the seed came from\\n`));
  t.regex(printed.join('\n'), /dry run: would write \d+ bytes of \S+ onto \/dev\/loop\d+ \(serial SMALL-1/);
  t.deepEqual([sha256(join(dir, 'small.img')), sha256(join(dir, 'big.img')), sha256(mediumImg)], [...before, stickBefore]);
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], withStick), 0, printed.join('\n'));
  t.regex(printed.join('\n'), /installed node1 onto \/dev\/loop\d+/);
  t.is(sha256(mediumImg), stickBefore, 'the seed medium is as it was');
  t.is(sha256(join(dir, 'big.img')), before[1]!, 'the other disk is untouched');
  t.is(rebooted, 1);

  // A seeded ISO and a seed medium: two identities for one machine, refused, nothing written.
  await extract(seeded);
  const installed = sha256(join(dir, 'small.img'));
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], withStick), 5);
  t.regex(printed.join('\n'), /two seeds: \S+seed\.json \(node1\) and the medium \/dev\/loop\d+ labelled GKSEED \(node1\)/);
  t.deepEqual([sha256(join(dir, 'small.img')), sha256(join(dir, 'big.img'))], [installed, before[1]!]);

  // The stick taken out, the seeded ISO alone installs.
  await runPlan({ cmd: 'losetup', args: ['-d', stick] });
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], ports), 0, printed.join('\n'));
  t.is(rebooted, 2);
  t.regex(printed.join('\n'), /installed node1 onto \/dev\/loop\d+/);
  const offset = await partitionOffset(small, 'CONFIG');
  t.regex((await runPlan({ cmd: 'mtype', args: ['-i', `${small}@@${offset}`, '::/meta-data'], env: { MTOOLS_SKIP_CHECK: '1' } })).stdout, /node1/);
  t.is(sha256(join(dir, 'big.img')), before[1]!, 'the other disk is untouched');
});

serial('writeStream hands runs of zeros to the device (BLKZEROOUT) and writes the rest; what reads back is the input, whatever was on the disk before', async (t) => {
  const dir = tempDir('gk-install-');
  const dev = await loop(join(dir, 'disk.img'), 16 * MiB, 0xab);
  // Data, 5 MiB of zeros starting off a sector boundary, data, 3 MiB of zeros to the end.
  const data = Buffer.concat([randomBytes(MiB + 100), Buffer.alloc(5 * MiB), randomBytes(2 * MiB), Buffer.alloc(8 * MiB - 100)]);
  const chunks = async function* (): AsyncGenerator<Buffer> {
    for (let at = 0; at < data.length; at += 65536) yield data.subarray(at, at + 65536);
  };
  const calls: [number, number][] = [];
  const spy: Zeroout = async (device, offset, length) => {
    calls.push([offset, length]);
    return blkdiscardZeroout(device, offset, length);
  };
  const r = await writeStream(chunks(), dev, data.length, () => undefined, 'test', spy);
  t.is(r.sha256, createHash('sha256').update(data).digest('hex'));
  t.is(await readBack(dev, data.length), r.sha256, 'the zeroed runs read back as zeros, not as the 0xab that was there');
  t.true(calls.length === 2 && calls.every(([o, l]) => o % 512 === 0 && l % 512 === 0), JSON.stringify(calls));
  t.true(r.zeroedOut > 12 * MiB, `${r.zeroedOut} bytes zeroed out`);

  // A device that cannot zero out: every byte is written, the result is the same.
  const again = await loop(join(dir, 'disk2.img'), 16 * MiB, 0xcd);
  const w = await writeStream(chunks(), again, data.length, () => undefined, 'test', async () => false);
  t.is(w.zeroedOut, 0);
  t.is(await readBack(again, data.length), r.sha256);
});

test('two seed media are refused, and no seed anywhere is bad input, before anything else is read', async (t) => {
  const dir = tempDir('gk-install-');
  writeFileSync(join(dir, 'cmdline'), 'geminik8s.install.image_url=file:///nonexistent/image.raw.zst geminik8s.install.serial=A-1');
  const printed: string[] = [];
  const seed = (node: string) => ({ node, disk: {}, files: [] });
  const untouched = async (): Promise<never> => {
    throw new Error('read after a refusal');
  };
  const base: InstallPorts = { disks: untouched, bootDisks: untouched, fetchSeed: untouched, imageHead: untouched, openImage: untouched, report: async () => undefined, reboot: untouched, print: (l) => printed.push(l), warn: (l) => printed.push(l), seedMedia: async () => [] };
  const two: InstallPorts = { ...base, seedMedia: async () => [{ device: '/dev/sdb', disks: ['/dev/sdb'], payload: seed('node1') }, { device: '/dev/sdc1', disks: ['/dev/sdc1', '/dev/sdc'], payload: seed('node2') }] };
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], two), 5);
  t.regex(printed.join('\n'), /2 media labelled GKSEED \(\/dev\/sdb: node1, \/dev\/sdc1: node2\): leave one attached; nothing was written/);
  printed.length = 0;
  t.is(await installCommand(['--cmdline', join(dir, 'cmdline')], base), 2);
  t.regex(printed.join('\n'), /no geminik8s\.install\.seed_url on the kernel command line, and no medium labelled GKSEED is attached: nothing says which node this is/);
});

serial('a medium labelled GKSEED that is not FAT is refused as bad input, naming the device', async (t) => {
  const dir = tempDir('gk-install-');
  mkdirSync(join(dir, 'tree/geminik8s'), { recursive: true });
  writeFileSync(join(dir, 'tree/geminik8s/seed.json'), '{}');
  await runPlan({ cmd: 'xorriso', args: ['-as', 'mkisofs', '-quiet', '-output', join(dir, 'seed.iso'), '-volid', 'GKSEED', join(dir, 'tree')] });
  const dev = (await runPlan({ cmd: 'losetup', args: ['-f', '--show', join(dir, 'seed.iso')] })).stdout.trim();
  // Detached at once: another test's installer would find it.
  t.teardown(() => runPlan({ cmd: 'losetup', args: ['-d', dev] }, { allowFailure: true }).then(() => undefined));
  await t.throwsAsync(machinePorts(() => undefined, () => undefined).seedMedia(), { message: new RegExp(`${dev} is labelled GKSEED but holds iso9660 filesystem; a seed medium is FAT`) });
});
