import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import * as z from 'zod';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { deviceSize, syncDirectory, syncRenamed, writeFileAtomic } from '#common/fsutil.ts';
import { parsePublicKey, type MinisignPublicKey } from '#common/minisign.ts';
import { slotBootPath } from '#common/render/paths.ts';
import type { BootSettings, Slot, UpgradeSettings } from '#common/schema/agent.ts';
import { verifyBundle, type PartName, type RunningImage, type TarMember, type VerifiedBundle } from '#common/upgrade/bundle.ts';
import { armTry, cmdlineValue, maxTries, readBootState, type BootChange, type BootState } from './bootslot.ts';
import { withWritableEsp } from './esp.ts';
import { editEnvFile } from './grubenv.ts';

// The node's half of an upgrade (docs/upgrades.md): check a bundle completely, write the
// passive slot and its kernel and initrd, then arm a try. Nothing is written before every
// check has passed, and the try is armed only after every byte is on disk, so a crash at any
// point leaves the node booting its current slot.

const UpgradeStateSchema = z.enum(['writing', 'interrupted', 'armed', 'blessed', 'fell-back', 'cancelled', 'failed']);

/** upgrade.json: the last bundle staged on this node, and the bundles that failed here. */
export const UpgradeRecordSchema = z.strictObject({
  current: z
    .strictObject({
      image: z.string(),
      version: z.string(),
      manifestSha256: z.string(),
      signer: z.string(),
      slot: z.enum(['A', 'B']),
      /** The version that ran when the bundle was staged: what the other slot holds. */
      fromVersion: z.string(),
      state: UpgradeStateSchema,
      at: z.string(),
      /** When the try was armed (boot.json's pending.at): ties the boot outcome to this bundle. */
      armedAt: z.string().optional(),
      /** Why the slot was not blessed: the health gate's last reason before the agent rebooted the try. */
      reason: z.string().optional(),
      /** The boot the bundle was written in: a `writing` record from another boot was interrupted. */
      bootId: z.string().optional(),
      /** `rollback`: the operator sent the node back to the version its other slot still holds. */
      kind: z.enum(['upgrade', 'rollback']).optional(),
    })
    .nullable()
    .default(null),
  /** Bundles that fell back or failed here: not staged again unless the operator says so. */
  failed: z.array(z.strictObject({ manifestSha256: z.string(), version: z.string(), reason: z.string(), at: z.string() })).default([]),
});
export type UpgradeRecord = z.output<typeof UpgradeRecordSchema>;

export async function readUpgradeRecord(file: string): Promise<UpgradeRecord> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return UpgradeRecordSchema.parse({});
  }
  try {
    return UpgradeRecordSchema.parse(JSON.parse(text));
  } catch (err) {
    throw new GeminiError(`${file} is unreadable (${(err as Error).message}); remove it to forget the upgrade history`, ExitCode.invalidInput);
  }
}

async function writeUpgradeRecord(file: string, record: UpgradeRecord): Promise<void> {
  // The directory is synced too: a power cut right after "writing" must still find the record
  // (the e2e suite's cut came within seconds of the rename, before ext4 committed it).
  await writeFileAtomic(file, `${JSON.stringify(UpgradeRecordSchema.parse(record), null, 2)}\n`, 0o644, { syncDir: true });
}

/**
 * Bring the record up to date (pure): a write that a restart cut short is `interrupted`, and
 * the armed try's outcome is taken from the boot state. A fall-back puts the bundle on the
 * failed list with the reason the health gate last gave.
 */
