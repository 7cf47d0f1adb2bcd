import test from 'ava';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { GuestShell } from '#qemu/shell.ts';
import { tempDir } from '../helpers/fixtures.ts';

/**
 * A stand-in for a guest's virtio console: a real `sh` behind a unix socket. Like a serial line
 * under load, it delivers the line end after each of the shell's end markers late, in a chunk
 * of its own, so a command can be written before the previous one's output has fully arrived.
 */
async function slowConsole(): Promise<{ path: string; server: Server; dir: string }> {
  const dir = tempDir('gk-shell-');
  const path = join(dir, 'console.sock');
  const server = createServer((socket) => {
    // One stream for both, as on a terminal.
    const sh = spawn('sh', ['-c', 'exec sh 2>&1'], { stdio: ['pipe', 'pipe', 'ignore'] });
    socket.on('data', (d) => sh.stdin.write(d));
    socket.on('close', () => sh.kill());
    let chain = Promise.resolve();
    const forward = (d: Buffer): void => {
      const text = d.toString('utf8');
      chain = chain.then(async () => {
        for (const part of text.split(/(?<=__GK_[0-9a-f]+_\d+__)/)) {
          socket.write(part);
          if (/__GK_[0-9a-f]+_\d+__$/.test(part)) await new Promise((r) => setTimeout(r, 300));
        }
      });
    };
    sh.stdout.on('data', forward);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, server, dir };
}

test('each command gets exactly its own output, even when the previous one\'s line end arrives late', async (t) => {
  const { path, server, dir } = await slowConsole();
  const shell = await GuestShell.open(path, 10_000);
  try {
    t.is(await shell.check('echo first'), 'first');
    // Written at once, while "first"'s line end is still on its way.
    t.is(await shell.check('printf "a\\nb\\n"'), 'a\nb');
    t.is(await shell.check('true'), '');
    const r = await shell.run('echo oops >&2; exit_code() { return 3; }; exit_code');
    t.deepEqual(r, { code: 3, output: 'oops' });
  } finally {
    shell.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
