import test from 'ava';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { sha256File } from '#builder/components/download.ts';
import { erofsPlan, extractRootPlan, restoreXattrsThen, squashfsPlan } from '#builder/disk/plans.ts';
import { setfattrDump, tarXattrs } from '#builder/disk/xattrs.ts';
import { TarWriter, type TarHeader } from '#builder/rootfs/sources/tarfile.ts';
import { findTool, runPlan, type CommandPlan } from '#common/exec.ts';
import { tempDir } from '../helpers/fixtures.ts';

// arping's file capability (cap_net_raw+ep, VFS_CAP_REVISION_2), and a value with bytes a
// UTF-8 decoder would mangle.
const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex');
const BINARY = Buffer.from([0x00, 0xff, 0x80, 0x3d, 0x0a, 0x5c]);

async function rootTar(file: string): Promise<void> {
  const chunks: Buffer[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => chunks.push(c));
  const w = new TarWriter(sink);
  const entries: [TarHeader, Buffer?][] = [
    [{ name: './', type: 'directory', mode: 0o755, uid: 0, gid: 0, mtime: 1700000000 }],
    [{ name: './usr/', type: 'directory', mode: 0o755, uid: 0, gid: 0, mtime: 1700000000 }],
    [{ name: './usr/bin/', type: 'directory', mode: 0o755, uid: 0, gid: 0, mtime: 1700000000 }],
    [{ name: './usr/bin/arping', type: 'file', mode: 0o755, uid: 0, gid: 0, mtime: 1700000000, size: 5, pax: new Map([['SCHILY.xattr.security.capability', CAP]]) }, Buffer.from('ELF!\n')],
    [{ name: './usr/bin/apt', type: 'file', mode: 0o755, uid: 0, gid: 0, mtime: 1700000000, size: 4 }, Buffer.from('apt\n')],
    [{ name: './usr/bin/odd name=1', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1700000000, size: 0, pax: new Map([['SCHILY.xattr.user.blob', BINARY]]) }, Buffer.alloc(0)],
  ];
  for (const [h, body] of entries) await w.add(h, body);
  await w.close();
  writeFileSync(file, Buffer.concat(chunks));
}

test('tarXattrs reads every SCHILY.xattr record byte for byte; the dump is what setfattr --restore takes', async (t) => {
  const dir = tempDir();
  await rootTar(join(dir, 'root.tar'));
  const xattrs = await tarXattrs(join(dir, 'root.tar'));
  t.deepEqual(xattrs.map((x) => [x.path, x.name, x.value.toString('hex')]), [
    ['./usr/bin/arping', 'security.capability', CAP.toString('hex')],
    ['./usr/bin/odd name=1', 'user.blob', BINARY.toString('hex')],
  ]);
  t.is(setfattrDump(xattrs), `# file: ./usr/bin/arping\nsecurity.capability=0x${CAP.toString('hex')}\n\n# file: ./usr/bin/odd\\040name\\0751\nuser.blob=0x${BINARY.toString('hex')}\n\n`);
});

/** A plan run as `user` under one fakeroot session (its state file), as a rootless build runs it. */
const asUserUnderFakeroot = (user: string, state: string, plan: CommandPlan): CommandPlan => ({
  cmd: 'runuser', args: ['-u', user, '--', 'fakeroot', '-i', state, '-s', state, '--', plan.cmd, ...plan.args], cwd: plan.cwd, title: plan.title,
});

