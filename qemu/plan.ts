import { isAbsolute } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import type { CommandPlan } from '#common/exec.ts';

export type Arch = 'amd64' | 'arm64';
export type Firmware = 'bios' | 'uefi';
export type DiskFormat = 'raw' | 'qcow2';

/** A host port on 127.0.0.1 forwarded to a guest port (user networking only). */
export interface HostForward {
  hostPort: number;
  guestPort: number;
  proto?: 'tcp' | 'udp';
}

/**
 * A guest NIC. `user`: QEMU user networking, always `restrict=on` (the guest reaches nothing
 * but the forwarded ports, which listen on 127.0.0.1 only). `socket`: a point-to-point link
 * between two VMs over TCP on 127.0.0.1: one side `listen`s on a port, the other `connect`s.
 * `tap`: a tap device that already exists where QEMU runs (see `QemuOptions.netns`), opened
 * without QEMU's ifup/ifdown scripts; whoever made it bridges it.
 */
/**
 * A guest address on QEMU's user network whose TCP connections each start `cmd` on the host,
 * talking to it over stdin/stdout (QEMU's guestfwd `cmd:`). The only way out of a `restrict=on`
 * network besides hostfwd, e.g. to a server on 127.0.0.1 through a relay.
 */
export interface GuestForward {
  addr: string;
  port: number;
  cmd: string;
}

/** Network boot on a user network: QEMU's own DHCP names `bootfile`, its TFTP server serves `tftp`, and the NIC boots first. */
export interface NetBoot {
  tftp: string;
  bootfile: string;
}

export type NetworkSpec =
  | { kind: 'user'; hostfwd?: HostForward[]; guestfwd?: GuestForward[]; netboot?: NetBoot; mac?: string }
  | { kind: 'socket'; listen?: number; connect?: number; mac: string }
  | { kind: 'tap'; ifname: string; mac: string };

/** Where Debian 12 installs the UEFI firmware, and which package provides it. */
export const UEFI_FIRMWARE: Record<Arch, { code: string; vars: string; package: string; padTo?: number }> = {
  amd64: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', package: 'ovmf' },
  // The virt machine maps two 64 MiB flash devices: AAVMF images must be exactly that size.
  arm64: { code: '/usr/share/AAVMF/AAVMF_CODE.fd', vars: '/usr/share/AAVMF/AAVMF_VARS.fd', package: 'qemu-efi-aarch64', padTo: 64 * 1024 * 1024 },
};

export const QEMU_BINARY: Record<Arch, string> = { amd64: 'qemu-system-x86_64', arm64: 'qemu-system-aarch64' };

