import { lstat, readFile, readlink } from 'node:fs/promises';
import { posix } from 'node:path';

// Just enough ELF (64-bit, little-endian: x86-64 and AArch64) to find what a dynamically linked
// program needs to start: its interpreter (PT_INTERP) and its libraries (DT_NEEDED). Read from
// the file, so it works for a root of another architecture without running anything.

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NEEDED = 1;
const DT_STRTAB = 5;

export interface ElfLinking {
  interpreter?: string;
  needed: string[];
}

/** The interpreter and DT_NEEDED names of an ELF file's bytes; throws on anything else. */
export function elfLinking(b: Buffer, what: string): ElfLinking {
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${what}: not an ELF file`);
  if (b[4] !== 2 || b[5] !== 1) throw new Error(`${what}: not a 64-bit little-endian ELF file`);
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  const loads: { vaddr: number; offset: number; filesz: number }[] = [];
  let interpreter: string | undefined;
  let dynamic: { offset: number; size: number } | undefined;
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    const type = b.readUInt32LE(p);
    const offset = Number(b.readBigUInt64LE(p + 8));
    const vaddr = Number(b.readBigUInt64LE(p + 16));
    const filesz = Number(b.readBigUInt64LE(p + 32));
    if (type === PT_LOAD) loads.push({ vaddr, offset, filesz });
    if (type === PT_INTERP) interpreter = b.toString('latin1', offset, offset + filesz).replace(/\0.*$/s, '');
    if (type === PT_DYNAMIC) dynamic = { offset, size: filesz };
  }
  const needed: number[] = [];
  let strtab: number | undefined;
  if (dynamic) {
    for (let p = dynamic.offset; p + 16 <= dynamic.offset + dynamic.size; p += 16) {
      const tag = Number(b.readBigInt64LE(p));
      const val = Number(b.readBigUInt64LE(p + 8));
      if (tag === 0) break;
      if (tag === DT_NEEDED) needed.push(val);
      if (tag === DT_STRTAB) strtab = val;
    }
  }
  if (needed.length && strtab === undefined) throw new Error(`${what}: DT_NEEDED without DT_STRTAB`);
  const toOffset = (vaddr: number): number => {
    const seg = loads.find((l) => vaddr >= l.vaddr && vaddr < l.vaddr + l.filesz);
    if (!seg) throw new Error(`${what}: address 0x${vaddr.toString(16)} is in no loaded segment`);
    return vaddr - seg.vaddr + seg.offset;
  };
  const names = needed.map((n) => {
    const start = toOffset(strtab!) + n;
    return b.toString('latin1', start, b.indexOf(0, start));
  });
  return { ...(interpreter ? { interpreter } : {}), needed: names };
}

/** Resolve `path` inside `tree` as the loader would see it there: symlinks relative to the tree. */
export async function resolveInTree(tree: string, path: string): Promise<string> {
  let current = posix.normalize(path);
  for (let hops = 0; hops < 40; hops++) {
    const parts = current.split('/').filter(Boolean);
    let resolved = '/';
    let changed = false;
    for (let i = 0; i < parts.length; i++) {
      const next = posix.join(resolved, parts[i]!);
      const st = await lstat(posix.join(tree, next)).catch(() => undefined);
      if (!st) throw new Error(`${path}: ${next} does not exist in ${tree}`);
      if (st.isSymbolicLink()) {
        const target = await readlink(posix.join(tree, next));
        current = posix.join(target.startsWith('/') ? target : posix.join(resolved, target), ...parts.slice(i + 1));
        changed = true;
        break;
      }
      resolved = next;
    }
    if (!changed) return resolved;
  }
  throw new Error(`${path}: too many symbolic links in ${tree}`);
}

/** Where Debian's loader looks for libraries, per architecture. */
export function libraryDirs(arch: 'amd64' | 'arm64'): string[] {
  const triplet = arch === 'amd64' ? 'x86_64-linux-gnu' : 'aarch64-linux-gnu';
  return [`/lib/${triplet}`, `/usr/lib/${triplet}`, '/lib', '/usr/lib'];
}

/**
 * A program and everything it needs to start, from a root tree: `{ at, from }` where `at` is
 * the path the loader asks for and `from` the real file in the tree.
 */
export async function elfClosure(tree: string, program: string, arch: 'amd64' | 'arm64'): Promise<{ at: string; from: string }[]> {
  const out = new Map<string, string>();
  const visit = async (at: string): Promise<void> => {
    if (out.has(at)) return;
    const real = await resolveInTree(tree, at);
    out.set(at, real);
    const linking = elfLinking(await readFile(posix.join(tree, real)), `${tree}${real}`);
    if (linking.interpreter) await visit(linking.interpreter);
    for (const lib of linking.needed) {
      let found: string | undefined;
      for (const dir of libraryDirs(arch)) {
        const candidate = posix.join(dir, lib);
        if (await resolveInTree(tree, candidate).then(() => true, () => false)) {
          found = candidate;
          break;
        }
      }
      if (!found) throw new Error(`${program} needs ${lib}, which is in none of ${libraryDirs(arch).join(', ')} under ${tree}`);
      await visit(found);
    }
  };
  await visit(program);
  return [...out].map(([at, from]) => ({ at, from })).sort((a, b) => a.at.localeCompare(b.at));
}
