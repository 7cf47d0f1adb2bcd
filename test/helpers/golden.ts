import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ExecutionContext } from 'ava';

export const GOLDEN_ROOT = new URL('../golden/', import.meta.url).pathname;

/**
 * Compare `actual` with the golden file `name` under test/golden/. With UPDATE_GOLDEN=1 the
 * golden file is (re)written instead; a missing golden file fails the test.
 */
export function assertGolden(t: ExecutionContext, name: string, actual: string): void {
  const file = join(GOLDEN_ROOT, name);
  if (process.env.UPDATE_GOLDEN === '1') {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, actual);
    t.pass();
    return;
  }
  if (!existsSync(file)) {
    t.fail(`golden file ${file} is missing; run UPDATE_GOLDEN=1 npm test to create it`);
    return;
  }
  t.is(actual, readFileSync(file, 'utf8'), `differs from golden ${name} (UPDATE_GOLDEN=1 regenerates it deliberately)`);
}
