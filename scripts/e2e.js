#!/usr/bin/env node
// `npm run e2e -- [suite...]`: run the slow-tier suites under test/e2e/<suite>/ (all when none named).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const e2eDir = join(root, 'test/e2e');
const available = (existsSync(e2eDir) ? readdirSync(e2eDir) : []).filter((d) => statSync(join(e2eDir, d)).isDirectory());
const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const passThrough = process.argv.slice(2).filter((a) => a.startsWith('-'));
for (const suite of wanted) {
  if (!available.includes(suite)) {
    console.error(`unknown e2e suite ${JSON.stringify(suite)}; available: ${available.join(', ') || '(none)'}`);
    process.exit(2);
  }
}
const suites = wanted.length ? wanted : available;
if (suites.length === 0) {
  console.error('no e2e suites found under test/e2e/');
  process.exit(2);
}
const globs = suites.map((s) => `test/e2e/${s}/**/*.test.ts`);
const r = spawnSync('npx', ['ava', '--config', 'ava.e2e.config.js', ...passThrough, ...globs], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
