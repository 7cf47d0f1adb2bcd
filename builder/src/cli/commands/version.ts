import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import type { CliContext } from '../context.ts';
import { VERSION } from '../version.ts';

export function registerVersion(program: Command, ctx: () => CliContext): void {
  program
    .command('version')
    .description('print the geminik8s version')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json', 'yaml']).default('text'))
    .option('--short', 'print only the version number')
    .action((opts: { output: 'text' | 'json' | 'yaml'; short?: boolean }) => {
      const info = { version: VERSION, node: process.version, platform: `${process.platform}/${process.arch}` };
      const c = ctx();
      if (opts.short) return c.print(opts.output === 'json' ? JSON.stringify(VERSION) : VERSION);
      if (opts.output === 'json') return c.print(JSON.stringify(info, null, 2));
      if (opts.output === 'yaml') return c.print(stringify(info));
      c.print(`geminik8s ${info.version} (node ${info.node}, ${info.platform})`);
    });
}
