// Loaded into every AVA worker (package.json ava.require). AVA ends a worker only when its event
// loop runs dry; one handle left open after the last test (a socket a test server never closed)
// kept a worker, and so `npm test`, waiting forever with every test passed. AVA's documented
// answer is a completion handler that exits. It first names what was left open, so the leak
// shows in the output instead of as a hang.
import process from 'node:process';
import test, { registerCompletionHandler } from 'ava';

// A worker always has its stdio and AVA's IPC channel.
const ALWAYS = new Set(['PipeWrap', 'TTYWrap', 'FSReqCallback']);

registerCompletionHandler(() => {
  const left = process.getActiveResourcesInfo().filter((r) => !ALWAYS.has(r));
  if (left.length > 0) process.stderr.write(`[ava] ${test.meta.file.replace(/^file:\/\//, '')}: left open after its last test: ${left.join(', ')}\n`);
  process.exit();
});