export function reconcileUpgrade(record: UpgradeRecord, boot: BootState, now: string, bootId: string): UpgradeRecord {
  const c = record.current;
  if (c?.state === 'writing' && c.bootId && c.bootId !== bootId) {
    return { ...record, current: { ...c, state: 'interrupted', at: now, reason: `the node restarted while slot ${c.slot} was being written; the slot was never armed and is not booted` } };
  }
  const last = boot.last;
  if (!c || c.state !== 'armed' || !last || last.slot !== c.slot || !sameTry(c.armedAt, last)) return record;
  if (last.outcome === 'blessed') return { ...record, current: { ...c, state: 'blessed', at: now } };
  if (last.outcome === 'cancelled') return { ...record, current: { ...c, state: 'cancelled', at: now } };
  const reason = c.reason ?? `slot ${c.slot} was never blessed: GRUB spent its tries and booted slot ${boot.booted ?? '?'} again (the new slot did not come up, or hung before its agent ran)`;
  // A rollback that fell back leaves the node on the version it was sent away from; no bundle failed.
  if (c.kind === 'rollback') return { ...record, current: { ...c, state: 'fell-back', at: now, reason } };
  return {
    current: { ...c, state: 'fell-back', at: now, reason },
    failed: [...record.failed.filter((f) => f.manifestSha256 !== c.manifestSha256), { manifestSha256: c.manifestSha256, version: c.version, reason, at: now }],
  };
}

/**
 * Whether the try whose outcome boot.json remembers is the one this upgrade armed. When the
 * record of arming was lost, the agent only observed the try in grubenv at its next boot: that
 * try is ours if it was first seen after we armed it.
 */
function sameTry(armedAt: string | undefined, last: NonNullable<BootState['last']>): boolean {
  if (!armedAt || !last.armedAt || last.armedAt === armedAt) return true;
  return last.how === 'observed' && last.armedAt >= armedAt;
}

/**
 * The tries an upgrade arms: the agent's setting, but never more than the ESP's grub.cfg counts
 * down from (an agent.yaml from another image must not cost a slot that is already written).
 */
async function upgradeTries(boot: BootSettings, wanted: number): Promise<number> {
  return Math.min(wanted, (await maxTries(boot)) ?? wanted);
}

/** This boot's id (the kernel's random boot_id). */
export async function currentBootId(boot: BootSettings): Promise<string> {
  return (await readFile(boot.bootIdFile, 'utf8').catch(() => '')).trim();
}

/** Keep the health gate's reason with the armed bundle before the agent reboots a try that did not pass. */
export async function noteTrialFailure(file: string, slot: Slot | undefined, reason: string): Promise<void> {
  const record = await readUpgradeRecord(file);
  if (!record.current || record.current.state !== 'armed' || record.current.slot !== slot) return;
  await writeUpgradeRecord(file, { ...record, current: { ...record.current, reason } });
}

/** The running image, from the build manifest it carries, and the slot file system its kernel command line names. */
export async function loadRunningImage(file: string, cmdlineFile?: string): Promise<RunningImage> {
  let m: { image?: unknown; version?: unknown; arch?: unknown; components?: { postgresql?: { major?: unknown } } };
  try {
    m = JSON.parse(await readFile(file, 'utf8')) as typeof m;
  } catch (err) {
    throw new GeminiError(`cannot read the image manifest ${file}: ${(err as Error).message}`, ExitCode.invalidInput);
  }
  const major = m.components?.postgresql?.major;
  if (typeof m.image !== 'string' || typeof m.version !== 'string' || typeof m.arch !== 'string' || typeof major !== 'number') {
    throw new GeminiError(`${file}: expected image, version, arch and components.postgresql.major`, ExitCode.invalidInput);
  }
  const cmdline = cmdlineFile ? await readFile(cmdlineFile, 'utf8').catch(() => '') : '';
  const rootfsType = cmdlineValue(cmdline, 'rootfstype');
  return { image: m.image, version: m.version, arch: m.arch, postgresqlMajor: major, ...(rootfsType ? { rootfsType } : {}) };
}

/** Every *.pub in the directories (missing directories are skipped; a bad key file is an error). */
export async function loadTrustedKeys(dirs: string[]): Promise<MinisignPublicKey[]> {
  const keys: MinisignPublicKey[] = [];
  for (const dir of dirs) {
    let names: string[];
    try {
      names = (await readdir(dir)).filter((n) => n.endsWith('.pub')).sort();
    } catch {
      continue;
    }
    for (const n of names) keys.push(parsePublicKey(await readFile(join(dir, n), 'utf8'), join(dir, n)));
  }
  return keys;
}

