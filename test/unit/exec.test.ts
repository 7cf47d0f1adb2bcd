import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { CommandFailedError, preparePlan, spawnPlan, streamPlan, ToolMissingError, type PreparedRun } from '#common/exec.ts';

const expected = (): Buffer => Buffer.concat(Array.from({ length: 65536 }, (_, i) => createHash('sha256').update(String(i)).digest()));

test('streamPlan keeps every byte of stdout for a reader that starts late', async (t) => {
  // flash opens the device before it reads zstd's output; under load that took longer than
  // a tick, execa put the unread stdout in flowing mode, and the first bytes were dropped.
  const proc = streamPlan({ cmd: 'seq', args: ['1', '300000'] });
  await sleep(300);
  const chunks: Buffer[] = [];
  for await (const c of proc.stdout as AsyncIterable<Buffer>) chunks.push(c);
  await proc.done;
  const want = Array.from({ length: 300000 }, (_, i) => `${i + 1}\n`).join('');
  t.is(Buffer.concat(chunks).toString('latin1'), want);
});

test('streamPlan with input keeps every byte for a late reader', async (t) => {
  const data = expected();
  async function* feed(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < data.length; i += 100_000) yield data.subarray(i, i + 100_000);
  }
  const proc = streamPlan({ cmd: 'cat', args: [] }, feed());
  await sleep(300);
  const chunks: Buffer[] = [];
  for await (const c of proc.stdout as AsyncIterable<Buffer>) chunks.push(c);
  await proc.done;
  t.true(Buffer.concat(chunks).equals(data));
});

test('spawnPlan: processExited resolves when the process exits although a child it left behind still holds its stdout; exited waits for the pipe', async (t) => {
  // The shell exits at once; the sleep it started in the background inherits its stdout.
  const p = spawnPlan({ cmd: 'sh', args: ['-c', 'sleep 3 & echo $!'] });
  let piped = false;
  void p.exited.then(() => (piped = true));
  const started = Date.now();
  t.is(await p.processExited, 0);
  t.true(Date.now() - started < 2000, 'the exit itself is seen at once');
  t.false(piped, 'exited still waits for the background sleep holding the pipe');
  t.is(await p.exited, 0);
  t.true(Date.now() - started >= 2500, 'and ends with it');
});

test('preparePlan: started ahead, the command gets its input when run is called, and settles as runPlan does', async (t) => {
  const echo = preparePlan({ cmd: 'sh', args: ['-c', 'read line; echo "got $line"'] });
  t.true(echo.ready());
  t.like(await echo.run('hello\n'), { stdout: 'got hello\n', exitCode: 0 });
  t.false(echo.ready(), 'it runs once');
  await t.throwsAsync(echo.run('again\n'), { message: /runs once/ });

  // A failure quotes the command with what was written to it, its exit code and stderr's tail.
  const failing = (): PreparedRun => preparePlan({ cmd: 'sh', args: ['-c', 'read line; echo "no such $line" >&2; exit 3'] });
  const err = await t.throwsAsync(failing().run('device\n'), { instanceOf: CommandFailedError });
  t.regex(err!.message, /exited with code 3: sh -c .* '<<< device'/);
  t.regex(err!.message, /no such device/);
  t.like(await failing().run('device\n', { allowFailure: true }), { exitCode: 3 });

  // The timeout counts from run, not from the start: it waited longer than that for its input.
  const slow = preparePlan({ cmd: 'sh', args: ['-c', 'read line; exec sleep 30'] });
  await sleep(300);
  await t.throwsAsync(slow.run('x\n', { timeoutMs: 200 }), { message: /timed out after 200 ms/ });

  const missing = preparePlan({ cmd: 'gk-no-such-tool', args: [] });
  t.false(missing.ready());
  await t.throwsAsync(missing.run('x\n'), { instanceOf: ToolMissingError });
});
