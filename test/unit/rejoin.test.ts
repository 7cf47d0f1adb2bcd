import test from 'ava';
import { lsnToBigInt } from '#agent/core/lsn.ts';
import { rejoinPath, settleRejoin, stretchTo, type LeaderTimeline, type LocalWal } from '#agent/core/rejoin.ts';
import { controlWal, historyFile, leaderCopies, parseHistory, recordEnd, walDumpLastRecord, walFileName, walRecordLength } from '#agent/postgres.ts';

const L = lsnToBigInt;
const SEG = 16 * 1024 * 1024;
const local = (o: Partial<LocalWal> = {}): LocalWal => ({ systemId: '7715', timeline: 1, lastRecord: L('0/3027928'), lastRecordEnd: L('0/3027A90'), laterTimeline: false, segmentBytes: SEG, ...o });
const leader = (o: Partial<LeaderTimeline> = {}): LeaderTimeline => ({ systemId: '7715', timeline: 2, history: [{ parent: 1, switchpoint: L('0/3027AC0') }], ...o });

test('rejoinPath follows only when the local WAL ends before the leader left our timeline', (t) => {
  t.like(rejoinPath(local(), leader()), { action: 'follow', check: { timeline: 1, from: L('0/3000000'), to: L('0/3027A90') }, unverified: 'rewind' });
  t.regex(rejoinPath(local(), leader()).reason, /our WAL ends before 0\/3027AC0, where the leader left timeline 1 \(last record at 0\/3027928\)/);
  // A last record starting at the switchpoint is one the leader never had on timeline 1.
  t.like(rejoinPath(local({ lastRecord: L('0/3027AC0') }), leader()), { action: 'rewind' });
  // pg_rewind keeps our WAL up to the switchpoint as the leader's: that stretch is checked.
  t.like(rejoinPath(local({ lastRecord: L('0/3027D40') }), leader()), { action: 'rewind', reason: 'our WAL goes on past 0/3027AC0, where the leader left timeline 1 (last record at 0/3027D40)', check: { timeline: 1, from: L('0/3000000'), to: L('0/3027AC0') } });
  // Several promotions since: the entry for our timeline counts, not the last one.
  const three = leader({ timeline: 3, history: [{ parent: 1, switchpoint: L('0/3027AC0') }, { parent: 2, switchpoint: L('0/5000000') }] });
  t.like(rejoinPath(local({ timeline: 2, lastRecord: L('0/4FFFF00'), lastRecordEnd: L('0/4FFFF80') }), three), { action: 'follow' });
  t.like(rejoinPath(local({ timeline: 2, lastRecord: L('0/5000100'), lastRecordEnd: L('0/5000180') }), three), { action: 'rewind' });
});

