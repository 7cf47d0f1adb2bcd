import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { CommandPlan } from '#common/exec.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { BootRecordSchema, type BootRecord, type BootSettings, type Slot } from '#common/schema/agent.ts';
import { withWritableEsp } from './esp.ts';
import { editEnvFile, envValues, readEnvFile } from './grubenv.ts';

// A/B boot counting, the agent's half (docs/boot-slots.md). GRUB owns try_count (it counts
// down and gives up); the agent owns active_slot (it blesses) and arms tries. GRUB's giving
// up looks exactly like a bless in grubenv (try_slot cleared), so the agent remembers the
// try it armed or saw in boot.json, and the kernel's boot id tells "armed in this boot,
// not rebooted yet" from "armed, rebooted, and did not come up on it".

export type BootStateName = 'steady' | 'trying' | 'fell-back' | 'unknown';

/** Where this boot stands in the A/B scheme. */
export interface BootState {
  /** The slot the running kernel came from (`geminik8s.slot=` on its command line). */
  booted?: Slot;
  /** active_slot as GRUB reads it: anything but B means A. */
  active?: Slot;
  /** try_slot, when a try is armed. */
  trySlot?: Slot;
  /** try_count: boots of the try slot GRUB still grants (already counted down for this boot). */
  tryCount?: number;
  state: BootStateName;
  /** One sentence for people: why this state. */
  detail: string;
  /** The try the agent remembers (boot.json). */
  pending: BootRecord['pending'];
  last?: BootRecord['last'];
}

/** Everything the state is derived from; `readBootFacts` gathers it from the node. */
export interface BootFacts {
  /** The kernel command line; undefined when unreadable. */
  cmdline?: string;
  env?: Record<string, string>;
  envError?: string;
  record: BootRecord;
  bootId: string;
  /** Timestamp for new records (ISO 8601). */
  now: string;
}

const isSlot = (v: string | undefined): v is Slot => v === 'A' || v === 'B';

/** The value of `name=VALUE` on a kernel command line, or undefined when it is not there. */
export function cmdlineValue(cmdline: string, name: string): string | undefined {
  return new RegExp(`(?:^|\\s)${name.replaceAll('.', '\\.')}=(\\S*)(?:\\s|$)`).exec(cmdline)?.[1];
}

/** The slot named by `geminik8s.slot=A|B` on a kernel command line. */
export function slotFromCmdline(cmdline: string): Slot | undefined {
  const m = cmdlineValue(cmdline, 'geminik8s.slot');
  return isSlot(m) ? m : undefined;
}

/**
 * Derive the boot state and the record to keep (pure). The record changes when a try is seen
 * for the first time (`observed`) and when a remembered try has ended: blessed, withdrawn
 * before any reboot (`cancelled`), or spent by GRUB (`fell-back`, reported until a new try).
 */
