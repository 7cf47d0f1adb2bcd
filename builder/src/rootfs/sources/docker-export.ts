import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { binarySafeExtract, rawPax, TarWriter, type TarHeader } from './tarfile.ts';

/** Paths Docker adds to every container it creates (its marker and the stubs it bind-mounts over); none is Debian's. */
export const DOCKER_PATHS = ['.dockerenv', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf', 'etc/mtab'];

/**
 * What Debian writes at the paths Docker bind-mounts during every RUN, which its maintainer
 * scripts therefore could not write there (netbase's postinst, systemd-resolved's postinst,
 * systemd's tmpfiles rule for /etc/mtab). Added to the root when the package is installed.
 * /etc/hostname has none: the node's name is set on first boot.
 */
export const DEBIAN_MASKED_FILES: { path: string; package: string; entry: Pick<TarHeader, 'type' | 'mode' | 'linkname'>; content?: string }[] = [
  {
    path: 'etc/hosts', package: 'netbase', entry: { type: 'file', mode: 0o644 },
    content: '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n',
  },
  { path: 'etc/resolv.conf', package: 'systemd-resolved', entry: { type: 'symlink', mode: 0o777, linkname: '../run/systemd/resolve/stub-resolv.conf' } },
  { path: 'etc/mtab', package: 'systemd', entry: { type: 'symlink', mode: 0o777, linkname: '../proc/self/mounts' } },
];

/** /dev as mmdebstrap makes it, so every source ships the same one (Docker exports only its own stubs). */
export const DEV_ENTRIES: Pick<TarHeader, 'name' | 'type' | 'mode' | 'linkname' | 'devmajor' | 'devminor'>[] = [
  ...([['console', 5, 1], ['full', 1, 7], ['null', 1, 3], ['ptmx', 5, 2], ['random', 1, 8], ['tty', 5, 0], ['urandom', 1, 9], ['zero', 1, 5]] as const).map(
    ([name, devmajor, devminor]) => ({ name: `dev/${name}`, type: 'character-device' as const, mode: 0o666, devmajor, devminor }),
  ),
  ...([['fd', '/proc/self/fd'], ['stdin', '/proc/self/fd/0'], ['stdout', '/proc/self/fd/1'], ['stderr', '/proc/self/fd/2']] as const).map(
    ([name, linkname]) => ({ name: `dev/${name}`, type: 'symlink' as const, mode: 0o777, linkname }),
  ),
  { name: 'dev/pts', type: 'directory', mode: 0o755 },
  { name: 'dev/shm', type: 'directory', mode: 0o755 },
];

export interface ExportSummary {
  entries: number;
  dropped: string[];
  added: string[];
}

const TYPES = new Set(['file', 'link', 'symlink', 'character-device', 'block-device', 'directory', 'fifo']);

// A member name as a root-relative path: no `./`, no leading or trailing slash.
function rel(name: string): string {
  return name.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
}

/**
 * Turn the tar of `docker export` into the root tar: Docker's own files dropped, Debian's
 * recreated where its packages are installed (DEBIAN_MASKED_FILES), /dev as mmdebstrap makes
 * it, names as `./path`, no owner names (numeric ids only), times clamped to
 * SOURCE_DATE_EPOCH, extended attributes kept byte for byte.
 */
export async function rootFromDockerExport(input: Readable, output: Writable, opts: { sourceDateEpoch: number }): Promise<ExportSummary> {
  const extract = binarySafeExtract();
  const writer = new TarWriter(output);
  const feeding = pipeline(input, extract);
  feeding.catch(() => undefined); // awaited below; an early failure also ends the loop
  const summary: ExportSummary = { entries: 0, dropped: [], added: [] };
  const installed = new Set<string>();
  const clamp = (d: Date | undefined): number => Math.min(Math.floor((d?.getTime() ?? 0) / 1000), opts.sourceDateEpoch);
  const fixed = { uid: 0, gid: 0, mtime: opts.sourceDateEpoch };
  let devDone = false;
  const addDev = async (): Promise<void> => {
    devDone = true;
    for (const d of DEV_ENTRIES) {
      await writer.add({ ...fixed, ...d, name: `./${d.name}${d.type === 'directory' ? '/' : ''}` });
      summary.added.push(d.name);
    }
  };
  await writer.add({ ...fixed, name: './', type: 'directory', mode: 0o755 });
  try {
    for await (const entry of extract) {
      const h = entry.header;
      const path = rel(h.name);
      const type = h.type === 'contiguous-file' ? 'file' : (h.type ?? 'file');
      const info = /^var\/lib\/dpkg\/info\/([^/:]+)(?::[a-z0-9]+)?\.list$/.exec(path);
      if (info) installed.add(info[1]!);
      if (!path || DOCKER_PATHS.includes(path) || path.startsWith('dev/') || !TYPES.has(type)) {
        if (path && path !== 'dev') summary.dropped.push(path);
        entry.resume();
        continue;
      }
      const xattrs = new Map([...(rawPax(h) ?? [])].filter(([k]) => k.startsWith('SCHILY.xattr.') || k.startsWith('LIBARCHIVE.xattr.')));
      const header: TarHeader = {
        name: `./${path}${type === 'directory' ? '/' : ''}`,
        type: type as TarHeader['type'],
        mode: h.mode ?? 0o644,
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        mtime: clamp(h.mtime),
        size: type === 'file' ? (h.size ?? 0) : 0,
        linkname: type === 'link' ? `./${rel(h.linkname ?? '')}` : (h.linkname ?? undefined),
        devmajor: h.devmajor,
        devminor: h.devminor,
        pax: xattrs.size ? xattrs : undefined,
      };
      if (type === 'file') await writer.add(header, entry as AsyncIterable<Buffer>);
      else {
        entry.resume();
        await writer.add(header);
      }
      summary.entries++;
      if (path === 'dev' && !devDone) await addDev();
    }
    await feeding;
    if (!devDone) await addDev();
    for (const f of DEBIAN_MASKED_FILES) {
      if (!installed.has(f.package)) continue;
      const content = f.content === undefined ? undefined : Buffer.from(f.content);
      await writer.add({ ...fixed, ...f.entry, name: `./${f.path}`, size: content?.length ?? 0 }, content);
      summary.added.push(f.path);
    }
    await writer.close();
  } catch (err) {
    extract.destroy();
    output.destroy();
    throw err;
  }
  return summary;
}
