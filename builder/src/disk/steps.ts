import { copyFileSync, createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open, readFile, rename, rm, stat, truncate, utimes } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { requireTools, runPlan, type CommandPlan } from '#common/exec.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { NODE_PATHS, slotBootPath } from '#common/render/paths.ts';
import { say, type BuildContext, type Step } from '../build/steps.ts';
import { renderImageFiles } from '../render/index.ts';
import { sha256File } from '../components/fetch.ts';
import { rootfsName } from '../rootfs/steps.ts';
import { writeOciArchive } from '../upgrade/oci.ts';
import { writeBundle } from '../upgrade/write.ts';
import { PXE_FILES, PXE_META, type PxeMeta } from '../pxe/server.ts';
import { grubMkrescuePlan, isoFiles, isoVolumeId, stageIsoTree, type IsoBoot } from '../iso/iso.ts';
import { kernelCmdline } from '../render/grub.ts';
import { DISK_FORMATS, type OutputFormat } from '#common/schema/image.ts';
import { patchBiosBoot } from './bios.ts';
import { assertFits, layoutSeed, partition, planDisk, sfdiskScript, type DiskLayout, type PartitionRole } from './layout.ts';
import { mcopyPlans } from '#common/install/media.ts';
import { erofsPlan, ext4Plan, extractRootPlan, grubEarlyConfig, grubMkimagePlan, qcow2Plan, restoreXattrsThen, sfdiskPlan, squashfsPercent, squashfsPlan, vfatPlan, zstdPlan, type GrubTarget } from './plans.ts';
import { setfattrDump, tarXattrs } from './xattrs.ts';

const HOST_GRUB = '/usr/lib/grub';

/** What the disk steps leave in `ctx.state.disk`. */
export interface DiskState {
  layout: DiskLayout;
  /** Partition images by role, with the bytes their content uses. */
  images: Partial<Record<PartitionRole, { file: string; used: number }>>;
  rootTree?: string;
  /** Rootless builds: the root's extended attributes, set in the session that makes the slot. */
  xattrDump?: string;
  outputs: { format: string; file: string; bytes: number; sha256: string }[];
  rawTmp?: string;
  /** The disk image compressed in the work directory, made once for the PXE directory and the ISO when raw.zst is not an output. */
  zst?: string;
}

function disk(ctx: BuildContext): DiskState {
  if (!ctx.state.disk) throw new Error('the disk state is read before "check disk tools" made it');
  return ctx.state.disk;
}
const work = (ctx: BuildContext, name: string): string => join(ctx.workDir, 'disk', name);

/** Run plans as root, or under fakeroot (sharing one state file) when the builder is not root. */
function privileged(ctx: BuildContext, plan: CommandPlan): CommandPlan {
  if (process.getuid?.() === 0) return plan;
  const state = work(ctx, 'fakeroot.state');
  const keep = existsSync(state) ? ['-i', state] : [];
  return { ...plan, cmd: 'fakeroot', args: [...keep, '-s', state, '--', plan.cmd, ...plan.args], title: `fakeroot ${plan.title ?? plan.cmd}` };
}

function grubTargets(ctx: BuildContext): GrubTarget[] {
  const targets: GrubTarget[] = [];
  if (ctx.image.boot.modes.includes('bios')) targets.push('i386-pc');
  if (ctx.image.boot.modes.includes('uefi')) targets.push(ctx.image.arch === 'arm64' ? 'arm64-efi' : 'x86_64-efi');
  return targets;
}

/** GRUB modules for a target: the host's for x86, the arm64 root's for arm64-efi (Debian amd64 has no grub-efi-arm64-bin). */
function grubModuleDir(ctx: BuildContext, target: GrubTarget): string {
  return target === 'arm64-efi' ? join(disk(ctx).rootTree!, 'usr/lib/grub/arm64-efi') : join(HOST_GRUB, target);
}