export function classifyBoot(f: BootFacts): { state: BootState; record: BootRecord } {
  let record = f.record;
  const booted = f.cmdline === undefined ? undefined : slotFromCmdline(f.cmdline);
  const out = (state: BootStateName, detail: string, extra: Partial<BootState> = {}): { state: BootState; record: BootRecord } => ({
    state: { booted, ...extra, state, detail, pending: record.pending, ...(record.last ? { last: record.last } : {}) },
    record,
  });
  if (f.cmdline === undefined) return out('unknown', 'the kernel command line is unreadable');
  if (!booted) return out('unknown', 'the kernel command line has no geminik8s.slot=A|B: this system did not boot through the A/B grub.cfg');
  if (!f.env) return out('unknown', `the GRUB environment block is unreadable: ${f.envError ?? 'unknown error'}`);
  const env = f.env;
  const active: Slot = env.active_slot === 'B' ? 'B' : 'A';
  const tryCount = /^\d+$/.test(env.try_count ?? '') ? Number(env.try_count) : undefined;
  const rawTry = env.try_slot ?? '';
  if (rawTry !== '' && !isSlot(rawTry)) return out('unknown', `try_slot holds ${JSON.stringify(rawTry)}, which is no slot`, { active, tryCount });
  const trySlot = rawTry === '' ? undefined : rawTry;
  const base = { active, trySlot, tryCount };

  if (trySlot) {
    if (record.pending?.slot !== trySlot) {
      record = { ...record, pending: { slot: trySlot, from: booted === trySlot ? active : booted, tries: tryCount, how: 'observed', bootId: f.bootId, at: f.now } };
    }
    const p = record.pending!;
    if (booted === trySlot) {
      return out('trying', `booted try slot ${trySlot} (${tryCount ?? 'no'} more tries after this boot); slot ${active} stays active until the agent blesses ${trySlot}`, base);
    }
    if (booted !== active) return out('unknown', `booted slot ${booted}, neither the try slot ${trySlot} nor the active slot ${active}`, base);
    if (p.bootId === f.bootId) return out('steady', `running active slot ${active}; slot ${trySlot} is armed for ${tryCount ?? 0} tries from the next boot`, base);
    return out('fell-back', `slot ${trySlot} is armed (${tryCount ?? 0} tries left) but this boot came up on slot ${booted}: GRUB fell back (the try slot did not load, or was not picked)`, base);
  }

  // No try armed. A try we remember has ended: blessed, withdrawn, or spent by GRUB.
  const p = record.pending;
  if (p) {
    let outcome: 'blessed' | 'cancelled' | 'fell-back' | undefined;
    if (booted === p.slot && active === p.slot) outcome = 'blessed'; // by us before a crash, or by another tool
    else if (p.bootId === f.bootId) outcome = 'cancelled'; // withdrawn in this very boot: GRUB never ran
    else if (booted !== p.slot && booted === active) outcome = 'fell-back';
    if (outcome) record = { pending: null, last: { slot: p.slot, outcome, at: f.now, armedAt: p.at, how: p.how } };
  }
  const last = record.last;
  if (booted === active && last?.outcome === 'fell-back' && last.slot !== booted) {
    return out('fell-back', `the try of slot ${last.slot} (armed ${last.armedAt ?? 'earlier'}) ended without a bless: GRUB spent its tries and fell back to slot ${active}`, base);
  }
  if (booted === active) return out('steady', `running active slot ${active}; no try armed`, base);
  return out('unknown', `booted slot ${booted} but the active slot is ${active} and no try is armed (picked by hand in the GRUB menu?)`, base);
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

async function readRecord(path: string): Promise<BootRecord> {
  const text = await readText(path);
  if (text === undefined) return BootRecordSchema.parse({});
  try {
    return BootRecordSchema.parse(JSON.parse(text));
  } catch (err) {
    throw new GeminiError(`${path} is unreadable (${(err as Error).message}); remove it to forget the remembered try`, ExitCode.invalidInput);
  }
}

/** Gather the inputs of classifyBoot from the files named in the settings. */
export async function readBootFacts(s: BootSettings): Promise<BootFacts> {
  const facts: BootFacts = {
    cmdline: await readText(s.cmdlineFile),
    record: await readRecord(s.recordFile),
    bootId: (await readText(s.bootIdFile))?.trim() ?? '',
    now: new Date().toISOString(),
  };
  try {
    facts.env = envValues(await readEnvFile(s.grubEnvFile));
  } catch (err) {
    facts.envError = (err as Error).message;
  }
  return facts;
}

async function writeRecord(path: string, record: BootRecord): Promise<void> {
  // Synced with its directory: an arm followed within seconds by a reset (the upgrade e2e suite)
  // otherwise came back without the pending try, and the upgrade never saw its bless.
  await writeFileAtomic(path, `${JSON.stringify(BootRecordSchema.parse(record), null, 2)}\n`, 0o644, { syncDir: true });
}

/** Read the boot state; with `remember` (default) keep boot.json up to date with what was seen. */
export async function readBootState(s: BootSettings, options: { remember?: boolean } = {}): Promise<BootState> {
  const facts = await readBootFacts(s);
  const { state, record } = classifyBoot(facts);
  if ((options.remember ?? true) && JSON.stringify(record) !== JSON.stringify(facts.record)) await writeRecord(s.recordFile, record);
  return state;
}

/** One grubenv variable before and after a change. */
export interface EnvChange {
  name: string;
  from?: string;
  to?: string;
}

/** What arm or bless did. */
export interface BootChange {
  changed: boolean;
  reason: string;
  before: BootState;
  after: BootState;
  changes: EnvChange[];
}

const BOOT_VARS = ['active_slot', 'try_slot', 'try_count'] as const;

function diffEnv(before: Record<string, string>, after: Record<string, string>): EnvChange[] {
  return BOOT_VARS.filter((n) => before[n] !== after[n]).map((name) => ({ name, from: before[name], to: after[name] }));
}

/** The highest try_count a rendered grub.cfg counts down from (pure); undefined when it has no such table. */
export function grubCfgMaxTries(cfg: string): number | undefined {
  const counts = [...cfg.matchAll(/if \[ "\$\{try_count\}" = "(\d+)" \]; then set try_count=/g)].map((m) => Number(m[1]));
  return counts.length ? Math.max(...counts) : undefined;
}

/** The most tries the ESP's grub.cfg counts down from, when it says. */
export async function maxTries(s: BootSettings): Promise<number | undefined> {
  return grubCfgMaxTries((await readText(join(dirname(s.grubEnvFile), 'grub.cfg'))) ?? '');
}

/** Highest try_count the rendered grub.cfg counts down from (image boot.tries is at most 9). */
export const MAX_TRIES = 9;

/**
 * Arm a one-shot try of `slot` for `tries` boots (from the next boot on). Refused unless the
 * node runs its active slot (steady or fell-back), and never for the slot it booted from.
 * A try already armed in this boot is replaced. grubenv is written first, then boot.json:
 * a crash in between leaves an armed try the next read records as observed.
 */
export async function armTry(s: BootSettings, slot: string, tries: number): Promise<BootChange> {
  if (!isSlot(slot)) throw new GeminiError(`slot must be A or B, not ${JSON.stringify(slot)}`, ExitCode.invalidInput);
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
    throw new GeminiError(`tries must be a whole number from 1 to ${MAX_TRIES} (grub.cfg counts down from the image's boot.tries; a larger count gets one boot)`, ExitCode.invalidInput);
  }
  const grubCfg = join(dirname(s.grubEnvFile), 'grub.cfg');
  const most = await maxTries(s);
  if (most !== undefined && tries > most) {
    throw new GeminiError(`tries must be at most ${most}: ${grubCfg} counts down from ${most} (the image's boot.tries), and would give a larger count a single boot`, ExitCode.invalidInput);
  }
  const before = await readBootState(s);
  const refuse = (why: string): never => {
    throw new GeminiError(`refusing to arm a try of slot ${slot}: ${why}`, ExitCode.refused);
  };
  if (before.state === 'unknown') refuse(before.detail);
  if (before.state === 'trying') refuse(`this boot is itself a try of slot ${before.booted}; bless it or let it fall back first`);
  if (slot === before.booted) refuse(`it is the slot this system booted from: arm the other slot after writing it`);
  const facts = await readBootFacts(s);
  const { before: envBefore, after: envAfter } = await withWritableEsp(s.espMount, () => editEnvFile(s.grubEnvFile, { active_slot: before.active!, try_slot: slot, try_count: String(tries) }));
  await writeRecord(s.recordFile, { ...facts.record, pending: { slot, from: before.booted, tries, how: 'armed', bootId: facts.bootId, at: new Date().toISOString() } });
  const after = await readBootState(s);
  return { changed: true, reason: `armed slot ${slot} for ${tries} tries from the next boot`, before, after, changes: diffEnv(envValues(envBefore), envValues(envAfter)) };
}

