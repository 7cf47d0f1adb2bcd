import test from 'ava';
import { lsnToBigInt } from '#agent/core/lsn.ts';
import { rejoinPath, type LeaderTimeline, type LocalWal } from '#agent/core/rejoin.ts';
import { controlWal, historyFile, parseHistory, walDumpLastRecord } from '#agent/postgres.ts';

const L = lsnToBigInt;
const local = (o: Partial<LocalWal> = {}): LocalWal => ({ systemId: '7715', timeline: 1, lastRecord: L('0/3027928'), laterTimeline: false, ...o });
const leader = (o: Partial<LeaderTimeline> = {}): LeaderTimeline => ({ systemId: '7715', timeline: 2, history: [{ parent: 1, switchpoint: L('0/3027AC0') }], ...o });

test('rejoinPath follows only when the local WAL ends before the leader left our timeline', (t) => {
  t.like(rejoinPath(local(), leader()), { follow: true });
  t.regex(rejoinPath(local(), leader()).reason, /our WAL ends before 0\/3027AC0, where the leader left timeline 1 \(last record at 0\/3027928\)/);
  // A last record starting at the switchpoint is one the leader never had on timeline 1.
  t.like(rejoinPath(local({ lastRecord: L('0/3027AC0') }), leader()), { follow: false });
  t.like(rejoinPath(local({ lastRecord: L('0/3027D40') }), leader()), { follow: false, reason: 'our WAL goes on past 0/3027AC0, where the leader left timeline 1 (last record at 0/3027D40)' });
  // Several promotions since: the entry for our timeline counts, not the last one.
  const three = leader({ timeline: 3, history: [{ parent: 1, switchpoint: L('0/3027AC0') }, { parent: 2, switchpoint: L('0/5000000') }] });
  t.like(rejoinPath(local({ timeline: 2, lastRecord: L('0/4FFFF00') }), three), { follow: true });
  t.like(rejoinPath(local({ timeline: 2, lastRecord: L('0/5000100') }), three), { follow: false });
});

test('rejoinPath rewinds whenever a prefix is not shown', (t) => {
  const why = (l: LocalWal, r: LeaderTimeline, before?: number): string => {
    const p = rejoinPath(l, r, before);
    t.false(p.follow, p.reason);
    return p.reason;
  };
  t.regex(why(local({ systemId: '9999' }), leader()), /another database system/);
  t.regex(why(local({ lastRecord: undefined }), leader()), /end of the local WAL on timeline 1 is unknown/);
  t.regex(why(local({ laterTimeline: true }), leader()), /pg_wal goes on past timeline 1/);
  t.regex(why(local({ timeline: 3 }), leader()), /our timeline 3 is newer than the leader's 2/);
  t.regex(why(local({ timeline: 2 }), leader()), /same number/);
  t.regex(why(local({ timeline: 2 }), leader({ timeline: 4, history: [{ parent: 1, switchpoint: 1n }, { parent: 3, switchpoint: 2n }] })), /timeline 2 is not in the leader's history of timeline 4/);
  t.regex(why(local(), leader(), 2), /following timeline 2 did not take last time/);
  // A follow onto an earlier timeline of the leader says nothing about this one.
  t.true(rejoinPath(local(), leader(), 1).follow);
});

test("pg_waldump's last readable record: only at the end of valid WAL", (t) => {
  t.is(walDumpLastRecord('pg_waldump: error: error in WAL record at 0/3027928: invalid record length at 0/3027AC0: wanted 24, got 0\n'), L('0/3027928'));
  t.is(walDumpLastRecord('pg_waldump: error: error in WAL record at 1/A0000028: invalid record length at 1/A00000A0: expected at least 24, got 0'), L('1/A0000028'));
  t.is(walDumpLastRecord('pg_waldump: error: error in WAL record at 0/5FFFF60: invalid magic number 0000 in WAL segment 000000010000000000000006, LSN 0/6000000, offset 0'), L('0/5FFFF60'));
  t.is(walDumpLastRecord('pg_waldump: error: error in WAL record at 0/5FFFF60: unexpected pageaddr 0/1000000 in log segment 000000010000000000000006, offset 0'), L('0/5FFFF60'));
  // A segment that is not there, or nothing read at all: the end is unknown.
  t.is(walDumpLastRecord('pg_waldump: error: could not find file "000000010000000000000009": No such file or directory'), undefined);
  t.is(walDumpLastRecord('pg_waldump: error: could not find a valid record after 0/9000060'), undefined);
  t.is(walDumpLastRecord('pg_waldump: error: error in WAL record at 0/3027928: could not read from file 000000010000000000000003, offset 163840: read 0 of 8192'), undefined);
  t.is(walDumpLastRecord(''), undefined);
});

test('timeline history files and pg_controldata', (t) => {
  t.deepEqual(parseHistory('1\t0/3027AC0\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n'), [
    { parent: 1, switchpoint: L('0/3027AC0') },
    { parent: 2, switchpoint: L('0/5000000') },
  ]);
  t.throws(() => parseHistory('1\tnot-an-lsn\n'), { message: /not a PostgreSQL LSN/ });
  t.is(historyFile(2), '00000002.history');
  t.is(historyFile(26), '0000001A.history');
  const cd = 'pg_control version number:            1300\nDatabase system identifier:           7715408997993767272\nDatabase cluster state:               in production\nLatest checkpoint location:           0/2000060\nLatest checkpoint\'s REDO location:    0/2000028\nLatest checkpoint\'s TimeLineID:       1\nLatest checkpoint\'s PrevTimeLineID:   1\n';
  t.deepEqual(controlWal(cd), { systemId: '7715408997993767272', checkpoint: '0/2000060', timeline: 1 });
  t.is(controlWal('Database cluster state: shut down\n'), undefined);
});
