import { ExitCode, GeminiError, type ExitCodeValue } from '#common/errors.ts';
import { manifestDigest, readBundle } from '#common/upgrade/bundle.ts';
import type { BootSettings, UpgradeSettings } from '#common/schema/agent.ts';
import type { BootState } from './bootslot.ts';
import { stageUpgrade, upgradeStatus, type UpgradeRecord } from './upgrade.ts';

// The System Upgrade Controller job's half of an upgrade (docs/upgrades.md). SUC runs the job
// on each node and counts it done when it exits 0; a reboot inside the job kills it, and SUC
// starts it again after the node is back. So the job is a loop over one pure step: it looks at
// the node, does the one thing that moves it forward, and looks again. Run again after the
// reboot, it finds the new version running and waits for the blessing; a bundle that fell back
// here fails the job instead of being written again (the re-upgrade loop of rancher/elemental#708).

export type SucJobStep =
  | { action: 'done'; reason: string }
  | { action: 'wait'; reason: string }
  | { action: 'stage'; reason: string }
  | { action: 'reboot'; reason: string }
  | { action: 'fail'; reason: string };

export interface SucJobInputs {
  /** The bundle's version and the sha256 of its manifest (how failures are remembered). */
  target: { version: string; manifestSha256: string };
  /** The version the booted slot runs (its image manifest). */
  running: string | null;
  boot: Pick<BootState, 'state' | 'booted' | 'trySlot' | 'detail'>;
  record: UpgradeRecord;
}

/** What the job does next on this node. */
export function sucJobStep(i: SucJobInputs): SucJobStep {
  const v = i.target.version;
  if (i.running === v) {
    if (i.boot.state === 'steady') return { action: 'done', reason: `this node runs ${v} on its blessed slot ${i.boot.booted}` };
    return { action: 'wait', reason: `this node runs ${v} on slot ${i.boot.booted ?? '?'}, ${i.boot.state}: waiting for its health gate to bless it (or for it to fall back)` };
  }
  const failed = i.record.failed.find((f) => f.manifestSha256 === i.target.manifestSha256);
  if (failed) {
    return { action: 'fail', reason: `${v} failed on this node at ${failed.at} (${failed.reason}); it is not retried automatically: fix the cause and publish a new version, or stage it by hand with geminik8s-agent upgrade stage --retry` };
  }
  if (i.boot.state === 'trying') return { action: 'wait', reason: `this boot is an unblessed try of slot ${i.boot.booted}: waiting for it to bless or fall back` };
  if (i.boot.state === 'unknown') return { action: 'fail', reason: `the boot state is unknown: ${i.boot.detail}` };
  const c = i.record.current;
  if (c && c.manifestSha256 === i.target.manifestSha256 && c.state === 'armed' && i.boot.trySlot === c.slot) {
    return { action: 'reboot', reason: `slot ${c.slot} holds ${v} and its try is armed: asking the agent to reboot into it when the pair allows` };
  }
  return { action: 'stage', reason: `this node runs ${i.running ?? 'an unknown version'}: writing ${v} to the passive slot` };
}

/** What the job needs from outside: the agent's reboot endpoint, time and a log line. */
export interface SucJobPorts {
  requestReboot(): Promise<{ ok: boolean; reason: string; retryable?: boolean }>;
  sleep(ms: number): Promise<void>;
  now(): number;
  log(line: string): void;
}

export interface SucJobOptions {
  bundle: string;
  upgrade: UpgradeSettings;
  boot: BootSettings;
  /** How often to look again while waiting. */
  pollMs: number;
  /** Give up after this long (SUC's jobActiveDeadlineSecs should be a little longer). */
  deadlineMs: number;
}

export interface SucJobResult {
  exitCode: ExitCodeValue;
  reason: string;
  steps: SucJobStep['action'][];
}

/** Run the job's loop until the node is done, the job must fail, or the deadline passes. */
export async function runSucJob(o: SucJobOptions, ports: SucJobPorts): Promise<SucJobResult> {
  const { manifest, manifestBytes } = await readBundle(o.bundle);
  const target = { version: manifest.version, manifestSha256: manifestDigest(manifestBytes) };
  const start = ports.now();
  const steps: SucJobStep['action'][] = [];
  let rebootAsked = false;
  let lastReason = '';
  let lastRefusal = '';
  for (;;) {
    const { boot, record, slots } = await upgradeStatus(o.upgrade, o.boot);
    const running = boot.booted ? slots[boot.booted] : null;
    let step = sucJobStep({ target, running, boot, record });
    // Once the agent has agreed to reboot, the reboot ends this process; ask only once.
    if (step.action === 'reboot' && rebootAsked) step = { action: 'wait', reason: 'the agent agreed to reboot into the new slot: waiting for the reboot' };
    steps.push(step.action);
    if (step.reason !== lastReason) ports.log(`${step.action}: ${step.reason}`);
    lastReason = step.reason;
    switch (step.action) {
      case 'done':
        return { exitCode: ExitCode.ok, reason: step.reason, steps };
      case 'fail':
        return { exitCode: ExitCode.refused, reason: step.reason, steps };
      case 'stage': {
        try {
          const r = await stageUpgrade({ bundle: o.bundle, upgrade: o.upgrade, boot: o.boot, progress: ports.log });
          ports.log(`staged ${r.version} on slot ${r.slot} (verify ${r.ms.verify} ms, root ${r.ms.root} ms, kernel and initrd ${r.ms.boot} ms)`);
        } catch (err) {
          if (err instanceof GeminiError) return { exitCode: err.exitCode, reason: err.message, steps };
          throw err;
        }
        continue;
      }
      case 'reboot': {
        const r = await ports.requestReboot();
        if (r.ok) {
          rebootAsked = true;
          ports.log(`the agent reboots: ${r.reason}`);
        } else if (r.retryable === false) {
          return { exitCode: ExitCode.refused, reason: `the agent refused the reboot: ${r.reason}`, steps };
        } else if (r.reason !== lastRefusal) {
          ports.log(`not yet: ${r.reason}`);
          lastRefusal = r.reason;
        }
        break;
      }
      case 'wait':
        break;
    }
    if (ports.now() - start >= o.deadlineMs) {
      return { exitCode: ExitCode.timeout, reason: `gave up after ${Math.round(o.deadlineMs / 1000)} s: ${lastRefusal || lastReason}`, steps };
    }
    await ports.sleep(o.pollMs);
  }
}
