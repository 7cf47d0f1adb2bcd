import { join } from 'node:path';

/** Bundle a probe of this directory (the writer or the write sampler) to one plain JavaScript file at `outfile`, run by plain node inside a namespace. */
export async function bundleProbe(name: 'writer' | 'sampler', outfile: string): Promise<void> {
  const { build } = await import('esbuild');
  await build({
    entryPoints: [join(new URL('.', import.meta.url).pathname, `${name}.ts`)], outfile, bundle: true, platform: 'node', target: 'node20', format: 'esm',
    external: ['pg-native'], logLevel: 'error',
    banner: { js: "import { createRequire as __gkCreateRequire } from 'node:module'; const require = __gkCreateRequire(import.meta.url);" },
  });
}
