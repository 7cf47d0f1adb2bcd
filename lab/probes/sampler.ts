// Runs inside one node's namespace: every 200 ms, asks the local PostgreSQL whether it accepts a
// write AT ALL and prints one JSON line per sample. Bounded in time.
//
// A node counts as writable when, in one transaction on one connection:
//   - it is connected, `pg_is_in_recovery()` is false,
//   - `default_transaction_read_only` and `transaction_read_only` are both off, and
//   - an INSERT under `SET LOCAL synchronous_commit = local` commits.
// `synchronous_commit = local` makes the commit independent of the standby: a primary that would
// accept an asynchronous write (a degraded old leader next to a new primary, say) is counted,
// even while synchronous commits there would hang. That is the property under test: never two
// nodes that accept writes at the same time.
//
// Each line carries the window [t, end] in which the probe ran (ms since the epoch): the commit
// happened somewhere inside it. `reason` says why a sample was not writable.
import pg from 'pg';

const [node, port, password, maxSecondsArg] = process.argv.slice(2);
const maxMs = Number(maxSecondsArg ?? 600) * 1000;
const PERIOD_MS = 200;
const started = Date.now();
let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});

let client: pg.Client | undefined;

async function connect(): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: Number(port), user: 'postgres', password, database: 'postgres', connectionTimeoutMillis: 500, query_timeout: 1000, application_name: 'harness-sampler' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** One probe. Writable only if every condition holds and the commit returned. */
async function probe(c: pg.Client): Promise<{ writable: boolean; reason?: string }> {
  const r = await c.query<{ rec: boolean; dro: string }>(`SELECT pg_is_in_recovery() AS rec, current_setting('default_transaction_read_only') AS dro`);
  const row = r.rows[0]!;
  if (row.rec) return { writable: false, reason: 'in recovery' };
  if (row.dro !== 'off') return { writable: false, reason: 'default_transaction_read_only on' };
  await c.query('BEGIN');
  try {
    const tro = await c.query<{ tro: string }>(`SELECT current_setting('transaction_read_only') AS tro`);
    if (tro.rows[0]!.tro !== 'off') {
      await c.query('ROLLBACK');
      return { writable: false, reason: 'transaction_read_only on' };
    }
    await c.query('SET LOCAL synchronous_commit = local');
    await c.query('CREATE TABLE IF NOT EXISTS harness_probe (node text PRIMARY KEY, at timestamptz)');
    await c.query('INSERT INTO harness_probe VALUES ($1, now()) ON CONFLICT (node) DO UPDATE SET at = now()', [node]);
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
  return { writable: true };
}

while (!stopping && Date.now() - started < maxMs) {
  const t = Date.now();
  let result: { writable: boolean; reason?: string };
  try {
    client ??= await connect();
    result = await probe(client);
  } catch (err) {
    result = { writable: false, reason: (err as Error).message.slice(0, 80) };
    // A broken or timed-out session is not reused: the next probe reconnects.
    const c = client;
    client = undefined;
    void c?.end().catch(() => undefined);
  }
  const end = Date.now();
  process.stdout.write(`${JSON.stringify({ node, t, end, writable: result.writable, ...(result.reason ? { reason: result.reason } : {}) })}\n`);
  await new Promise((r) => setTimeout(r, Math.max(0, PERIOD_MS - (Date.now() - t))));
}
await client?.end().catch(() => undefined);
process.exit(0);