export interface QemuOptions {
  arch: Arch;
  firmware: Firmware;
  /** The boot disk; `serial` shows in the guest as the disk's serial (and /dev/disk/by-id). */
  disk: { path: string; format: DiskFormat; serial?: string };
  /** A NoCloud seed ISO, attached read-only as a second drive (default `virtio`). */
  seed?: { path: string; as?: 'virtio' | 'cdrom' };
  /** More raw disks, virtio drives, read-only unless `writable`; the guest finds each at /dev/disk/by-id/virtio-SERIAL. */
  drives?: { path: string; serial: string; writable?: boolean }[];
  /**
   * An ISO in a CD drive, booted after the disk (bootindex 2), as on a machine whose boot order
   * is "disk, then CD": a blank disk falls through to it, an installed one boots itself.
   */
  cdrom?: { path: string };
  /** UEFI only: the read-only firmware code (default: Debian's) and the per-run writable VARS copy. */
  uefi?: { code?: string; vars: string };
  /** MiB, default 2048. */
  memoryMiB?: number;
  /** Default 2. */
  cpus?: number;
  /** QEMU's `-cpu` value; default TCG_CPU for the architecture. */
  cpu?: string;
  /** The serial console is written to this file. */
  serialLog: string;
  /** QMP control socket (a unix socket path). */
  qmpSocket: string;
  networks?: NetworkSpec[];
  /** Direct kernel boot instead of the disk's boot loader. */
  kernel?: { kernel: string; initrd?: string; append?: string };
  /** A VM name shown in `ps` and QMP. */
  name?: string;
  /** A virtio console (the guest's /dev/hvc0) on this unix socket: test images put a root shell there. */
  consoleSocket?: string;
  /**
   * Run QEMU inside this network namespace (`ip netns exec`), where its tap devices live. Its
   * unix sockets and files are paths, which a network namespace does not change.
   */
  netns?: string;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const UNIX_PATH_MAX = 107;

/** A Linux interface name: at most 15 bytes (IFNAMSIZ less the NUL), no slash or space. */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** A network namespace name as `ip netns` keeps it under /run/netns. */
const NETNS = /^[A-Za-z0-9_.-]{1,64}$/;

const SERIAL = /^[A-Za-z0-9_-]{1,20}$/;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

const isPort = (p: unknown): boolean => Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 65535;

/** QEMU's option syntax splits on commas; a literal comma is written twice. */
const optValue = (s: string): string => s.replaceAll(',', ',,');

/** Every problem in `opts`, as messages; empty when the options are usable. */
export function qemuOptionProblems(opts: QemuOptions): string[] {
  const problems: string[] = [];
  if (opts.arch !== 'amd64' && opts.arch !== 'arm64') problems.push(`arch: expected amd64 or arm64, found ${JSON.stringify(opts.arch)}`);
  if (opts.firmware !== 'bios' && opts.firmware !== 'uefi') problems.push(`firmware: expected bios or uefi, found ${JSON.stringify(opts.firmware)}`);
  if (opts.arch === 'arm64' && opts.firmware === 'bios') problems.push('firmware: arm64 has no BIOS; arm64 machines boot with UEFI (AAVMF): use --uefi');
  if (opts.firmware === 'uefi' && !opts.uefi?.vars) problems.push('uefi.vars: UEFI needs a writable copy of the VARS file for this run');
  if (opts.firmware === 'bios' && opts.uefi) problems.push('uefi: UEFI firmware files given but firmware is bios');
  if (!opts.disk?.path) problems.push('disk.path: missing');
  if (opts.disk && opts.disk.format !== 'raw' && opts.disk.format !== 'qcow2') problems.push(`disk.format: expected raw or qcow2, found ${JSON.stringify(opts.disk.format)}`);
  if (opts.seed && !opts.seed.path) problems.push('seed.path: missing');
  if (opts.cdrom && !opts.cdrom.path) problems.push('cdrom.path: missing');
  const serialProblem = (at: string, serial: string): void => {
    if (!SERIAL.test(serial)) problems.push(`${at}.serial: expected 1 to 20 letters, digits, - or _ (virtio-blk serials are at most 20 bytes), found ${JSON.stringify(serial)}`);
  };
  if (opts.disk?.serial !== undefined) serialProblem('disk', opts.disk.serial);
  for (const [i, d] of (opts.drives ?? []).entries()) {
    if (!d.path) problems.push(`drives.${i}.path: missing`);
    serialProblem(`drives.${i}`, d.serial);
  }
  if (opts.seed?.as !== undefined && opts.seed.as !== 'virtio' && opts.seed.as !== 'cdrom') problems.push(`seed.as: expected virtio or cdrom, found ${JSON.stringify(opts.seed.as)}`);
  const memory = opts.memoryMiB ?? 2048;
  if (!Number.isInteger(memory) || memory < 128 || memory > 65536) problems.push(`memory: expected a whole number of MiB between 128 and 65536, found ${memory}`);
  const cpus = opts.cpus ?? 2;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 8) problems.push(`cpus: expected 1 to 8, found ${cpus}`);
  if (opts.cpu !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.=+-]*(?:,[A-Za-z0-9_.=+-]+)*$/.test(opts.cpu)) problems.push(`cpu: expected a QEMU CPU model with optional ,feature flags (as max,-erms), found ${JSON.stringify(opts.cpu)}`);
  if (!opts.serialLog) problems.push('serialLog: missing');
  if (!opts.qmpSocket) problems.push('qmpSocket: missing');
  else if (Buffer.byteLength(opts.qmpSocket) > UNIX_PATH_MAX) problems.push(`qmpSocket: ${opts.qmpSocket} is longer than ${UNIX_PATH_MAX} bytes, the limit of a unix socket path (set TMPDIR to a shorter directory)`);
  if (opts.kernel && !opts.kernel.kernel) problems.push('kernel.kernel: missing');
  const hostPorts = new Set<number>();
  (opts.networks ?? []).forEach((n, i) => {
    const at = `networks.${i}`;
    if (n.mac !== undefined && !MAC.test(n.mac)) problems.push(`${at}.mac: expected six hex octets like 52:54:00:12:34:56, found ${JSON.stringify(n.mac)}`);
    else if (n.mac !== undefined && parseInt(n.mac.slice(0, 2), 16) & 1) problems.push(`${at}.mac: ${n.mac} is a multicast address; the first octet must be even`);
    if (n.kind === 'user') {
      (n.hostfwd ?? []).forEach((f, j) => {
        if (!isPort(f.hostPort)) problems.push(`${at}.hostfwd.${j}.hostPort: expected a port 1-65535, found ${f.hostPort}`);
        if (!isPort(f.guestPort)) problems.push(`${at}.hostfwd.${j}.guestPort: expected a port 1-65535, found ${f.guestPort}`);
        if (f.proto !== undefined && f.proto !== 'tcp' && f.proto !== 'udp') problems.push(`${at}.hostfwd.${j}.proto: expected tcp or udp`);
        const key = (f.proto === 'udp' ? 100000 : 0) + f.hostPort;
        if (hostPorts.has(key)) problems.push(`${at}.hostfwd.${j}.hostPort: 127.0.0.1:${f.hostPort} is forwarded twice`);
        hostPorts.add(key);
      });
      (n.guestfwd ?? []).forEach((f, j) => {
        // QEMU's user network is 10.0.2.0/24 unless told otherwise; a forward elsewhere is never reached.
        const m = IPV4.exec(f.addr ?? '');
        if (!m || m.slice(1).some((o) => Number(o) > 255) || !f.addr.startsWith('10.0.2.')) problems.push(`${at}.guestfwd.${j}.addr: expected an address in QEMU's user network 10.0.2.0/24, found ${JSON.stringify(f.addr)}`);
        if (!isPort(f.port)) problems.push(`${at}.guestfwd.${j}.port: expected a port 1-65535, found ${f.port}`);
        if (!f.cmd?.trim()) problems.push(`${at}.guestfwd.${j}.cmd: missing`);
      });
      if (n.netboot) {
        if (!isAbsolute(n.netboot.tftp ?? '')) problems.push(`${at}.netboot.tftp: expected an absolute directory, found ${JSON.stringify(n.netboot.tftp)}`);
        if (!/^[A-Za-z0-9._-]+$/.test(n.netboot.bootfile ?? '')) problems.push(`${at}.netboot.bootfile: expected a file name in the TFTP directory, found ${JSON.stringify(n.netboot.bootfile)}`);
      }
    } else if (n.kind === 'socket') {
      if ((n.listen === undefined) === (n.connect === undefined)) problems.push(`${at}: a socket network needs exactly one of listen or connect`);
      const port = n.listen ?? n.connect;
      if (port !== undefined && !isPort(port)) problems.push(`${at}.${n.listen !== undefined ? 'listen' : 'connect'}: expected a port 1-65535, found ${port}`);
      if (!n.mac) problems.push(`${at}.mac: a socket network needs a MAC address (both ends of the link must differ)`);
    } else if (n.kind === 'tap') {
      if (!IFNAME.test(n.ifname ?? '')) problems.push(`${at}.ifname: expected an interface name of 1 to 15 letters, digits, _ . or -, found ${JSON.stringify(n.ifname)}`);
      if (!n.mac) problems.push(`${at}.mac: a tap network needs a MAC address (every guest on the bridge must differ)`);
    } else {
      problems.push(`${at}.kind: expected user, socket or tap, found ${JSON.stringify((n as { kind: unknown }).kind)}`);
    }
  });
  if (opts.netns !== undefined && !NETNS.test(opts.netns)) problems.push(`netns: expected a namespace name of letters, digits, _ . or -, found ${JSON.stringify(opts.netns)}`);
  return problems;
}