test('rootless (fakeroot): the root tree keeps the file with a capability, and the slot has it with its xattr (tar --xattrs under fakeroot loses it)', async (t) => {
  if (process.getuid?.() !== 0 || !(await findTool('runuser')) || !(await findTool('fakeroot')) || !(await findTool('setfattr')) || !(await findTool('getfattr')) || !(await findTool('mksquashfs'))) {
    t.pass('needs root (to run as nobody), runuser, fakeroot, setfattr and mksquashfs');
    return;
  }
  const base = tempDir();
  chmodSync(base, 0o755);
  await rootTar(join(base, 'root.tar'));
  const slot = async (name: string, build: (dir: string, state: string) => Promise<string | undefined>): Promise<string> => {
    const work = join(base, name);
    mkdirSync(join(work, 'root'), { recursive: true });
    chownSync(work, 65534, 65534);
    chownSync(join(work, 'root'), 65534, 65534);
    const state = join(work, 'fakeroot.state');
    writeFileSync(state, '');
    chownSync(state, 65534, 65534);
    const dump = await build(join(work, 'root'), state);
    const mksquashfs = squashfsPlan({ dir: join(work, 'root'), output: join(work, 'slot.img'), compression: 'gzip', sourceDateEpoch: 1700000000 });
    await runPlan(asUserUnderFakeroot('nobody', state, dump ? restoreXattrsThen(dump, join(work, 'root'), mksquashfs) : mksquashfs));
    return (await runPlan({ cmd: 'unsquashfs', args: ['-lls', join(work, 'slot.img')] })).stdout;
  };
  // What the build does now: the tree without xattrs, then setfattr --restore in mksquashfs's session.
  const fixed = await slot('fixed', async (dir, state) => {
    await runPlan(asUserUnderFakeroot('nobody', state, extractRootPlan(join(base, 'root.tar'), dir, false)));
    const dump = join(base, 'fixed', 'xattrs.dump');
    writeFileSync(dump, setfattrDump(await tarXattrs(join(base, 'root.tar'))));
    return dump;
  });
  t.regex(fixed, /^-rwxr-xr-x root\/root\s+5 .*\/usr\/bin\/arping$/m);
  const xattrs = await runPlan({ cmd: 'unsquashfs', args: ['-n', '-d', join(base, 'fixed', 'out'), '-xattrs', join(base, 'fixed', 'slot.img')] });
  t.is(xattrs.exitCode, 0);
  const cap = await runPlan({ cmd: 'getfattr', args: ['--absolute-names', '-n', 'security.capability', '-e', 'hex', join(base, 'fixed', 'out', 'usr/bin/arping')] });
  t.regex(cap.stdout, new RegExp(`security\\.capability=0x${CAP.toString('hex')}`), 'the capability is in the slot');
  // What it did before: tar --xattrs under fakeroot, which leaves arping without a file type.
  const before = await slot('before', async (dir, state) => {
    await runPlan(asUserUnderFakeroot('nobody', state, extractRootPlan(join(base, 'root.tar'), dir)));
    return undefined;
  });
  t.regex(before, /\/usr\/bin\/apt$/m);
  t.log(/\/usr\/bin\/arping$/m.test(before) ? 'tar --xattrs under this fakeroot keeps arping' : 'tar --xattrs under this fakeroot loses arping (the bug the build works around)');
});

test('an erofs slot keeps the capability and the ownership, and one tree gives one image', async (t) => {
  if (process.getuid?.() !== 0 || !(await findTool('mkfs.erofs')) || !(await findTool('getfattr'))) {
    t.pass('needs root (a loop mount) and mkfs.erofs, getfattr');
    return;
  }
  const base = tempDir();
  await rootTar(join(base, 'root.tar'));
  mkdirSync(join(base, 'root'));
  await runPlan(extractRootPlan(join(base, 'root.tar'), join(base, 'root')));
  const make = async (name: string): Promise<string> => {
    await runPlan(erofsPlan({ dir: join(base, 'root'), output: join(base, name), compression: 'lz4hc', blockSize: '64K', uuid: '5b1f4b1e-0000-4000-8000-000000000001', sourceDateEpoch: 1700000000 }));
    return sha256File(join(base, name));
  };
  t.is(await make('a.img'), await make('b.img'), 'byte for byte the same');
  const mnt = join(base, 'mnt');
  mkdirSync(mnt);
  await runPlan({ cmd: 'mount', args: ['-t', 'erofs', '-o', 'loop,ro', join(base, 'a.img'), mnt] });
  try {
    const cap = await runPlan({ cmd: 'getfattr', args: ['--absolute-names', '-n', 'security.capability', '-e', 'hex', join(mnt, 'usr/bin/arping')] });
    t.regex(cap.stdout, new RegExp(`security\\.capability=0x${CAP.toString('hex')}`), 'the capability is in the slot');
    t.is(readFileSync(join(mnt, 'usr/bin/apt'), 'utf8'), 'apt\n');
    const ls = (await runPlan({ cmd: 'stat', args: ['-c', '%a %u %g %Y %n', join(mnt, 'usr/bin/apt'), join(mnt, 'usr/bin/odd name=1')] })).stdout;
    t.is(ls.replaceAll(`${mnt}/`, ''), '755 0 0 1700000000 usr/bin/apt\n644 0 0 1700000000 usr/bin/odd name=1\n');
  } finally {
    await runPlan({ cmd: 'umount', args: [mnt] });
  }
});
