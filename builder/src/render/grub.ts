import type { Image } from '#common/schema/image.ts';
import { PARTITION_NUMBERS, slotBootPath } from '#common/render/paths.ts';
import { renderTemplate } from './templates.ts';

/** The kernel arguments every slot gets, after root=, rootfstype=, ro and geminik8s.slot=. */
export function kernelCmdline(image: Image): string {
  // panic=10: a try slot whose kernel panics reboots, spending a try, instead of hanging.
  // net.ifnames=0: the first NIC is eth0, the cluster's default network.interface, on any
  // hardware; a node with a MAC in cluster.yaml is renamed by cloud-init anyway.
  const ifnames = image.boot.kernelArgs.some((a) => a.startsWith('net.ifnames=')) ? [] : ['net.ifnames=0'];
  const lsm = image.boot.kernelArgs.some((a) => a.startsWith('lsm=')) ? [] : [`lsm=${NODE_LSMS}`];
  return ['console=tty0', `console=${image.boot.serialConsole}`, 'panic=10', ...ifnames, ...lsm, ...image.boot.kernelArgs].join(' ');
}

/**
 * The security modules a node boots with: Debian's kernel list (CONFIG_LSM of 6.12, amd64 and
 * arm64) without `bpf`. With the BPF LSM active, systemd loads and attaches its restrict-fs
 * program at every start of PID 1, and that program then runs on every open(2) of every
 * process; it enforces `RestrictFileSystems=`, which no unit in the image sets. Under TCG the
 * attach alone took 5.4 s of a loaded reboot before any unit started. `lsm=` in
 * `boot.kernelArgs` replaces this list.
 */
export const NODE_LSMS = 'landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,ipe';

/** grub.cfg for the ESP: A/B slots with boot counting through the grubenv block. */
export function renderGrubCfg(image: Image): string {
  const [device, speed] = image.boot.serialConsole.split(',');
  const unit = /^ttyS(\d+)$/.exec(device ?? '')?.[1];
  const decrements = [];
  for (let n = image.boot.tries; n >= 1; n--) decrements.push({ from: n, to: n - 1 });
  return renderTemplate('grub.cfg.hbs', {
    imageName: image.name,
    imageVersion: image.version,
    arch: image.arch,
    // GRUB's serial terminal drives 16550 UARTs (ttyS*); arm64 consoles come through EFI.
    serial: unit !== undefined,
    serialUnit: unit ?? '0',
    serialSpeed: speed ?? '115200',
    timeoutSeconds: image.boot.timeoutSeconds,
    decrements,
    rootfsType: image.rootfs.type,
    cmdline: kernelCmdline(image),
    slots: [
      { name: 'A', id: 'a', partition: PARTITION_NUMBERS.rootA, partlabel: 'ROOT_A', kernel: slotBootPath('A', 'vmlinuz'), initrd: slotBootPath('A', 'initrd.img') },
      { name: 'B', id: 'b', partition: PARTITION_NUMBERS.rootB, partlabel: 'ROOT_B', kernel: slotBootPath('B', 'vmlinuz'), initrd: slotBootPath('B', 'initrd.img') },
    ],
  });
}