/**
 * Bless the try slot this system booted from: active_slot = booted, try_slot = '', try_count
 * = 0. Only in state `trying`; in any other state nothing is written (so it is idempotent).
 */
export async function bless(s: BootSettings): Promise<BootChange> {
  const before = await readBootState(s);
  if (before.state !== 'trying' || !before.booted || before.booted !== before.trySlot) {
    const reason = before.state === 'steady' ? `nothing to bless: ${before.detail}` : `cannot bless in state ${before.state}: ${before.detail}`;
    return { changed: false, reason, before, after: before, changes: [] };
  }
  const slot = before.booted;
  const { before: envBefore, after: envAfter } = await withWritableEsp(s.espMount, () => editEnvFile(s.grubEnvFile, { active_slot: slot, try_slot: '', try_count: '0' }));
  const record = await readRecord(s.recordFile);
  await writeRecord(s.recordFile, { pending: null, last: { slot, outcome: 'blessed', at: new Date().toISOString(), armedAt: record.pending?.at, how: record.pending?.how } });
  const after = await readBootState(s);
  return { changed: true, reason: `blessed slot ${slot}: it is the active slot from now on`, before, after, changes: diffEnv(envValues(envBefore), envValues(envAfter)) };
}

/** Reboot the node so GRUB spends a try (or falls back when none is left). */
export function rebootPlan(): CommandPlan {
  return { cmd: 'systemctl', args: ['reboot'], title: 'reboot: the try slot did not pass its health gate in time' };
}

/** The same list every caller prints: `name: from -> to`. */
export function describeChanges(changes: EnvChange[]): string[] {
  return changes.map((c) => `${c.name}: ${JSON.stringify(c.from ?? null)} -> ${JSON.stringify(c.to ?? null)}`);
}
