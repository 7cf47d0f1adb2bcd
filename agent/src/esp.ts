import { readdir, readFile } from 'node:fs/promises';
import { runPlan, type CommandPlan } from '#common/exec.ts';

/**
 * The ESP is mounted read-only (fstab `ro`): a FAT mounted read-write carries its dirty flag
 * on disk, so every power cut left it "not properly unmounted", and a cut in the middle of
 * an unrelated write could damage the table GRUB reads. Writers (grubenv, an upgrade's
 * kernel and initrd) go through `withWritableEsp`, which remounts it read-write for as long
 * as the last of them runs and then read-only again (vfat clears its dirty flag then).
 */

/** `mount -o remount,MODE DIR`. */
export function remountPlan(dir: string, mode: 'rw' | 'ro'): CommandPlan {
  return { cmd: 'mount', args: ['-o', `remount,${mode}`, dir], title: `remount ${dir} ${mode}` };
}

/** One line of /proc/self/mountinfo: mount point, filesystem type, per-mount options. */
export interface MountEntry {
  mountPoint: string;
  fsType: string;
  readOnly: boolean;
}

/** Parse /proc/self/mountinfo (proc(5)); octal escapes in paths are decoded. */
export function parseMountinfo(text: string): MountEntry[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f.length < 10 || dash < 6) continue;
    out.push({ mountPoint: unescape(f[4]!), fsType: f[dash + 1]!, readOnly: f[5]!.split(',').includes('ro') });
  }
  return out;
}

/** What withWritableEsp touches; tests replace it. */
export interface EspDeps {
  mountinfo(): Promise<string>;
  /** Look into the directory, which mounts it when it is an automount point. */
  touch(dir: string): Promise<void>;
  run(plan: CommandPlan): Promise<void>;
  warn(message: string): void;
}

export const systemEspDeps: EspDeps = {
  mountinfo: () => readFile('/proc/self/mountinfo', 'utf8'),
  touch: async (dir) => {
    await readdir(dir);
  },
  run: async (plan) => {
    await runPlan(plan, { timeoutMs: 60_000 });
  },
  warn: (message) => process.stderr.write(`geminik8s-agent: ${message}\n`),
};

interface MountState {
  holders: number;
  /** Whether this process remounted it read-write (and so must put it back). */
  remounted: boolean;
  queue: Promise<void>;
}
const states = new Map<string, MountState>();

/**
 * Run `fn` with `espMount` writable. When the ESP is a read-only mount, it is remounted
 * read-write before the first concurrent writer of this process starts and read-only after
 * the last one ends, whatever `fn` did. A mount already read-write (an operator's own) is
 * left as it is, and so is a directory that is not a mount of its own (tests, a system
 * without a separate ESP). A failed return to read-only is reported, not thrown: the write
 * itself succeeded.
 */
export async function withWritableEsp<T>(espMount: string, fn: () => Promise<T>, deps: EspDeps = systemEspDeps): Promise<T> {
  const dir = espMount.replace(/\/+$/, '') || '/';
  let st = states.get(dir);
  if (!st) states.set(dir, (st = { holders: 0, remounted: false, queue: Promise.resolve() }));
  const state = st;
  const step = (work: () => Promise<void>): Promise<void> => {
    const next = state.queue.then(work);
    state.queue = next.catch(() => undefined);
    return next;
  };
  await step(async () => {
    state.holders++;
    if (state.holders > 1) return;
    try {
      await deps.touch(dir).catch(() => undefined);
      // The last entry for a mount point is the one on top (an automount's autofs lies below).
      const mount = parseMountinfo(await deps.mountinfo()).filter((m) => m.mountPoint === dir && m.fsType !== 'autofs').at(-1);
      if (mount?.readOnly) {
        await deps.run(remountPlan(dir, 'rw'));
        state.remounted = true;
      }
    } catch (err) {
      state.holders--;
      throw err;
    }
  });
  try {
    return await fn();
  } finally {
    await step(async () => {
      state.holders--;
      if (state.holders > 0 || !state.remounted) return;
      state.remounted = false;
      await deps.run(remountPlan(dir, 'ro')).catch((err: Error) => deps.warn(`could not remount ${dir} read-only again: ${err.message}`));
    });
  }
}
