import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { buildProgram } from '#builder/cli/main.ts';
import { cli } from '#lab/cli.ts';
import { tempDir } from '../helpers/fixtures.ts';

const COMMANDS = buildProgram().commands.map((c) => c.name()).filter((n) => n !== 'help');

test('help lists init, validate, render, version, completion', async (t) => {
  const r = await cli('--help');
  t.is(r.code, 0);
  for (const name of ['init', 'validate', 'render', 'version', 'completion']) t.regex(r.stdout, new RegExp(`^  ${name}\\b`, 'm'));
});

async function bashComplete(script: string, words: string[]): Promise<string[]> {
  const file = join(tempDir(), 'c.bash');
  writeFileSync(file, script);
  const words_ = words.map((w) => `'${w}'`).join(' ');
  const r = await runPlan({ cmd: 'bash', args: ['-c', `source ${file}; COMP_WORDS=(${words_}); COMP_CWORD=${words.length - 1}; _geminik8s_complete; printf '%s\\n' "\${COMPREPLY[@]}"`] });
  return r.stdout.split('\n').filter(Boolean);
}

test('bash completion parses and completes commands, options and choices', async (t) => {
  const r = await cli('completion', 'bash');
  t.is(r.code, 0);
  const file = join(tempDir(), 'c.bash');
  writeFileSync(file, r.stdout);
  t.is((await runPlan({ cmd: 'bash', args: ['-n', file] }, { allowFailure: true })).exitCode, 0);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', 'va']), ['validate']);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', 've']), ['version']);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', '--log-level', 'w']), ['warn']);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', 'render', '--no']), ['--node', '--no-color']);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', 'completion', 'f']), ['fish']);
  t.deepEqual(await bashComplete(r.stdout, ['geminik8s', 'version', '--output', 'y']), ['yaml']);
});

test('zsh and fish scripts name every command', async (t) => {
  for (const shell of ['zsh', 'fish']) {
    const r = await cli('completion', shell);
    t.is(r.code, 0);
    for (const name of COMMANDS) t.true(r.stdout.includes(name), `${shell} script lacks ${name}`);
  }
  const fish = (await cli('completion', 'fish')).stdout;
  t.regex(fish, /-l log-level -x -a 'debug info warn error'/);
});

test('completion for an unknown shell is a usage error (exit 2)', async (t) => {
  const r = await cli('completion', 'tcsh');
  t.is(r.code, 2);
  t.regex(r.stderr, /bash, zsh, fish/);
});

test('zsh and fish accept their scripts (syntax check by the shells themselves)', async (t) => {
  const dir = tempDir();
  const zsh = join(dir, '_geminik8s');
  const fish = join(dir, 'geminik8s.fish');
  writeFileSync(zsh, (await cli('completion', 'zsh')).stdout);
  writeFileSync(fish, (await cli('completion', 'fish')).stdout);
  const z = await runPlan({ cmd: 'zsh', args: ['-n', zsh] }, { allowFailure: true });
  t.is(z.exitCode, 0, z.stderr);
  const f = await runPlan({ cmd: 'fish', args: ['--no-execute', fish] }, { allowFailure: true });
  t.is(f.exitCode, 0, f.stderr);
  // fish can also be asked for completions: the script must offer `validate` for "va".
  const c = await runPlan({ cmd: 'fish', args: ['-c', `source ${fish}; complete -C 'geminik8s va'`] }, { allowFailure: true });
  t.regex(c.stdout, /^validate\b/m, c.stderr);
});
