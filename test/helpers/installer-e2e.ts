import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, mkdirSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import type { Vm } from '#qemu/index.ts';
import { tempDir } from './fixtures.ts';
import { installerBuild, linkOrCopy, type BuiltImage, type BuiltInstaller } from '#lab/test-image.ts';
import { STATE_FILE } from '#builder/pxe/server.ts';

// Under TCG on a loaded 2-core machine an installer moves its live root, then writes, reads
// back and hashes gigabytes. AVA gives up after 40 minutes without a result, so both waits
// together stay under it.
export const INSTALL_TIMEOUT = 25 * 60_000;
export const BOOT_TIMEOUT = 12 * 60_000;
// With panic=10 a failing initramfs reboots into the installer again and again; stop at the first one.
export const PANIC = /Kernel panic - not syncing|Rebooting automatically due to panic/;
export const TARGET_SERIAL = 'GK-TARGET';
export const OTHER_SERIAL = 'GK-OTHER';

/**
 * `build --stage disk --output FORMAT` of the cached test root (cached itself, keyed like the
 * image: installerBuild), linked into a directory of this test's own so that nothing a test
 * writes there (pxe serve's state file) reaches the cache. The path, and the seconds the build
 * took (0 from the cache).
 */
export async function buildInstaller(img: BuiltImage, format: 'pxe' | 'iso', arch: 'amd64' | 'arm64' = 'amd64', log: (m: string) => void = () => {}): Promise<BuiltInstaller> {
  const built = await installerBuild(img, format, arch, log);
  const path = join(tempDir(`gk-e2e-${format}-build-`), basename(built.path));
  linkTree(built.path, path);
  return { path, seconds: built.seconds };
}

/** Hard links (or copies) of `from`, a file or a directory's files, at `to`; never pxe serve's state. */
function linkTree(from: string, to: string): void {
  if (!statSync(from).isDirectory()) return linkOrCopy(from, to);
  mkdirSync(to);
  for (const n of readdirSync(from)) if (n !== STATE_FILE) linkTree(join(from, n), join(to, n));
}

export async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A blank (sparse) raw disk of `bytes`, with random bytes at its start and end when `marked`, so a write anywhere near them shows. */
export async function blankDisk(file: string, bytes: number, marked = false): Promise<string> {
  writeFileSync(file, '');
  await runPlan({ cmd: 'truncate', args: ['-s', String(bytes), file] });
  if (marked) {
    const fd = openSync(file, 'r+');
    writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, 0);
    writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, bytes - 1024 * 1024);
    closeSync(fd);
  }
  return file;
}

/** Waits for `re` on the serial console; fails at once when the guest panics. */
export async function onConsole(vm: Vm, re: RegExp, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const log = vm.log();
    const m = re.exec(log);
    if (m) return m[0];
    if (PANIC.test(log)) throw new Error(`the guest panicked:\n${log.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 3000));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${re} on the console:\n${vm.log().slice(-4000)}`);
}