test('rejoinPath rewinds whenever a prefix is not shown', (t) => {
  const why = (l: LocalWal, r: LeaderTimeline, before?: number): string => {
    const p = rejoinPath(l, r, before);
    t.is(p.action, 'rewind', p.reason);
    t.is(p.check, undefined);
    return p.reason;
  };
  t.regex(why(local({ systemId: '9999' }), leader()), /another database system/);
  t.regex(why(local({ lastRecord: undefined }), leader()), /end of the local WAL on timeline 1 is unknown/);
  t.regex(why(local({ laterTimeline: true }), leader()), /pg_wal goes on past timeline 1/);
  t.regex(why(local({ timeline: 3 }), leader()), /our timeline 3 is newer than the leader's 2/);
  t.regex(why(local({ timeline: 2 }), leader({ timeline: 4, history: [{ parent: 1, switchpoint: 1n }, { parent: 3, switchpoint: 2n }] })), /timeline 2 is not in the leader's history of timeline 4/);
  t.regex(why(local(), leader(), 2), /following timeline 2 did not take last time/);
  // A follow onto an earlier timeline of the leader says nothing about this one.
  t.is(rejoinPath(local(), leader(), 1).action, 'follow');
});

test('a leader on our own timeline number: follow only if it holds our WAL byte for byte, else re-clone (pg_rewind would see nothing to do)', (t) => {
  const two = local({ timeline: 2, lastRecord: L('0/5000100'), lastRecordEnd: L('0/5000180') });
  const plan = rejoinPath(two, leader());
  t.like(plan, { action: 'follow', check: { timeline: 2, from: L('0/5000000'), to: L('0/5000180') }, unverified: 'clone' });
  t.like(settleRejoin(plan, true), { action: 'follow' });
  t.regex(settleRejoin(plan, true).reason, /our WAL 0\/5000000\.\.0\/5000180 on timeline 2 is the leader's byte for byte/);
  t.like(settleRejoin(plan, false), { action: 'clone' });
  t.regex(settleRejoin(plan, false).reason, /differs from the leader's: the two histories share a timeline number, not their WAL/);
  t.like(settleRejoin(plan, undefined), { action: 'clone' });
  t.regex(settleRejoin(plan, undefined).reason, /the leader no longer holds 0\/5000000\.\.0\/5000180/);
  t.like(rejoinPath(local({ timeline: 2, lastRecord: undefined }), leader()), { action: 'clone' });
  t.like(rejoinPath(two, leader(), 2), { action: 'clone', reason: 'following timeline 2, which is ours too, did not take last time' });
});

test('settleRejoin: a differing stretch re-clones whatever the plan; a stretch the leader dropped keeps a follow from timeline history to pg_rewind', (t) => {
  const follow = rejoinPath(local(), leader());
  t.like(settleRejoin(follow, true), { action: 'follow' });
  t.like(settleRejoin(follow, false), { action: 'clone' });
  t.like(settleRejoin(follow, undefined), { action: 'rewind' });
  const rewind = rejoinPath(local({ lastRecord: L('0/3027D40'), lastRecordEnd: L('0/3027D90') }), leader());
  t.like(settleRejoin(rewind, true), { action: 'rewind' });
  t.like(settleRejoin(rewind, false), { action: 'clone' });
  t.like(settleRejoin(rewind, undefined), { action: 'rewind' });
  // Nothing to compare: the plan as it is.
  t.deepEqual(settleRejoin(rejoinPath(local({ systemId: '1' }), leader()), false), { action: 'rewind', reason: "another database system (ours 1, the leader's 7715)" });
  // A stretch ending on a segment boundary is the whole segment before it.
  t.deepEqual(stretchTo(1, L('0/4000000'), SEG), { timeline: 1, from: L('0/3000000'), to: L('0/4000000') });
});

test('WAL geometry: record ends across page and segment headers, segment file names, the leader files that hold a stretch', (t) => {
  t.is(recordEnd(L('0/3027928'), 114, 8192, SEG), L('0/302799A'));
  // 0/3027F00 + 0x100 left in the page, then a 24-byte page header, then the rest.
  t.is(recordEnd(L('0/3027F00'), 0x200, 8192, SEG), L('0/3028000') + 24n + 0x100n);
  // Across a segment boundary the next page carries the 40-byte long header.
  t.is(recordEnd(L('0/3FFFF00'), 0x200, 8192, SEG), L('0/4000000') + 40n + 0x100n);
  // Spanning two whole pages: two headers.
  t.is(recordEnd(L('0/3026000'), 8192 * 2, 8192, SEG), L('0/3026000') + 8192n * 2n + 48n);
  t.is(walFileName(1, L('0/3027928'), SEG), '000000010000000000000003');
  t.is(walFileName(26, L('1A/FF000000'), SEG), '0000001A0000001A000000FF');
  t.is(walFileName(2, L('1/40000000'), 1024 * 1024 * 1024), '000000020000000100000001');
  const three = leader({ timeline: 3, history: [{ parent: 1, switchpoint: L('0/3027AC0') }, { parent: 2, switchpoint: L('0/5000000') }] });
  t.deepEqual(leaderCopies(stretchTo(1, L('0/3027A90'), SEG), three, SEG), ['000000010000000000000003', '000000020000000000000003', '000000030000000000000003']);
  t.deepEqual(leaderCopies(stretchTo(3, L('0/6000100'), SEG), three, SEG), ['000000030000000000000006']);
  t.is(walRecordLength('rmgr: Heap        len (rec/tot):     59/    59, tx:        735, lsn: 0/03000060, prev 0/03000028, desc: INSERT off 2'), 59);
  t.is(walRecordLength('rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/0A273C28, prev 0/0A273BF0, desc: CHECKPOINT_SHUTDOWN'), 114);
  t.is(walRecordLength(''), undefined);
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
  t.is(controlWal(cd), undefined, 'no WAL sizes');
  const sized = `${cd}WAL block size:                       8192\nBytes per WAL segment:                16777216\n`;
  t.deepEqual(controlWal(sized), { systemId: '7715408997993767272', checkpoint: '0/2000060', timeline: 1, blockBytes: 8192, segmentBytes: SEG });
  t.is(controlWal('Database cluster state: shut down\n'), undefined);
});
