import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { runPlan } from '#common/exec.ts';
import { squashfsPercent, squashfsPlan } from '#builder/disk/plans.ts';
import { StepTaskList } from '#builder/cli/tasklist.ts';
import { tempDir } from '../helpers/fixtures.ts';

function capture(): { stream: NodeJS.WriteStream; text: () => string } {
  let out = '';
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  return { stream: w as unknown as NodeJS.WriteStream, text: () => out };
}

test('the build\'s task list follows the step events: progress under the running step, its time when done, skips with their reason, a failure ends it', async (t) => {
  const { stream, text } = capture();
  const list = new StepTaskList(['build the root', 'fetch upstream components', 'make the root slot filesystem', 'write the disk image'], stream, 'simple');
  list.event({ step: 'build the root', status: 'start' });
  await new Promise((r) => setTimeout(r, 50));
  list.progress('Retrieving Packages');
  list.event({ step: 'build the root', status: 'done', ms: 61_200 });
  list.event({ step: 'fetch upstream components', status: 'skipped', reason: 'the Kubernetes layer is off' });
  list.event({ step: 'make the root slot filesystem', status: 'start' });
  await new Promise((r) => setTimeout(r, 50));
  list.progress('mksquashfs (zstd): 40%');
  list.event({ step: 'make the root slot filesystem', status: 'failed', ms: 10, reason: 'mksquashfs exited 1' });
  await list.finished;
  const out = text();
  t.log(out);
  t.regex(out, /build the root \(61\.2 s\)/);
  t.regex(out, /Retrieving Packages/);
  t.regex(out, /fetch upstream components \[SKIPPED: the Kubernetes layer is off\]/);
  t.regex(out, /mksquashfs \(zstd\): 40%/);
  t.regex(out, /make the root slot filesystem \[FAILED: mksquashfs exited 1\]/);
  t.notRegex(out, /write the disk image/, 'nothing after the failed step runs');
});

test('mksquashfs\'s progress bar, redrawn with carriage returns on stdout, is read as percentages up to 100', async (t) => {
  t.is(squashfsPercent('[=======================================|] 300/300 100%'), 100);
  t.is(squashfsPercent('[==/                                      ]  12/300   4%'), 4);
  t.is(squashfsPercent('Parallel mksquashfs: Using 2 processors'), undefined);
  const dir = tempDir('gk-sqprogress-');
  const tree = join(dir, 'root');
  mkdirSync(tree);
  for (let i = 0; i < 200; i++) writeFileSync(join(tree, `f${i}`), `file ${i}\n`.repeat(200 + i));
  const seen: number[] = [];
  await runPlan(squashfsPlan({ dir: tree, output: join(dir, 'root.sqfs'), compression: 'gzip', sourceDateEpoch: 1_700_000_000 }), {
    onStdoutLine: (l) => {
      const p = squashfsPercent(l);
      if (p !== undefined) seen.push(p);
    },
  });
  t.true(seen.length > 0, 'the bar was seen');
  t.is(seen[seen.length - 1], 100);
});
