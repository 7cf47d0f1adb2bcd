import { existsSync } from 'node:fs';
import { readFile, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { assessHost, type HostFacts, type HostPreflight } from '#common/preflight.ts';
import { deviceHasAddress } from './netwait.ts';
import type { NodeContext } from './context.ts';

/** Where the host's facts are read; tests point these at directories they make. */
export interface HostPaths {
  proc: string;
  sys: string;
}

const HOST: HostPaths = { proc: '/proc', sys: '/sys' };

async function text(file: string): Promise<string | null> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    return null;
  }
}

/** MemTotal of a /proc/meminfo text, in bytes. */
export function memTotalOf(meminfo: string): number | null {
  const m = /^MemTotal:\s+(\d+)\s+kB$/m.exec(meminfo);
  return m ? Number(m[1]) * 1024 : null;
}

/** The nearest existing directory at or above `path` (the data directory may not exist yet). */
function existingAncestor(path: string): string {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}

/** Read memory, the data filesystem and the cluster link (the effectful half of the preflight). */
export async function readHostFacts(want: { dataDir: string; device: string; address: string }, paths: HostPaths = HOST, hasAddress = deviceHasAddress): Promise<HostFacts> {
  const meminfo = await text(join(paths.proc, 'meminfo'));
  let disk: HostFacts['disk'] = null;
  const at = existingAncestor(want.dataDir);
  try {
    const s = await statfs(at);
    disk = { path: at, freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
  } catch {
    disk = null;
  }
  const dev = join(paths.sys, 'class', 'net', want.device);
  const exists = existsSync(dev);
  const carrier = exists ? await text(join(dev, 'carrier')) : null;
  const speed = exists ? Number(await text(join(dev, 'speed'))) : NaN;
  return {
    memTotalBytes: meminfo === null ? null : memTotalOf(meminfo),
    disk,
    link: {
      device: want.device,
      exists,
      operstate: exists ? await text(join(dev, 'operstate')) : null,
      // Reading carrier fails (EINVAL) while the interface is administratively down: no link.
      carrier: exists ? carrier === '1' : null,
      speedMbps: Number.isFinite(speed) ? speed : null,
      mac: exists ? ((await text(join(dev, 'address')))?.toLowerCase() ?? null) : null,
    },
    addressPresent: await hasAddress(want.device, want.address),
  };
}

/** This node's preflight: memory, disk, link and address, with its clock and MAC. */
export async function hostPreflight(ctx: Pick<NodeContext, 'config' | 'spec' | 'self'>, now: () => number = Date.now, paths: HostPaths = HOST): Promise<HostPreflight> {
  const facts = await readHostFacts({ dataDir: ctx.config.postgresql.dataDir, device: ctx.spec.network.interface, address: ctx.self.ip }, paths);
  return { node: ctx.self.name, now: now(), mac: facts.link.mac, checks: assessHost(facts, { address: ctx.self.ip, kubernetes: ctx.config.kubernetes.enabled }) };
}