/** Throw a GeminiError (exit 2) listing every problem in `opts`. */
export function validateQemuOptions(opts: QemuOptions): void {
  const problems = qemuOptionProblems(opts);
  if (problems.length) {
    throw new GeminiError(`invalid QEMU options:\n${problems.map((p) => `  ${p}`).join('\n')}`, ExitCode.invalidInput);
  }
}

function networkArgs(n: NetworkSpec, i: number): string[] {
  const id = `net${i}`;
  let netdev: string;
  let boot = '';
  if (n.kind === 'user') {
    // restrict=on isolates the guest; forwards listen on the loopback address only.
    netdev = [
      `user,id=${id},restrict=on`,
      ...(n.hostfwd ?? []).map((f) => `hostfwd=${f.proto ?? 'tcp'}:127.0.0.1:${f.hostPort}-:${f.guestPort}`),
      ...(n.guestfwd ?? []).map((f) => `guestfwd=tcp:${f.addr}:${f.port}-cmd:${optValue(f.cmd)}`),
      ...(n.netboot ? [`tftp=${optValue(n.netboot.tftp)}`, `bootfile=${optValue(n.netboot.bootfile)}`] : []),
    ].join(',');
    // Before the disk (bootindex=1): the firmware tries the network first, and the disk when
    // the network boot exits.
    if (n.netboot) boot = ',bootindex=0';
  } else if (n.kind === 'tap') {
    netdev = `tap,id=${id},ifname=${n.ifname},script=no,downscript=no`;
  } else {
    netdev = n.listen !== undefined ? `socket,id=${id},listen=127.0.0.1:${n.listen}` : `socket,id=${id},connect=127.0.0.1:${n.connect}`;
  }
  const mac = n.mac ?? `52:54:00:00:00:${(0x10 + i).toString(16).padStart(2, '0')}`;
  return ['-netdev', netdev, '-device', `virtio-net-pci,netdev=${id},mac=${mac}${boot}`];
}

