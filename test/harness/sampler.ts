// Runs inside one node's namespace: every 200 ms, tries to commit a probe row on the local
// PostgreSQL and prints whether this node accepted a write. Bounded in time.
import pg from 'pg';

const [node, port, password, maxSecondsArg] = process.argv.slice(2);
const maxMs = Number(maxSecondsArg ?? 600) * 1000;
const started = Date.now();
let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});

while (!stopping && Date.now() - started < maxMs) {
  const t = Date.now();
  let writable = false;
  const c = new pg.Client({ host: '127.0.0.1', port: Number(port), user: 'postgres', password, database: 'postgres', connectionTimeoutMillis: 500, query_timeout: 1000, application_name: 'harness-sampler' });
  c.on('error', () => undefined);
  try {
    await c.connect();
    await c.query('CREATE TABLE IF NOT EXISTS harness_probe (node text PRIMARY KEY, at timestamptz)');
    await c.query('INSERT INTO harness_probe VALUES ($1, now()) ON CONFLICT (node) DO UPDATE SET at = now()', [node]);
    writable = true;
  } catch {
    writable = false;
  }
  await c.end().catch(() => undefined);
  process.stdout.write(`${JSON.stringify({ node, t, writable })}\n`);
  await new Promise((r) => setTimeout(r, Math.max(0, 200 - (Date.now() - t))));
}
process.exit(0);
