import { Command, Option } from 'commander';
import { validateFiles } from '#common/config.ts';
import { formatIssue, ValidationError } from '#common/errors.ts';
import type { CliContext } from '../context.ts';

export function registerValidate(program: Command, ctx: () => CliContext): void {
  program
    .command('validate')
    .description('check image definitions, cluster files and node seeds; report every problem at once')
    .argument('<file...>', 'files to check (kind detected from `kind:` or the shape)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (files: string[], opts: { output: 'text' | 'json' }) => {
      const c = ctx();
      const { results, issues } = await validateFiles(files);
      if (opts.output === 'json') {
        c.print(JSON.stringify({ valid: issues.length === 0, files: results.map((r) => ({ file: r.file, kind: r.kind })), issues }, null, 2));
      } else {
        for (const r of results) c.print(`${r.file}: ok (${r.kind})`);
        for (const issue of issues) c.logger.error(formatIssue(issue));
      }
      if (issues.length) {
        const err = new ValidationError(issues);
        // Already printed in full above; keep only the summary for the top-level handler.
        err.message = `${issues.length} problem${issues.length === 1 ? '' : 's'} in ${new Set(issues.map((i) => i.file)).size} file(s)`;
        throw err;
      }
    });
}
