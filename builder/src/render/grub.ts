import type { Image } from '#common/schema/image.ts';
import { PARTITION_NUMBERS, slotBootPath } from '#common/render/paths.ts';
import { renderTemplate } from './templates.ts';

/** The kernel arguments every slot gets, after root=, rootfstype=, ro and geminik8s.slot=. */
export function kernelCmdline(image: Image): string {
  // panic=10: a try slot whose kernel panics reboots, spending a try, instead of hanging.
  // net.ifnames=0: the first NIC is eth0, the cluster's default network.interface, on any
  // hardware; a node with a MAC in cluster.yaml is renamed by cloud-init anyway.
  const ifnames = image.boot.kernelArgs.some((a) => a.startsWith('net.ifnames=')) ? [] : ['net.ifnames=0'];
  return ['console=tty0', `console=${image.boot.serialConsole}`, 'panic=10', ...ifnames, ...image.boot.kernelArgs].join(' ');
}

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
