import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { renderGrubCfg } from '#builder/render/grub.ts';
import { loadImageDef, tempDir } from '../helpers/fixtures.ts';

// The rendered grub.cfg runs in real GRUB (grub-emu), reading and writing its environment block
// on a FAT image the way it does on the ESP. A harness grub.cfg sources ours, prints what GRUB
// decided, and reboots (exits) before any kernel is loaded; one grub-emu run is one boot.

const HARNESS = `source "\${prefix}/geminik8s.cfg"
echo "DECISION boot_slot=\${boot_slot} default=\${default} fallback=\${fallback}"
reboot
`;

interface Boot {
  slot: string;
  default: string;
  fallback: string;
  env: Record<string, string>;
  output: string;
}

async function makeEsp(grubCfg: string, env: Record<string, string>): Promise<{ dir: string; esp: string }> {
  const dir = tempDir();
  const esp = join(dir, 'esp.img');
  writeFileSync(join(dir, 'geminik8s.cfg'), grubCfg);
  writeFileSync(join(dir, 'grub.cfg'), HARNESS);
  await runPlan({ cmd: 'grub-editenv', args: [join(dir, 'grubenv'), 'create'] });
  const pairs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  if (pairs.length) await runPlan({ cmd: 'grub-editenv', args: [join(dir, 'grubenv'), 'set', ...pairs] });
  await runPlan({ cmd: 'mkfs.vfat', args: ['-C', esp, '4096'] });
  await runPlan({ cmd: 'mmd', args: ['-i', esp, '::grub'] });
  for (const f of ['grub.cfg', 'geminik8s.cfg', 'grubenv']) await runPlan({ cmd: 'mcopy', args: ['-i', esp, join(dir, f), `::grub/${f}`] });
  writeFileSync(join(dir, 'device.map'), `(hd0) ${esp}\n`);
  return { dir, esp };
}

async function boot(dir: string, esp: string): Promise<Boot> {
  const r = await runPlan({ cmd: 'grub-emu', args: ['-m', join(dir, 'device.map'), '-r', 'hd0', '-d', '/grub'], input: '' }, { timeoutMs: 30_000 });
  // eslint-disable-next-line no-control-regex
  const output = r.stdout.replace(/\x1b\[[0-9;]*m/g, '').replaceAll('\r', '');
  const m = /DECISION boot_slot=(\S*) default=(\S*) fallback=(\S*)/.exec(output);
  if (!m) throw new Error(`GRUB printed no decision:\n${output}`);
  const envText = (await runPlan({ cmd: 'mtype', args: ['-i', esp, '::grub/grubenv'] })).stdout;
  const env = Object.fromEntries(envText.split('\n').filter((l) => /^\w+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  return { slot: m[1]!, default: m[2]!, fallback: m[3]!, env, output };
}

for (const image of ['edge-amd64.yaml', 'edge-arm64.yaml']) {
  test(`a try slot boots try_count times, then GRUB falls back to the active slot and clears the try (${image})`, async (t) => {
    const cfg = renderGrubCfg(await loadImageDef(image));
    const { dir, esp } = await makeEsp(cfg, { active_slot: 'A', try_slot: 'B', try_count: '3' });
    const boots: Boot[] = [];
    for (let i = 0; i < 5; i++) boots.push(await boot(dir, esp));
    t.deepEqual(
      boots.map((b) => [b.slot, b.default, b.fallback, b.env.try_slot, b.env.try_count]),
      [
        ['B', 'slot-b', 'slot-a', 'B', '2'],
        ['B', 'slot-b', 'slot-a', 'B', '1'],
        ['B', 'slot-b', 'slot-a', 'B', '0'],
        ['A', 'slot-a', 'slot-b', '', '0'],
        ['A', 'slot-a', 'slot-b', '', '0'],
      ],
    );
    t.regex(boots[3]!.output, /tries of slot B are spent; falling back to slot A/);
    t.true(boots.every((b) => b.env.active_slot === 'A'), 'GRUB never changes the active slot: only the agent blesses');
  });
}

test('the active slot boots when no try is armed; an empty or unknown environment means slot A', async (t) => {
  const cfg = renderGrubCfg(await loadImageDef('edge-amd64.yaml'));
  const cases: [Record<string, string>, string][] = [
    [{ active_slot: 'B' }, 'B'],
    [{ active_slot: 'B', try_slot: '', try_count: '0' }, 'B'],
    [{}, 'A'],
    [{ active_slot: 'X' }, 'A'],
    // A blessed upgrade: the agent made B active and cleared the try.
    [{ active_slot: 'B', try_slot: '', try_count: '2' }, 'B'],
  ];
  for (const [env, slot] of cases) {
    const { dir, esp } = await makeEsp(cfg, env);
    const before = readFileSync(join(dir, 'grubenv'), 'utf8');
    const b = await boot(dir, esp);
    t.is(b.slot, slot, JSON.stringify(env));
    t.is((await runPlan({ cmd: 'mtype', args: ['-i', esp, '::grub/grubenv'] })).stdout, before, `${JSON.stringify(env)}: nothing saved without a try`);
  }
});

test('a try armed with no tries left (or no count) is abandoned at once', async (t) => {
  const cfg = renderGrubCfg(await loadImageDef('edge-amd64.yaml'));
  const envs: Record<string, string>[] = [{ active_slot: 'B', try_slot: 'A', try_count: '0' }, { active_slot: 'B', try_slot: 'A' }];
  for (const env of envs) {
    const { dir, esp } = await makeEsp(cfg, env);
    const b = await boot(dir, esp);
    t.is(b.slot, 'B', JSON.stringify(env));
    t.is(b.env.try_slot, '');
  }
});
