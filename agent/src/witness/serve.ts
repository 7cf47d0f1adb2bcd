import { readFile, mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { registerSecret } from '#common/log.ts';
import type { TlsMaterial } from '#common/tls.ts';
import type { LogPort } from '../core/ports.ts';
import { FileRecordStore } from './file-store.ts';
import { startWitnessHttp } from './http.ts';
import { WitnessService } from './service.ts';

export interface WitnessServeOptions {
  /** HOST:PORT to listen on. */
  listen: string;
  tokenFile: string;
  /** A directory holding witness.crt, witness.key and ca.crt (`geminik8s witness credentials`); unset only with `insecurePlaintext`. */
  tlsDir?: string;
  /** Development only: plain HTTP, no certificates. */
  insecurePlaintext?: boolean;
  /** Where the records live (one fsynced file per cluster). */
  stateDir: string;
  log: LogPort;
}

export const DEFAULT_WITNESS_STATE_DIR = '/var/lib/geminik8s-witness';
export const DEFAULT_WITNESS_PORT = 7444;

/** Parse HOST:PORT (IPv6 as [::1]:7444). */
export function parseListen(listen: string): { host: string; port: number } | undefined {
  const i = listen.lastIndexOf(':');
  if (i <= 0) return undefined;
  const host = listen.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const port = Number(listen.slice(i + 1));
  return Number.isInteger(port) && port > 0 && port < 65536 && host ? { host, port } : undefined;
}

/** The files `geminik8s witness credentials` writes into its --out directory. */
export const WITNESS_TLS_FILES = { cert: 'witness.crt', key: 'witness.key', ca: 'ca.crt' } as const;

async function witnessTls(opts: WitnessServeOptions): Promise<TlsMaterial | undefined> {
  if (opts.tlsDir && opts.insecurePlaintext) throw new Error('--tls-dir and --insecure-plaintext exclude each other');
  if (!opts.tlsDir) {
    if (opts.insecurePlaintext) return undefined;
    throw new Error('the witness speaks mutual TLS: pass --tls-dir DIR (from `geminik8s witness credentials`), or --insecure-plaintext for development');
  }
  const read = async (name: string): Promise<string> => {
    const file = join(opts.tlsDir!, name);
    try {
      return await readFile(file, 'utf8');
    } catch {
      throw new Error(`${file}: cannot read it (write the directory with \`geminik8s witness credentials --out ${opts.tlsDir}\`)`);
    }
  };
  const tls = { cert: await read(WITNESS_TLS_FILES.cert), key: await read(WITNESS_TLS_FILES.key), ca: await read(WITNESS_TLS_FILES.ca) };
  registerSecret(tls.key);
  return tls;
}

/** Load the records, then answer arbiter requests over HTTP. Resolves once listening. */
export async function serveWitness(opts: WitnessServeOptions): Promise<Server> {
  const addr = parseListen(opts.listen);
  if (!addr) throw new Error(`--listen must be HOST:PORT, got ${JSON.stringify(opts.listen)}`);
  const token = (await readFile(opts.tokenFile, 'utf8')).trim();
  if (token.length < 16) throw new Error(`${opts.tokenFile}: the token must be at least 16 characters`);
  const tls = await witnessTls(opts);
  await mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
  const { log } = opts;
  const service = new WitnessService({
    store: new FileRecordStore(opts.stateDir),
    now: () => performance.now(),
    audit: (cluster, e) =>
      log.info({ event: 'arbiter', cluster, ...e }, `${cluster}: ${e.op} by ${e.node ?? '-'}: ${e.code}, generation ${e.generation}, holder ${e.holder ?? 'nobody'}, promotable ${e.promotable ?? 'nobody'}${e.timeline ? `, timeline ${e.timeline}` : ''}`),
  });
  await service.load();
  const server = await startWitnessHttp({ host: addr.host, port: addr.port, token, service, log, ...(tls ? { tls } : {}) });
  log.info({ event: 'start', listen: opts.listen, stateDir: opts.stateDir, tls: Boolean(tls) }, `geminik8s witness listening (${tls ? 'mutual TLS' : 'plain HTTP: development only'})`);
  return server;
}