/** Copy a partition image into the disk image at its offset, leaving zero blocks as holes. */
export async function writeAt(diskFile: string, partFile: string, offset: number): Promise<void> {
  const out = await open(diskFile, 'r+');
  try {
    let position = offset;
    for await (const chunk of createReadStream(partFile, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
      if (chunk.some((b) => b !== 0)) await out.write(chunk, 0, chunk.length, position);
      position += chunk.length;
    }
  } finally {
    await out.close();
  }
}

/** Write `<file>.sha256` in sha256sum's format, and record the output. */
async function recordOutput(ctx: BuildContext, format: string, file: string): Promise<void> {
  const sha256 = await sha256File(file);
  await writeFileAtomic(`${file}.sha256`, `${sha256}  ${basename(file)}\n`);
  disk(ctx).outputs.push({ format, file, bytes: (await stat(file)).size, sha256 });
}

/** Produce `final` (a file, or a directory) through a temporary name in the same directory, so a failed step leaves nothing under it. */
async function atomically(final: string, make: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(final, '..', `.${basename(final)}.tmp-${process.pid}`);
  try {
    await make(tmp);
    await rename(tmp, final);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

const isDiskFormat = (f: OutputFormat): boolean => (DISK_FORMATS as readonly string[]).includes(f);
/** Skip reason for the steps only a disk image needs (`--output upgrade` alone). */
const noDisk = (ctx: BuildContext): string | false => (ctx.outputs.some(isDiskFormat) || ctx.outputs.includes('pxe') || ctx.outputs.includes('iso') ? false : 'no disk image among the outputs');

/** The disk image compressed, as the PXE directory and the ISO carry it: the raw.zst output when there is one, else one made once in the work directory. */
async function imageZst(ctx: BuildContext, raw: string): Promise<string> {
  if (ctx.outputs.includes('raw.zst')) return join(ctx.outDir, `${rootfsName(ctx)}.raw.zst`);
  const d = disk(ctx);
  if (!d.zst) {
    d.zst = work(ctx, 'image.raw.zst');
    await runPlan(zstdPlan(raw, d.zst), { timeoutMs: 30 * 60_000 });
  }
  return d.zst;
}

/**
 * `<name>.iso`: the installer ISO (iso/iso.ts), a hybrid that boots from CD or USB stick under
 * BIOS and UEFI into the live system, whose installer writes the disk image onto the disk its
 * seed's rules name. It has an empty seed slot for `seed --into`.
 */
async function writeIso(ctx: BuildContext, final: string, raw: string): Promise<void> {
  const tree = disk(ctx).rootTree!;
  const root = disk(ctx).images.rootA!.file;
  const boot: IsoBoot = {
    arch: ctx.image.arch,
    volumeId: isoVolumeId(ctx.image.name, ctx.image.version),
    cmdline: kernelCmdline(ctx.image),
    rootfsType: ctx.image.rootfs.type,
    rootSha256: await sha256File(root),
    title: `geminik8s ${ctx.image.name} ${ctx.image.version} (${ctx.image.arch})`,
  };
  const stage = work(ctx, 'iso-tree');
  await rm(stage, { recursive: true, force: true });
  stageIsoTree(stage, boot);
  const zst = await imageZst(ctx, raw);
  const moduleDir = ctx.image.arch === 'arm64' ? grubModuleDir(ctx, 'arm64-efi') : undefined;
  await atomically(final, (tmp) => runPlan(grubMkrescuePlan(stage, isoFiles(tree, root, zst), tmp, boot.volumeId, ctx.sourceDateEpoch, moduleDir), { timeoutMs: 30 * 60_000 }).then(() => undefined));
  await rm(stage, { recursive: true, force: true });
}

/**
 * `<name>.pxe/`: what `pxe serve --dir` serves (the kernel, the initrd, the root slot, the disk
 * image the installer writes) with `pxe.json` (the kernel arguments and root type) and
 * `SHA256SUMS`. Made under a temporary name and renamed whole, so a failed build leaves none.
 */
async function writePxeDir(ctx: BuildContext, final: string, raw: string): Promise<void> {
  const tree = disk(ctx).rootTree!;
  const sums = new Map<string, string>();
  await atomically(final, async (tmp) => {
    await rm(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { mode: 0o755 });
    copyFileSync(join(tree, 'boot/vmlinuz'), join(tmp, PXE_FILES.kernel));
    copyFileSync(join(tree, 'boot/initrd.img'), join(tmp, PXE_FILES.initrd));
    copyFileSync(disk(ctx).images.rootA!.file, join(tmp, PXE_FILES.root));
    copyFileSync(await imageZst(ctx, raw), join(tmp, PXE_FILES.image));
    const meta: PxeMeta = { image: ctx.image.name, version: ctx.image.version, arch: ctx.image.arch, rootfsType: ctx.image.rootfs.type, cmdline: kernelCmdline(ctx.image) };
    writeFileSync(join(tmp, PXE_META), `${JSON.stringify(meta, null, 2)}\n`);
    for (const f of [...Object.values(PXE_FILES), PXE_META]) sums.set(f, await sha256File(join(tmp, f)));
    writeFileSync(join(tmp, 'SHA256SUMS'), `${[...sums].map(([f, sum]) => `${sum}  ${f}`).join('\n')}\n`);
    // A directory is not replaced by rename: the previous one goes just before.
    await rm(final, { recursive: true, force: true });
  });
  const image = join(final, PXE_FILES.image);
  disk(ctx).outputs.push({ format: 'pxe', file: final, bytes: (await stat(image)).size, sha256: sums.get(PXE_FILES.image)! });
}

/** The steps of the disk stage: from a root tar to raw, qcow2 and compressed images, and the upgrade bundle. */
export const DISK_STEPS: Step[] = [
  {
    name: 'check disk tools',
    async run(ctx) {
      const tools = ['tar', 'sfdisk', 'mkfs.ext4', 'mkfs.vfat', 'mmd', 'mcopy', 'grub-mkimage', 'grub-editenv'];
      if (ctx.image.rootfs.type === 'squashfs') tools.push('mksquashfs');
      if (ctx.image.rootfs.type === 'erofs') tools.push('mkfs.erofs');
      if (ctx.outputs.includes('qcow2')) tools.push('qemu-img');
      if (ctx.outputs.includes('raw.zst') || ctx.outputs.includes('pxe') || ctx.outputs.includes('iso')) tools.push('zstd');
      // On arm64 the ISO takes GRUB's arm64-efi from the root, checked with the disk's GRUB below.
      if (ctx.outputs.includes('iso')) tools.push('grub-mkrescue', 'xorriso', 'mformat');
      if (ctx.outputs.includes('iso') && ctx.image.arch === 'amd64') {
        for (const [platform, pkg] of [['i386-pc', 'grub-pc-bin'], ['x86_64-efi', 'grub-efi-amd64-bin']] as const) {
          if (!existsSync(join(HOST_GRUB, platform, 'kernel.img'))) throw new GeminiError(`--output iso boots under BIOS and UEFI: GRUB's ${platform} modules are missing from ${HOST_GRUB}/${platform} (apt-get install ${pkg})`, ExitCode.missingTool);
        }
      }
      if (process.getuid?.() !== 0) tools.push('fakeroot', 'setfattr');
      await requireTools(tools);
      for (const target of grubTargets(ctx).filter((t) => t !== 'arm64-efi')) {
        if (!existsSync(join(HOST_GRUB, target, 'kernel.img'))) {
          const pkg = target === 'i386-pc' ? 'grub-pc-bin' : 'grub-efi-amd64-bin';
          throw new GeminiError(`GRUB modules for ${target} are missing from ${HOST_GRUB}/${target}: install ${pkg} (apt-get install ${pkg})`, ExitCode.missingTool);
        }
      }
      const rootfsTar = ctx.state.rootfsTar ?? join(ctx.outDir, `${rootfsName(ctx)}.rootfs.tar`);
      if (!existsSync(rootfsTar)) {
        throw new GeminiError(`no root tar at ${rootfsTar}: build it first (geminik8s build --stage rootfs) or give --rootfs-tar FILE`, ExitCode.invalidInput);
      }
      ctx.state.rootfsTar = rootfsTar;
      mkdirSync(work(ctx, ''), { recursive: true });
      const state: DiskState = { layout: planDisk(ctx.image, layoutSeed(ctx.image, ctx.sourceDateEpoch)), images: {}, outputs: [] };
      ctx.state.disk = state;
    },
  },
  {
    name: 'extract the root tree',
    async run(ctx) {
      const dir = work(ctx, 'root');
      mkdirSync(dir, { recursive: true });
      if (process.getuid?.() === 0) {
        await runPlan(extractRootPlan(ctx.state.rootfsTar!, dir), { timeoutMs: 30 * 60_000 });
      } else {
        // Under fakeroot, an extended attribute that tar sets before the file's owner leaves the
        // file without a type (st_mode 0): mksquashfs then left /usr/bin/arping, the one file
        // with a capability, out of the slot. So the tree is made first, then the attributes set.
        await runPlan(privileged(ctx, extractRootPlan(ctx.state.rootfsTar!, dir, false)), { timeoutMs: 30 * 60_000 });
        const xattrs = await tarXattrs(ctx.state.rootfsTar!);
        if (xattrs.length) {
          disk(ctx).xattrDump = work(ctx, 'xattrs.dump');
          writeFileSync(disk(ctx).xattrDump!, setfattrDump(xattrs));
        }
        ctx.logger.info(`  ${xattrs.length} extended attribute(s) to set under fakeroot with the slot`);
      }
      if (!existsSync(join(dir, 'boot/vmlinuz')) || !existsSync(join(dir, 'boot/initrd.img'))) {
        throw new GeminiError(`the root ${ctx.state.rootfsTar} has no /boot/vmlinuz or /boot/initrd.img: it was not made by geminik8s build --stage rootfs`, ExitCode.invalidInput);
      }
      disk(ctx).rootTree = dir;
    },
  },
  {
    name: 'make the root slot filesystem',
    async run(ctx) {
      const slot = partition(disk(ctx).layout, 'rootA');
      const file = work(ctx, 'root-slot.img');
      const dir = disk(ctx).rootTree!;
      const dump = disk(ctx).xattrDump;
      const withXattrs = (plan: CommandPlan): CommandPlan => (dump ? restoreXattrsThen(dump, dir, plan) : plan);
      if (ctx.image.rootfs.type === 'squashfs') {
        let shown = -1;
        const skipped: string[] = [];
        await runPlan(privileged(ctx, withXattrs(squashfsPlan({ dir, output: file, compression: ctx.image.rootfs.compression, blockSize: ctx.image.rootfs.blockSize, sourceDateEpoch: ctx.sourceDateEpoch }))), {
          timeoutMs: 60 * 60_000,
          // mksquashfs leaves out what it cannot read or type, says so on stderr even with -quiet, and exits 0.
          onStderrLine: (line) => {
            if (/ignoring|[Ff]ailed to|[Cc]annot /.test(line)) skipped.push(line.trim());
          },
          // Every 10 %: enough to see it move, few enough for a CI log.
          onStdoutLine: (line) => {
            const p = squashfsPercent(line);
            if (p === undefined || Math.floor(p / 10) <= Math.floor(shown / 10)) return;
            shown = p;
            say(ctx, `mksquashfs (${ctx.image.rootfs.compression}): ${p}%`);
          },
        });
        if (skipped.length) {
          throw new GeminiError(`mksquashfs left ${skipped.length} entr${skipped.length === 1 ? 'y' : 'ies'} of the root out of the slot:\n${skipped.slice(0, 20).map((l) => `  ${l}`).join('\n')}`, ExitCode.commandFailed);
        }
      } else if (ctx.image.rootfs.type === 'erofs') {
        const compression = ctx.image.rootfs.compression === 'lz4' ? 'lz4' : 'lz4hc';
        say(ctx, `mkfs.erofs (${compression}, ${ctx.image.rootfs.blockSize} clusters)`);
        await runPlan(privileged(ctx, withXattrs(erofsPlan({ dir, output: file, compression, blockSize: ctx.image.rootfs.blockSize, uuid: slot.uuid.toLowerCase(), sourceDateEpoch: ctx.sourceDateEpoch }))), { timeoutMs: 60 * 60_000 });
      } else {
        await runPlan(privileged(ctx, withXattrs(ext4Plan({ output: file, part: { ...slot, fsId: slot.uuid.toLowerCase(), label: slot.name }, dir, sourceDateEpoch: ctx.sourceDateEpoch, readOnly: true }))), { timeoutMs: 60 * 60_000 });
      }
      const used = (await stat(file)).size;
      assertFits(slot, used, `the root filesystem (${ctx.image.rootfs.type})`);
      disk(ctx).images.rootA = { file, used };
    },
  },
  {
    name: 'make GRUB images',
    skip: (ctx) => noDisk(ctx) || (grubTargets(ctx).length ? false : 'no boot modes'),
    async run(ctx) {
      const esp = partition(disk(ctx).layout, 'esp');
      const early = work(ctx, 'grub-early.cfg');
      writeFileSync(early, grubEarlyConfig(esp.fsId!));
      for (const target of grubTargets(ctx)) {
        const moduleDir = grubModuleDir(ctx, target);
        if (!existsSync(join(moduleDir, 'kernel.img'))) {
          throw new GeminiError(`GRUB ${target} modules are missing from ${moduleDir}${target === 'arm64-efi' ? ': the arm64 root must include grub-efi-arm64-bin' : ''}`, ExitCode.missingTool);
        }
        await runPlan(grubMkimagePlan({ target, moduleDir, earlyConfig: early, output: work(ctx, `grub-${target}.img`), sourceDateEpoch: ctx.sourceDateEpoch }));
      }
    },
  },
  {
    name: 'make the ESP',
    skip: noDisk,
    async run(ctx) {
      const esp = partition(disk(ctx).layout, 'esp');
      const file = work(ctx, 'esp.img');
      const files = work(ctx, 'esp-files');
      mkdirSync(files, { recursive: true });
      const boot = renderImageFiles(ctx.image).filter((f) => f.scope === 'boot');
      const entries: { from: string; to: string }[] = [];
      for (const f of boot) {
        const from = join(files, basename(f.path));
        writeFileSync(from, f.content);
        entries.push({ from, to: f.path });
      }
      // The environment block starts steady on slot A; only the agent and upgrades change it.
      const env = join(files, 'grubenv');
      await runPlan({ cmd: 'grub-editenv', args: [env, 'create'] });
      await runPlan({ cmd: 'grub-editenv', args: [env, 'set', 'active_slot=A', 'try_slot=', 'try_count=0'] });
      entries.push({ from: env, to: NODE_PATHS.grubEnv });
      // Slot A's kernel and initrd, where GRUB reads them cheaply (FAT, not the compressed slot):
      // GRUB then needs no driver for the slot's codec. An upgrade writes /slot-b/ with ROOT_B.
      for (const name of ['vmlinuz', 'initrd.img'] as const) {
        const from = join(files, `slot-a-${name}`);
        copyFileSync(join(disk(ctx).rootTree!, 'boot', name), from);
        entries.push({ from, to: slotBootPath('A', name) });
      }
      const efiTarget = grubTargets(ctx).find((t) => t !== 'i386-pc');
      if (efiTarget) entries.push({ from: work(ctx, `grub-${efiTarget}.img`), to: efiTarget === 'arm64-efi' ? '/EFI/BOOT/BOOTAA64.EFI' : '/EFI/BOOT/BOOTX64.EFI' });
      for (const e of entries) await utimes(e.from, ctx.sourceDateEpoch, ctx.sourceDateEpoch);
      await runPlan(vfatPlan({ output: file, part: esp, fat32: true }));
      for (const plan of mcopyPlans(file, entries, ctx.sourceDateEpoch)) await runPlan(plan);
      let used = 0;
      for (const e of entries) used += (await stat(e.from)).size;
      assertFits(esp, used, 'the ESP content');
      disk(ctx).images.esp = { file, used };
    },
  },
  {
    name: 'make the config partition',
    skip: noDisk,
    async run(ctx) {
      const part = partition(disk(ctx).layout, 'config');
      const file = work(ctx, 'config.img');
      const readme = work(ctx, 'README.txt');
      writeFileSync(readme, CONFIG_README.replaceAll('\n', '\r\n'));
      await utimes(readme, ctx.sourceDateEpoch, ctx.sourceDateEpoch);
      await runPlan(vfatPlan({ output: file, part, fat32: false }));
      for (const plan of mcopyPlans(file, [{ from: readme, to: '/README.txt' }], ctx.sourceDateEpoch)) await runPlan(plan);
      disk(ctx).images.config = { file, used: (await stat(readme)).size };
    },
  },
  {
    name: 'make the persistent partition',
    skip: noDisk,
    async run(ctx) {
      const part = partition(disk(ctx).layout, 'persistent');
      const file = work(ctx, 'persistent.img');
      await runPlan(ext4Plan({ output: file, part, sourceDateEpoch: ctx.sourceDateEpoch }));
      disk(ctx).images.persistent = { file, used: 0 };
    },
  },
  {
    name: 'assemble the raw image',
    skip: noDisk,
    async run(ctx) {
      const { layout, images } = disk(ctx);
      const tmp = join(ctx.outDir, `.${rootfsName(ctx)}.raw.tmp-${process.pid}`);
      disk(ctx).rawTmp = tmp;
      await rm(tmp, { force: true });
      writeFileSync(tmp, '');
      await truncate(tmp, layout.size);
      await runPlan(sfdiskPlan(tmp, sfdiskScript(layout)));
      for (const [role, img] of Object.entries(images) as [PartitionRole, { file: string }][]) {
        await writeAt(tmp, img.file, partition(layout, role).offset);
      }
      if (grubTargets(ctx).includes('i386-pc')) {
        const bios = partition(layout, 'biosBoot');
        const handle = await open(tmp, 'r+');
        try {
          const mbr = Buffer.alloc(512);
          await handle.read(mbr, 0, 512, 0);
          const patched = patchBiosBoot({
            bootImg: await readFile(join(HOST_GRUB, 'i386-pc/boot.img')),
            coreImg: await readFile(work(ctx, 'grub-i386-pc.img')),
            mbr, coreSector: bios.offset / 512, maxCoreBytes: bios.size,
          });
          await handle.write(patched.mbr, 0, 512, 0);
          await handle.write(patched.core, 0, patched.core.length, bios.offset);
          images.biosBoot = { file: work(ctx, 'grub-i386-pc.img'), used: patched.core.length };
        } finally {
          await handle.close();
        }
      }
    },
  },
  {
    name: 'write outputs: raw, qcow2, raw.zst, the PXE directory, the installer ISO, with sha256 sums',
    skip: noDisk,
    async run(ctx) {
      const tmp = disk(ctx).rawTmp!;
      const base = join(ctx.outDir, rootfsName(ctx));
      try {
        if (ctx.outputs.includes('qcow2')) await atomically(`${base}.qcow2`, (t) => runPlan(qcow2Plan(tmp, t), { timeoutMs: 30 * 60_000 }).then(() => undefined));
        if (ctx.outputs.includes('raw.zst')) await atomically(`${base}.raw.zst`, (t) => runPlan(zstdPlan(tmp, t), { timeoutMs: 30 * 60_000 }).then(() => undefined));
        if (ctx.outputs.includes('pxe')) await writePxeDir(ctx, `${base}.pxe`, tmp);
        if (ctx.outputs.includes('iso')) await writeIso(ctx, `${base}.iso`, tmp);
        if (ctx.outputs.includes('raw')) await rename(tmp, `${base}.raw`);
      } finally {
        await rm(tmp, { force: true });
      }
      for (const format of ctx.outputs.filter((f) => isDiskFormat(f) || f === 'iso')) await recordOutput(ctx, format, `${base}.${format}`);
    },
  },
  {
    name: 'write the upgrade bundle',
    skip: (ctx) => (ctx.outputs.includes('upgrade') || ctx.outputs.includes('oci') ? false : 'not among the outputs'),
    async run(ctx) {
      // For the OCI image alone, the bundle is only its content: it stays in the scratch space.
      const file = join(ctx.outputs.includes('upgrade') ? ctx.outDir : ctx.workDir, `${rootfsName(ctx)}.upgrade.tar`);
      const tree = disk(ctx).rootTree!;
      const manifest = await writeBundle(file, {
        image: ctx.image.name, version: ctx.image.version, arch: ctx.image.arch, postgresqlMajor: ctx.image.components.postgresql.major,
        upgradableFrom: ctx.image.upgrade.from ?? [`<${ctx.image.version}`], rootfsType: ctx.image.rootfs.type,
        sourceDateEpoch: ctx.sourceDateEpoch,
        parts: { vmlinuz: join(tree, 'boot/vmlinuz'), 'initrd.img': join(tree, 'boot/initrd.img'), 'root.img': disk(ctx).images.rootA!.file },
      }, ctx.signKey);
      if (!ctx.signKey) ctx.logger.warn(`${basename(file)} is unsigned: nodes refuse it (sign with --sign-key FILE)`);
      ctx.state.upgrade = { file, manifest, signed: Boolean(ctx.signKey) };
      if (ctx.outputs.includes('upgrade')) await recordOutput(ctx, 'upgrade', file);
    },
  },
  {
    name: 'write the OCI image for the System Upgrade Controller',
    skip: (ctx) => (ctx.outputs.includes('oci') ? false : 'not among the outputs'),
    async run(ctx) {
      const file = join(ctx.outDir, `${rootfsName(ctx)}.oci.tar`);
      const r = await writeOciArchive(file, {
        tree: disk(ctx).rootTree!, bundle: ctx.state.upgrade!.file, image: ctx.image.name, version: ctx.image.version,
        arch: ctx.image.arch, sourceDateEpoch: ctx.sourceDateEpoch, workDir: ctx.workDir,
      });
      ctx.state.oci = { file, manifestDigest: r.manifestDigest };
      await recordOutput(ctx, 'oci', file);
    },
  },
];

/** Text on the config partition, for the person who opens it after flashing. */
export const CONFIG_README = `geminik8s configuration partition (label CIDATA)

Put this node's seed here, as written by \`geminik8s seed --out DIR\`:
  user-data, meta-data, network-config   (cloud-init NoCloud)
  geminik8s/seed.yaml                    (geminik8s node settings; contains secrets)
or let \`geminik8s seed --into IMAGE\` write them into a copy of the image.
The node reads them on first boot. Without a seed it stays "unconfigured" and says why on
its console.
`;

/** Read the sizes used by each partition for the build report. */
export function partitionReport(state: DiskState): { number: number; name: string; fs: string; size: number; used: number | null }[] {
  return state.layout.partitions.map((p) => ({ number: p.number, name: p.name, fs: p.fs, size: p.size, used: state.images[p.role]?.used ?? (p.role === 'rootB' ? 0 : null) }));
}

export function readManifest(file: string): Record<string, unknown> | undefined {
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : undefined;
}
