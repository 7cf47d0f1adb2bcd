import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { writeBundle, type BundleInput } from '#builder/upgrade/write.ts';
import { runPlan } from '#common/exec.ts';
import { encodePublicKey, generateKeyPair, type MinisignSecretKey } from '#common/minisign.ts';
import { AgentConfigSchema, bootSettings, upgradeSettings } from '#common/schema/agent.ts';
import { tempDir } from './fixtures.ts';

export const MiB = 1024 * 1024;

/** A node on files: the ESP, grubenv, both slots, the image manifest and the trusted keys. */
export function fakeNode(opts: { slotBytes?: number; version?: string } = {}) {
  const dir = tempDir('gk-upgrade-');
  const esp = join(dir, 'esp');
  mkdirSync(join(esp, 'grub'), { recursive: true });
  mkdirSync(join(esp, 'slot-a'));
  writeFileSync(join(esp, 'slot-a/vmlinuz'), 'kernel A');
  writeFileSync(join(esp, 'slot-a/initrd.img'), 'initrd A');
  const slots = { A: join(dir, 'ROOT_A'), B: join(dir, 'ROOT_B') };
  writeFileSync(slots.A, Buffer.alloc(opts.slotBytes ?? 4 * MiB, 0xaa));
  writeFileSync(slots.B, Buffer.alloc(opts.slotBytes ?? 4 * MiB, 0));
  const keys = join(dir, 'keys');
  mkdirSync(keys);
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ image: 'edge', version: opts.version ?? '1.0.0', arch: 'amd64', components: { postgresql: { major: 17, source: 'debian' } } }));
  writeFileSync(join(dir, 'cmdline'), 'BOOT_IMAGE=/slot-a/vmlinuz root=PARTLABEL=ROOT_A rootfstype=squashfs ro geminik8s.slot=A\n');
  writeFileSync(join(dir, 'boot_id'), `${randomUUID()}\n`);
  mkdirSync(join(dir, 'state'));
  const config = AgentConfigSchema.parse({
    stateDir: join(dir, 'state'),
    postgresql: { binDir: '/nonexistent', dataDir: '/nonexistent' },
    boot: { espMount: esp, cmdline: join(dir, 'cmdline'), bootId: join(dir, 'boot_id') },
    upgrade: { slotDevices: slots, imageManifest: join(dir, 'manifest.json'), trustedKeyDirs: [keys, join(dir, 'no-such-dir')] },
  });
  const configFile = join(dir, 'agent.yaml');
  writeFileSync(configFile, stringify(config));
  return { dir, esp, slots, keys, config, configFile, boot: bootSettings(config), upgrade: upgradeSettings(config) };
}

export async function grubenv(node: ReturnType<typeof fakeNode>, ...sets: string[]): Promise<void> {
  const file = join(node.esp, 'grub/grubenv');
  if (!existsSync(file)) await runPlan({ cmd: 'grub-editenv', args: [file, 'create'] });
  await runPlan({ cmd: 'grub-editenv', args: [file, 'set', ...sets] });
}

export function trust(node: ReturnType<typeof fakeNode>, key: MinisignSecretKey, name = 'release.pub'): void {
  writeFileSync(join(node.keys, name), encodePublicKey(key));
}

/** Parts of a bundle, written to files. */
export function parts(dir: string, rootBytes = 3 * MiB + 123) {
  const files = { vmlinuz: join(dir, 'vmlinuz'), 'initrd.img': join(dir, 'initrd.img'), 'root.img': join(dir, 'root.img') };
  writeFileSync(files.vmlinuz, randomBytes(70_001));
  writeFileSync(files['initrd.img'], randomBytes(50_003));
  writeFileSync(files['root.img'], randomBytes(rootBytes));
  return files;
}

export async function bundle(dir: string, key: MinisignSecretKey | undefined, over: Partial<BundleInput> = {}, name = 'edge-1.1.0.upgrade.tar'): Promise<string> {
  const out = join(dir, name);
  await writeBundle(out, { image: 'edge', version: '1.1.0', arch: 'amd64', postgresqlMajor: 17, upgradableFrom: ['>=1.0.0 <1.1.0'], rootfsType: 'squashfs', sourceDateEpoch: 1_700_000_000, ...over, parts: over.parts ?? parts(dir) }, key);
  return out;
}

/** A node running slot A with no try armed, trusting a fresh key, and a 1.1.0 bundle signed by it. */
export async function nodeWithBundle(): Promise<{ node: ReturnType<typeof fakeNode>; key: MinisignSecretKey; file: string }> {
  const node = fakeNode();
  await grubenv(node, 'active_slot=A', 'try_slot=', 'try_count=0');
  const key = generateKeyPair();
  trust(node, key);
  return { node, key, file: await bundle(node.dir, key) };
}
