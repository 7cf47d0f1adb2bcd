import { readFileSync } from 'node:fs';
import { build } from 'esbuild';

/** Bundle the agent into one ESM file that Debian's Node.js runs with no node_modules. */
export async function buildAgent(outfile = 'dist/agent.mjs'): Promise<string> {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  await build({
    entryPoints: [new URL('src/main.ts', import.meta.url).pathname],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    minify: false,
    sourcemap: false,
    legalComments: 'none',
    // A navigator as Node.js 21+ has one: without it, pg's check for Cloudflare Workers (at its
    // first require) makes a Response, which loads Node.js 20's whole fetch implementation at
    // every start of the agent.
    define: { GEMINIK8S_VERSION: JSON.stringify(pkg.version), navigator: '__gkNavigator' },
    // pg's optional native binding is never used.
    external: ['pg-native'],
    banner: { js: "import { createRequire as __gkCreateRequire } from 'node:module'; const require = __gkCreateRequire(import.meta.url); const __gkNavigator = { userAgent: 'Node.js' };" },
  });
  return outfile;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const out = await buildAgent(process.argv[2]);
  process.stdout.write(`${out}\n`);
}