/** Copy a member of the bundle to `target` at offset 0, hashing what is written; fsync. */
async function copyMember(bundle: string, m: TarMember, target: string, flags: 'r+' | 'wx', mode?: number): Promise<string> {
  const hash = createHash('sha256');
  const out = await open(target, flags, mode);
  try {
    let position = 0;
    for await (const chunk of createReadStream(bundle, { start: m.offset, end: m.offset + m.size - 1, highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      await out.write(chunk, 0, chunk.length, position);
      position += chunk.length;
    }
    await out.sync();
  } finally {
    await out.close();
  }
  return hash.digest('hex');
}

/** What staging did. */
export interface StageResult {
  slot: Slot;
  from: Slot;
  version: string;
  runningVersion: string;
  manifestSha256: string;
  signer: string;
  bytes: Record<PartName, number>;
  ms: { verify: number; root: number; boot: number };
  arm: BootChange;
}

export interface StageOptions {
  bundle: string;
  upgrade: UpgradeSettings;
  boot: BootSettings;
  /** Stage a bundle that failed on this node before. */
  retryFailed?: boolean;
  /** Progress lines for people. */
  progress?: (line: string) => void;
}

function refuse(message: string): never {
  throw new GeminiError(`upgrade refused: ${message}`, ExitCode.refused);
}

/**
 * Stage a bundle: verify it (signature, image, arch, version, PostgreSQL major, every part's
 * sha256), write the passive slot and its kernel and initrd on the ESP, then arm a try of it.
 * The reboot is the caller's decision.
 */
export async function stageUpgrade(o: StageOptions): Promise<StageResult> {
  const say = o.progress ?? (() => undefined);
  const now = (): string => new Date().toISOString();
  const boot = await readBootState(o.boot);
  const bootId = await currentBootId(o.boot);
  let record = reconcileUpgrade(await readUpgradeRecord(o.upgrade.recordFile), boot, now(), bootId);
  if (boot.state === 'trying') refuse(`this boot is a try of slot ${boot.booted}, not yet blessed: let it pass its health gate (or fall back) first`);
  if (boot.state === 'unknown' || !boot.booted) refuse(boot.detail);
  const from = boot.booted;
  const slot: Slot = from === 'A' ? 'B' : 'A';

  const t0 = performance.now();
  const running = await loadRunningImage(o.upgrade.imageManifest, o.boot.cmdlineFile);
  const keys = await loadTrustedKeys(o.upgrade.trustedKeyDirs);
  say(`checking ${o.bundle}: signature, manifest and the sha256 of every part`);
  let verified: VerifiedBundle;
  try {
    verified = await verifyBundle(o.bundle, keys, running);
  } catch (err) {
    if (err instanceof GeminiError && err.exitCode === ExitCode.refused) refuse(err.message);
    throw err;
  }
  const { manifest } = verified;
  const failedBefore = record.failed.find((f) => f.manifestSha256 === verified.manifestSha256);
  if (failedBefore && !o.retryFailed) {
    refuse(`bundle ${manifest.version} failed on this node at ${failedBefore.at} (${failedBefore.reason}); it is not retried automatically (--retry to stage it again)`);
  }
  const device = o.upgrade.slotDevices[slot];
  const room = await deviceSize(device).catch((err: Error) => refuse(`cannot read slot ${slot}'s device ${device}: ${err.message}`));
  const root = verified.parts['root.img'];
  if (root.size > room) refuse(`root.img is ${root.size} bytes; slot ${slot} (${device}) holds ${room}`);
  const verifyMs = Math.round(performance.now() - t0);

  // From here on the passive slot is rewritten: first make sure no try points at it, and
  // that its old kernel and initrd are gone, so the ESP never holds a stale pair beside a new root.
  const espDir = join(o.upgrade.espMount, slotBootPath(slot, 'vmlinuz').split('/')[1]!);
  await withWritableEsp(o.upgrade.espMount, async () => {
    if (boot.trySlot) {
      say(`withdrawing the try of slot ${boot.trySlot} armed in this boot`);
      await editEnvFile(o.boot.grubEnvFile, { try_slot: '', try_count: '0' });
    }
    await rm(espDir, { recursive: true, force: true });
  });
  const base = { image: manifest.image, version: manifest.version, manifestSha256: verified.manifestSha256, signer: verified.signer.keyId, slot, fromVersion: running.version, bootId };
  record = { ...record, current: { ...base, state: 'writing', at: now() } };
  await writeUpgradeRecord(o.upgrade.recordFile, record);

  const fail = async (why: string): Promise<never> => {
    await writeUpgradeRecord(o.upgrade.recordFile, { ...record, current: { ...base, state: 'failed', at: now(), reason: why } });
    throw new GeminiError(`upgrade failed: ${why}; slot ${slot} is not armed, the node keeps booting slot ${from}`, ExitCode.commandFailed);
  };

  const t1 = performance.now();
  say(`writing root.img (${root.size} bytes) to slot ${slot} (${device})`);
  const rootSha = await copyMember(o.bundle, root, device, 'r+').catch((err: Error) => fail(`writing ${device}: ${err.message}`));
  if (rootSha !== root.sha256) await fail('root.img changed while it was written (its sha256 no longer matches the manifest)');
  const rootMs = Math.round(performance.now() - t1);

  const t2 = performance.now();
  let bootMs = 0;
  const arm = await withWritableEsp(o.upgrade.espMount, async () => {
    await mkdir(espDir, { recursive: true });
    for (const name of ['vmlinuz', 'initrd.img'] as const) {
      const part = verified.parts[name];
      const final = join(o.upgrade.espMount, slotBootPath(slot, name));
      const tmp = `${final}.new`;
      say(`writing ${name} (${part.size} bytes) to ${final}`);
      await rm(tmp, { force: true });
      const sha = await copyMember(o.bundle, part, tmp, 'wx', 0o644).catch((err: Error) => fail(`writing ${tmp}: ${err.message}`));
      if (sha !== part.sha256) await fail(`${name} changed while it was written`);
      await rename(tmp, final);
      await syncRenamed(final);
    }
    await syncDirectory(o.upgrade.espMount);
    bootMs = Math.round(performance.now() - t2);
    const tries = await upgradeTries(o.boot, o.upgrade.tries);
    say(`arming a try of slot ${slot} for ${tries} boots`);
    return armTry(o.boot, slot, tries);
  });
  await writeUpgradeRecord(o.upgrade.recordFile, { ...record, current: { ...base, state: 'armed', at: now(), armedAt: arm.after.pending?.at } });
  return {
    slot, from, version: manifest.version, runningVersion: running.version, manifestSha256: verified.manifestSha256, signer: verified.signer.keyId,
    bytes: { vmlinuz: verified.parts.vmlinuz.size, 'initrd.img': verified.parts['initrd.img'].size, 'root.img': root.size },
    ms: { verify: verifyMs, root: rootMs, boot: bootMs }, arm,
  };
}

/** What a rollback armed. */
export interface RollbackResult {
  slot: Slot;
  from: Slot;
  /** The version the node goes back to (what the other slot holds). */
  version: string;
  /** The version it leaves, now on the failed list so nothing re-stages it by itself. */
  leaving: string;
  arm: BootChange;
}

/**
 * Send the node back to the version its other slot still holds: only after an upgrade this
 * node blessed (so the other slot is the one it ran before, and its kernel and initrd are on
 * the ESP). The version it leaves goes on the failed list, so an automatic delivery (the SUC
 * job) does not stage it again; the try of the old slot then passes the same health gate as
 * an upgrade, and falls back to the current slot if it does not. The reboot is the caller's.
 */
export async function stageRollback(o: { upgrade: UpgradeSettings; boot: BootSettings; reason: string }): Promise<RollbackResult> {
  const now = (): string => new Date().toISOString();
  const boot = await readBootState(o.boot);
  const record = reconcileUpgrade(await readUpgradeRecord(o.upgrade.recordFile), boot, now(), await currentBootId(o.boot));
  const no = (why: string): never => {
    throw new GeminiError(`rollback refused: ${why}`, ExitCode.refused);
  };
  if (boot.state === 'trying') no(`this boot is an unblessed try of slot ${boot.booted}: it falls back by itself if its health gate fails`);
  if (boot.state === 'unknown' || !boot.booted) no(boot.detail);
  if (boot.trySlot) no(`a try of slot ${boot.trySlot} is armed: reboot into it, or stage again, before rolling back`);
  const from = boot.booted!;
  const slot: Slot = from === 'A' ? 'B' : 'A';
  const c = record.current;
  if (!c || c.slot !== from || c.state !== 'blessed') {
    no(`slot ${slot} holds no version this node ran before the current one (the last upgrade here: ${c ? `${c.version} on slot ${c.slot}, ${c.state}` : 'none'})`);
  }
  for (const name of ['vmlinuz', 'initrd.img'] as const) {
    const file = join(o.upgrade.espMount, slotBootPath(slot, name));
    await readFile(file).catch(() => no(`${file} is missing: slot ${slot} cannot boot`));
  }
  const arm = await armTry(o.boot, slot, await upgradeTries(o.boot, o.upgrade.tries));
  const at = now();
  await writeUpgradeRecord(o.upgrade.recordFile, {
    current: { ...c!, kind: 'rollback', version: c!.fromVersion, fromVersion: c!.version, slot, state: 'armed', at, armedAt: arm.after.pending?.at, reason: undefined },
    failed: [...record.failed.filter((f) => f.manifestSha256 !== c!.manifestSha256), { manifestSha256: c!.manifestSha256, version: c!.version, reason: `rolled back by the operator: ${o.reason}`, at }],
  });
  return { slot, from, version: c!.fromVersion, leaving: c!.version, arm };
}

/** The upgrade record reconciled with a boot state already read, saved when that changed it. */
export async function reconcileUpgradeFile(file: string, state: BootState, bootId: string): Promise<UpgradeRecord> {
  const before = await readUpgradeRecord(file);
  const record = reconcileUpgrade(before, state, new Date().toISOString(), bootId);
  if (JSON.stringify(record) !== JSON.stringify(before)) await writeUpgradeRecord(file, record);
  return record;
}

/** Status of upgrades on this node: the record, reconciled with the boot state. */
export async function upgradeStatus(upgrade: UpgradeSettings, boot: BootSettings): Promise<{ boot: BootState; record: UpgradeRecord; slots: Record<Slot, string | null> }> {
  const state = await readBootState(boot);
  const record = await reconcileUpgradeFile(upgrade.recordFile, state, await currentBootId(boot));
  const running = await loadRunningImage(upgrade.imageManifest).then((r) => r.version, () => null);
  return { boot: state, record, slots: slotVersions(state.booted, running, record) };
}

/**
 * What each slot holds, as far as this node knows: the running version, and for the other
 * slot the bundle last written there or the version that ran before it (null: unknown).
 */
export function slotVersions(booted: Slot | undefined, running: string | null, record: UpgradeRecord): Record<Slot, string | null> {
  const out: Record<Slot, string | null> = { A: null, B: null };
  if (!booted) return out;
  out[booted] = running;
  const c = record.current;
  if (!c) return out;
  const other: Slot = booted === 'A' ? 'B' : 'A';
  if (c.slot === other && !['writing', 'interrupted', 'failed'].includes(c.state)) out[other] = c.version;
  if (c.slot === booted) out[other] = c.fromVersion;
  return out;
}
