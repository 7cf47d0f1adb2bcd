// Runs inside the client namespace: inserts sequential ids through the VIP and prints one
// JSON line per ACKNOWLEDGED (committed) insert. Bounded in count and time.
import { readFileSync } from 'node:fs';
import pg from 'pg';

const [host, port, user, password, database, maxSecondsArg, intervalArg] = process.argv.slice(2);
const maxMs = Number(maxSecondsArg ?? 600) * 1000;
const intervalMs = Number(intervalArg ?? 50);
const started = Date.now();
// Short by default, to see a failover to the second on a clean LAN; a bench on a slow network
// raises them, or a TLS + SCRAM connection (about five round trips) could never complete.
const connectTimeoutMs = Number(process.env.WRITER_CONNECT_TIMEOUT_MS ?? 1000);
const queryTimeoutMs = Number(process.env.WRITER_QUERY_TIMEOUT_MS ?? 2000);
// As Kine connects: TLS, the server's certificate from the cluster CA and covering the VIP.
const ssl = process.env.WRITER_CA_FILE
  ? { ca: readFileSync(process.env.WRITER_CA_FILE, 'utf8'), cert: readFileSync(process.env.WRITER_CERT_FILE!, 'utf8'), key: readFileSync(process.env.WRITER_KEY_FILE!, 'utf8') }
  : undefined;
let id = 0;
let client: pg.Client | undefined;
let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});

// Several hosts: as libpq with target_session_attrs=read-write, try each (the last good one
// first) and keep the first whose session is not read-only.
const hosts = host!.split(',');
let preferred = 0;

async function connect(): Promise<pg.Client> {
  let last: unknown;
  for (let i = 0; i < hosts.length; i++) {
    const at = (preferred + i) % hosts.length;
    try {
      const c = await connectTo(hosts[at]!);
      if (hosts.length > 1 && (await c.query('SHOW transaction_read_only')).rows[0]?.transaction_read_only !== 'off') {
        void c.end().catch(() => undefined);
        throw new Error(`${hosts[at]} is read-only`);
      }
      preferred = at;
      return c;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

async function connectTo(host: string): Promise<pg.Client> {
  const c = new pg.Client({ host, port: Number(port), user, password, database, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs, application_name: 'harness-writer', ...(ssl ? { ssl } : {}) });
  c.on('error', () => undefined);
  try {
    await c.connect();
    await c.query('CREATE TABLE IF NOT EXISTS harness_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())');
    return c;
  } catch (err) {
    // Connected but refused (read-only, say): close it, or every retry leaks a server connection
    // until max_connections is used up.
    void c.end().catch(() => undefined);
    throw err;
  }
}

while (!stopping && Date.now() - started < maxMs && id < 1_000_000) {
  try {
    client ??= await connect();
    const next = id + 1;
    await client.query('INSERT INTO harness_writes (id) VALUES ($1) ON CONFLICT (id) DO NOTHING', [next]);
    id = next;
    process.stdout.write(`${JSON.stringify({ ack: id, t: Date.now() })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ error: (err as Error).message.slice(0, 120), t: Date.now() })}\n`);
    const c = client;
    client = undefined;
    void c?.end().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 100));
    continue;
  }
  await new Promise((r) => setTimeout(r, intervalMs));
}
await client?.end().catch(() => undefined);
// WRITER_VERIFY=1: once stopped, count through the same address how many of the acknowledged
// ids 1..last are there (ids are taken only after an acknowledgement, so all of them were), as a
// client sees the table after everything moved. Retried: the address may be moving still.
if (process.env.WRITER_VERIFY === '1') {
  const until = Date.now() + 120_000;
  for (;;) {
    try {
      const c = await connect();
      const kept = Number((await c.query('SELECT count(*) AS n FROM harness_writes WHERE id <= $1', [id])).rows[0]?.n);
      await c.end().catch(() => undefined);
      process.stdout.write(`${JSON.stringify({ verified: { last: id, kept }, t: Date.now() })}\n`);
      break;
    } catch (err) {
      if (Date.now() > until) {
        process.stdout.write(`${JSON.stringify({ error: `verify: ${(err as Error).message.slice(0, 120)}`, t: Date.now() })}\n`);
        process.exit(1);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
process.exit(0);
