import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildAgent } from '../../agent/build.ts';
import { runPlan } from '#common/exec.ts';
import { tempDir } from '../helpers/fixtures.ts';

// Every boot loads this bundle before the agent does anything, and under TCG each 100 ms of
// native start-up is a second or more of guest time: what it loads at start is part of its
// contract, as its behaviour is.
const dir = tempDir('gk-agent-bundle-');
const bundle = join(dir, 'agent.mjs');
const built = buildAgent(bundle);

test('the agent bundle carries zod without its error-message locales (the namespace import tree-shakes them)', async (t) => {
  await built;
  const text = readFileSync(bundle, 'utf8');
  t.true(text.includes('// node_modules/zod/v4/core/schemas.js'), 'zod is bundled');
  t.false(/^\/\/ node_modules\/zod\/v4\/locales\/(?!en\.js)/m.test(text), 'no locale but English');
});

test('the agent starts without loading Node.js 20\'s fetch implementation (pg probes for Cloudflare Workers with a Response)', async (t) => {
  await built;
  const preload = join(dir, 'loaded.cjs');
  writeFileSync(preload, "process.on('exit', () => process.stderr.write(JSON.stringify(process.moduleLoadList.filter((m) => /undici/.test(m)))));\n");
  const r = await runPlan({ cmd: process.execPath, args: ['--require', preload, bundle, '--version'] });
  t.regex(r.stdout, /^\d+\.\d+\.\d+/);
  t.deepEqual(JSON.parse(r.stderr), []);
});