/**
 * The CPU each architecture's guest gets under TCG (docs/qemu.md has the measurements).
 * - amd64: QEMU's `max` less ERMS and FSRM. With them, Linux's memcpy and its copies to and from
 *   user space are `rep movsb`, which TCG runs one byte per loop turn: direct boots of the test
 *   image reached the marker in 54-96 s (median 67) with `max`, 42-55 s (median 47) without them.
 * - arm64: pointer authentication with QEMU's cheap hash instead of emulating QARMA5, which
 *   Debian's arm64 code (built with branch protection) runs on every call: 3x faster here.
 */
export const TCG_CPU: Record<Arch, string> = { amd64: 'max,-erms,-fsrm', arm64: 'max,pauth-impdef=on' };

/**
 * The QEMU command line for one VM, as data. TCG only (no KVM), no display, no default
 * devices, serial console to a file, QMP on a unix socket. Throws GeminiError (exit 2) for
 * invalid options.
 */
export function qemuPlan(opts: QemuOptions): CommandPlan {
  validateQemuOptions(opts);
  const args: string[] = ['-name', optValue(opts.name ?? 'geminik8s'), '-no-user-config', '-nodefaults', '-display', 'none'];
  if (opts.arch === 'amd64') args.push('-machine', 'q35', '-accel', 'tcg,thread=multi', '-cpu', opts.cpu ?? TCG_CPU.amd64);
  else args.push('-machine', 'virt', '-accel', 'tcg', '-cpu', opts.cpu ?? TCG_CPU.arm64);
  args.push('-m', String(opts.memoryMiB ?? 2048), '-smp', String(opts.cpus ?? 2));
  if (opts.firmware === 'uefi' && opts.uefi) {
    const code = opts.uefi.code ?? UEFI_FIRMWARE[opts.arch].code;
    args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${optValue(code)}`);
    args.push('-drive', `if=pflash,format=raw,unit=1,file=${optValue(opts.uefi.vars)}`);
  }
  args.push('-drive', `if=none,id=disk0,format=${opts.disk.format},file=${optValue(opts.disk.path)}`);
  args.push('-device', `virtio-blk-pci,drive=disk0,bootindex=1${opts.disk.serial ? `,serial=${opts.disk.serial}` : ''}`);
  // CD drives sit on virtio-scsi, which works on both q35 and virt (the virt machine has no IDE controller).
  if (opts.cdrom || opts.seed?.as === 'cdrom') args.push('-device', 'virtio-scsi-pci,id=scsi0');
  if (opts.cdrom) {
    args.push('-drive', `if=none,id=cd0,format=raw,readonly=on,media=cdrom,file=${optValue(opts.cdrom.path)}`);
    args.push('-device', 'scsi-cd,bus=scsi0.0,drive=cd0,bootindex=2');
  }
  if (opts.seed) {
    if ((opts.seed.as ?? 'virtio') === 'virtio') {
      args.push('-drive', `if=none,id=seed0,format=raw,readonly=on,file=${optValue(opts.seed.path)}`);
      args.push('-device', 'virtio-blk-pci,drive=seed0');
    } else {
      args.push('-drive', `if=none,id=seed0,format=raw,readonly=on,media=cdrom,file=${optValue(opts.seed.path)}`);
      args.push('-device', 'scsi-cd,bus=scsi0.0,drive=seed0');
    }
  }
  (opts.drives ?? []).forEach((d, i) => {
    args.push('-drive', `if=none,id=extra${i},format=raw,${d.writable ? '' : 'readonly=on,'}file=${optValue(d.path)}`);
    args.push('-device', `virtio-blk-pci,drive=extra${i},serial=${optValue(d.serial)}`);
  });
  (opts.networks ?? []).forEach((n, i) => args.push(...networkArgs(n, i)));
  // Entropy for the guest: TCG boots are slow enough without waiting for the CRNG.
  args.push('-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-pci,rng=rng0');
  args.push('-chardev', `file,id=serial0,path=${optValue(opts.serialLog)}`, '-serial', 'chardev:serial0');
  args.push('-qmp', `unix:${optValue(opts.qmpSocket)},server=on,wait=off`);
  if (opts.consoleSocket) {
    args.push('-device', 'virtio-serial-pci,id=vser0', '-chardev', `socket,id=console0,path=${optValue(opts.consoleSocket)},server=on,wait=off`, '-device', 'virtconsole,bus=vser0.0,chardev=console0,name=geminik8s.console');
  }
  if (opts.kernel) {
    args.push('-kernel', opts.kernel.kernel);
    if (opts.kernel.initrd) args.push('-initrd', opts.kernel.initrd);
    if (opts.kernel.append) args.push('-append', opts.kernel.append);
  }
  // `ip netns exec` execs QEMU in place: the process (and its pid) is QEMU's own.
  if (opts.netns) return { cmd: 'ip', args: ['netns', 'exec', opts.netns, QEMU_BINARY[opts.arch], ...args], title: `QEMU ${opts.arch} in ${opts.netns}` };
  return { cmd: QEMU_BINARY[opts.arch], args, title: `QEMU ${opts.arch}` };
}

/**
 * A throwaway copy-on-write overlay over `image`, so a boot never modifies it. `image` must be
 * absolute: qemu-img resolves a relative backing file against the overlay's directory.
 */
export function overlayPlan(image: string, format: DiskFormat, overlayPath: string): CommandPlan {
  if (!isAbsolute(image)) throw new GeminiError(`overlay backing image must be an absolute path, found ${image}`, ExitCode.invalidInput);
  if (format !== 'raw' && format !== 'qcow2') throw new GeminiError(`image format: expected raw or qcow2, found ${JSON.stringify(format)}`, ExitCode.invalidInput);
  return { cmd: 'qemu-img', args: ['create', '-q', '-f', 'qcow2', '-b', image, '-F', format, overlayPath], title: 'disk overlay' };
}

/** Architecture named in an image file name (`...-amd64...` / `...-arm64...`), if any. */
export function archFromFileName(file: string): Arch | undefined {
  const base = file.split('/').pop() ?? file;
  const m = /[-_.](amd64|arm64|x86_64|aarch64)(?=[-_.]|$)/.exec(base);
  if (!m) return undefined;
  return m[1] === 'amd64' || m[1] === 'x86_64' ? 'amd64' : 'arm64';
}

/** Disk format from an image file name: `.raw`/`.img` raw, `.qcow2` qcow2. */
export function formatFromFileName(file: string): DiskFormat | undefined {
  if (/\.(raw|img)$/i.test(file)) return 'raw';
  if (/\.qcow2$/i.test(file)) return 'qcow2';
  return undefined;
}
