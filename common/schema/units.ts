import * as z from 'zod';

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const DURATION_FACTOR = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

/** "500ms", "3s", "2m", "1h", or a number of seconds; normalized to milliseconds. */
export const duration = z
  .union([z.number().nonnegative(), z.string().regex(DURATION, 'expected a duration such as 500ms, 3s or 2m')])
  .transform((v) => {
    if (typeof v === 'number') return Math.round(v * 1000);
    const [, n, unit] = DURATION.exec(v)!;
    return Math.round(Number(n) * DURATION_FACTOR[unit as keyof typeof DURATION_FACTOR]);
  });

const SIZE = /^(\d+)(B|KiB|MiB|GiB|TiB)$/;
const SIZE_FACTOR = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 } as const;

/** "64MiB", "2GiB", or a number of bytes; normalized to bytes. */
export const size = z
  .union([z.number().int().positive(), z.string().regex(SIZE, 'expected a size such as 64MiB or 2GiB')])
  .transform((v) => {
    if (typeof v === 'number') return v;
    const [, n, unit] = SIZE.exec(v)!;
    return Number(n) * SIZE_FACTOR[unit as keyof typeof SIZE_FACTOR];
  });

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)}${units[i]}`;
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** RFC 1123 DNS label: what a hostname, a Kubernetes node name and a cluster name must be. */
export const dnsLabel = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'must be a DNS label: lowercase letters, digits and "-", 1-63 characters, not starting or ending with "-"');

export const ipv4 = z.ipv4({ message: 'must be an IPv4 address such as 192.168.10.11' });

export const macAddress = z
  .string()
  .regex(/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/, 'must be a MAC address such as 52:54:00:12:34:56')
  .transform((m) => m.toLowerCase());

export const cidr = z
  .string()
  .regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, 'must be an IPv4 CIDR such as 10.42.0.0/16')
  .refine((c) => {
    const [ip, len] = c.split('/');
    return ipToInt(ip!) !== undefined && Number(len) <= 32;
  }, 'must be an IPv4 CIDR such as 10.42.0.0/16');

export const interfaceName = z
  .string()
  .regex(/^[a-zA-Z0-9_.:-]{1,15}$/, 'must be a Linux interface name (1-15 characters)');

export function ipToInt(ip: string): number | undefined {
  const parts = ip.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function networkOf(ip: string, prefix: number): number {
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return (ipToInt(ip)! & mask) >>> 0;
}

export function sameSubnet(a: string, b: string, prefix: number): boolean {
  return networkOf(a, prefix) === networkOf(b, prefix);
}

/** True when the two CIDRs share any address. */
export function cidrsOverlap(a: string, b: string): boolean {
  const [ipA, lenA] = a.split('/');
  const [ipB, lenB] = b.split('/');
  const len = Math.min(Number(lenA), Number(lenB));
  return networkOf(ipA!, len) === networkOf(ipB!, len);
}
