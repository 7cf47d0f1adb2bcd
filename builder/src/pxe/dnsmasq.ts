import type { CommandPlan } from '#common/exec.ts';

/** iPXE builds a plain PXE ROM chainloads, by client architecture, as Debian's `ipxe` package ships them (/usr/lib/ipxe). */
export const IPXE_BINARIES = { bios: 'undionly.kpxe', uefiX64: 'ipxe.efi' } as const;

export interface DnsmasqOptions {
  /** The interface on the factory network. */
  iface: string;
  /** The factory network's address, e.g. 10.0.0.0: dnsmasq answers as proxy DHCP beside the existing DHCP server. */
  network: string;
  /** The directory TFTP serves the iPXE binaries from. */
  tftpRoot: string;
  /** `pxe serve`'s URL, e.g. http://10.0.0.1:8080. */
  baseUrl: string;
}

/**
 * A dnsmasq configuration for a factory network (pure): proxy DHCP beside the existing DHCP
 * server (it hands out no addresses), no DNS, TFTP for the iPXE binaries. A plain PXE ROM
 * (no iPXE option 175) is told to chainload iPXE over TFTP; iPXE itself gets the chain script
 * from `pxe serve`, which then serves each MAC its own script.
 */
export function renderDnsmasqConfig(o: DnsmasqOptions): string {
  const script = `${o.baseUrl}/boot.ipxe`;
  return [
    '# geminik8s PXE: proxy DHCP + TFTP (written by geminik8s pxe serve --dnsmasq-config).',
    '# Check it with: dnsmasq --test --conf-file=THIS_FILE',
    'port=0',
    `interface=${o.iface}`,
    'bind-interfaces',
    `dhcp-range=${o.network},proxy`,
    'log-dhcp',
    'enable-tftp',
    `tftp-root=${o.tftpRoot}`,
    // iPXE says who it is with option 175; a plain ROM does not.
    'dhcp-match=set:ipxe,175',
    `pxe-service=tag:!ipxe,x86PC,"geminik8s: chainload iPXE",${IPXE_BINARIES.bios}`,
    `pxe-service=tag:!ipxe,X86-64_EFI,"geminik8s: chainload iPXE",${IPXE_BINARIES.uefiX64}`,
    `pxe-service=tag:ipxe,x86PC,"geminik8s",${script}`,
    `pxe-service=tag:ipxe,X86-64_EFI,"geminik8s",${script}`,
    `dhcp-boot=tag:ipxe,${script}`,
    '',
  ].join('\n');
}

/** dnsmasq's own syntax check of a configuration file. */
export function dnsmasqTestPlan(file: string): CommandPlan {
  return { cmd: 'dnsmasq', args: ['--test', `--conf-file=${file}`] };
}
