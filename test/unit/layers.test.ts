import test from 'ava';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';

/** Where an import specifier of `file` points, as a folder of the repository (undefined for packages and node:). */
function importedFolder(file: string, spec: string): string | undefined {
  const alias: Record<string, string> = { '#common/': 'common', '#builder/': 'builder', '#agent/': 'agent', '#qemu/': 'qemu', '#lab/': 'lab', '#test/': 'test' };
  for (const [prefix, folder] of Object.entries(alias)) if (spec.startsWith(prefix)) return folder;
  if (!spec.startsWith('.')) return undefined;
  return normalize(join(dirname(file), spec)).split('/')[0];
}

function* sources(dir: string): Generator<string> {
  for (const n of readdirSync(join(ROOT, dir)).sort()) {
    const p = join(dir, n);
    if (n === 'node_modules') continue;
    if (statSync(join(ROOT, p)).isDirectory()) yield* sources(p);
    else if (/\.(ts|js|mjs)$/.test(n)) yield p;
  }
}

/** Each folder and the folders it must never import: a lower layer never imports a higher one. */
const FORBIDDEN: Record<string, string[]> = {
  common: ['builder', 'agent', 'qemu', 'lab', 'test', 'bench', 'scripts'],
  qemu: ['builder', 'agent', 'lab', 'test', 'bench', 'scripts'],
  agent: ['builder', 'lab', 'test', 'bench', 'scripts'],
  builder: ['lab', 'test', 'bench', 'scripts'],
  lab: ['test', 'bench', 'scripts'],
  scripts: ['test', 'bench'],
};

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

test('layers: no folder imports one above it (the demo and the lab never reach into the tests)', (t) => {
  const found: string[] = [];
  for (const [folder, forbidden] of Object.entries(FORBIDDEN)) {
    for (const file of sources(folder)) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      for (const m of text.matchAll(IMPORT)) {
        const spec = m[1] ?? m[2]!;
        const to = importedFolder(file, spec);
        if (to && forbidden.includes(to)) found.push(`${relative('.', file)} imports ${spec} (${folder}/ may not import ${to}/)`);
      }
    }
  }
  t.deepEqual(found, []);
});

test('layers: the import scanner sees relative, aliased and dynamic imports', (t) => {
  t.is(importedFolder('scripts/demo.ts', '#test/helpers/cli.ts'), 'test');
  t.is(importedFolder('lab/guest-lan.ts', '../test/helpers/fixtures.ts'), 'test');
  t.is(importedFolder('lab/probes/bundle.ts', './writer.ts'), 'lab');
  t.is(importedFolder('common/x.ts', 'node:fs'), undefined);
  const text = "import { a } from '#test/a.ts';\nexport { b } from '../agent/b.ts';\nconst c = await import('#builder/c.ts');";
  t.deepEqual([...text.matchAll(IMPORT)].map((m) => m[1] ?? m[2]), ['#test/a.ts', '../agent/b.ts', '#builder/c.ts']);
});
