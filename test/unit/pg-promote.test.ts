import test from 'ava';
import type pg from 'pg';
import { promote, PROMOTE_RESIGNAL_MS, type KeptSession } from '#agent/postgres.ts';

/**
 * promote() against scripted answers of the server, on the kept session's run(): PostgreSQL's
 * startup process can take a promote request and then sleep out the rest of
 * wal_retrieve_retry_interval, which only a new signal ends (seen under TCG: 985 ms; the real
 * server's side is in docs/failover.md). Here the scripted server promotes only at its
 * `promotesAt`-th signal.
 */
function scriptedServer(opts: { promotesAt: number; lateSignalFails?: boolean }) {
  const state = { signals: 0, promoted: false, looks: 0 };
  const client = {
    async query(text: string): Promise<{ rows: Record<string, unknown>[] }> {
      if (text.includes('pg_promote')) {
        if (state.promoted) throw new Error('recovery is not in progress');
        state.signals++;
        if (state.signals >= opts.promotesAt) {
          state.promoted = true;
          // The promotion ended just as this signal came: PostgreSQL refuses it.
          if (opts.lateSignalFails && state.signals > 1) throw new Error('recovery is not in progress');
        }
        return { rows: [{ pg_promote: true }] };
      }
      if (text.includes('pg_is_in_recovery')) {
        state.looks++;
        return { rows: [{ r: !state.promoted }] };
      }
      throw new Error(`unexpected query ${text}`);
    },
  };
  const session = { run: <T>(fn: (c: pg.Client) => Promise<T>) => fn(client as unknown as pg.Client) } as unknown as KeptSession;
  return { state, session };
}

test('promote signals again every PROMOTE_RESIGNAL_MS while the server is still in recovery, until it promotes', async (t) => {
  const { state, session } = scriptedServer({ promotesAt: 3 });
  const started = performance.now();
  await promote(session, 5000);
  t.is(state.signals, 3);
  t.true(state.promoted);
  t.true(performance.now() - started >= 2 * PROMOTE_RESIGNAL_MS, 'the signals are spaced, not sent on every look');
  t.true(state.looks >= 3);
});

test('promote: a signal refused because the promotion has just ended ("recovery is not in progress") is no failure', async (t) => {
  const { state, session } = scriptedServer({ promotesAt: 2, lateSignalFails: true });
  await promote(session, 5000);
  t.is(state.signals, 2);
  t.true(state.promoted);
});

test('promote: a server that never leaves recovery fails at the timeout, naming it', async (t) => {
  const { state, session } = scriptedServer({ promotesAt: Number.POSITIVE_INFINITY });
  await t.throwsAsync(promote(session, 300), { message: /pg_promote did not complete within 0.3 s/ });
  t.true(state.signals >= 3, `${state.signals} signals in 300 ms`);
});
