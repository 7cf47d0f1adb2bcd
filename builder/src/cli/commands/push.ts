import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { registerSecret } from '#common/log.ts';
import { pushOci } from '../../upgrade/registry.ts';
import type { CliContext } from '../context.ts';

interface PushFlags {
  plainHttp?: boolean;
  username?: string;
  passwordFile?: string;
  json?: boolean;
}

export function registerPush(program: Command, ctx: () => CliContext): void {
  program
    .command('push <oci-tar> <ref>')
    .description('upload an image written by geminik8s build --output oci to a registry (REGISTRY/REPOSITORY[:TAG]; the tag defaults to the image version)')
    .option('--plain-http', 'talk HTTP instead of HTTPS (a registry on loopback or a lab network)')
    .option('--username <name>', 'user name, when the registry asks for one')
    .option('--password-file <file>', 'file holding the password or token for --username')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, ref: string, flags: PushFlags) => {
      const c = ctx();
      let password: string | undefined;
      if (flags.passwordFile) {
        password = (await readFile(flags.passwordFile, 'utf8').catch((err: Error) => {
          throw new GeminiError(`--password-file: cannot read ${flags.passwordFile}: ${err.message}`, ExitCode.invalidInput);
        })).replace(/\r?\n$/, '');
        registerSecret(password);
      }
      if (password !== undefined && flags.username === undefined) throw new GeminiError('--password-file needs --username', ExitCode.invalidInput);
      const r = await pushOci(file, ref, { plainHttp: flags.plainHttp, username: flags.username, password, progress: (l) => c.logger.info(l) });
      if (flags.json) c.print(JSON.stringify(r));
      else c.print(`${r.ref}@${r.digest}\nuse it in the Plan: geminik8s suc-plan --image ${r.ref.replace(/:[^/:]+$/, '')} --version ${r.ref.replace(/^.*:/, '')}`);
    });
}
