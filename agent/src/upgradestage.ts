import { createWriteStream } from 'node:fs';
import { rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { bootSettings, upgradeSettings } from '#common/schema/agent.ts';
import type { Agent } from './agent.ts';
import { stageUpgrade, type StageResult } from './upgrade.ts';

/** The largest bundle the agent takes over its API: a root slot and a kernel with room to spare. */
export const MAX_BUNDLE_BYTES = 8 * 1024 ** 3;

/** The agent's answer to POST /v1/upgrade/stage. */
export interface StageAnswer {
  ok: boolean;
  reason: string;
  stage?: StageResult;
  /** Milliseconds from the request's start to the body's last byte on disk. */
  uploadMs?: number;
}

// One bundle at a time per agent: a second upload would race the first for the passive slot.
const busy = new WeakSet<Agent>();

/**
 * Receive a bundle in the request body and stage it as `geminik8s-agent upgrade stage` does
 * (geminik8s upgrade): the body goes to a 0600 file in the agent's state directory (on
 * PERSISTENT), whole or not at all, then `stageUpgrade` verifies it against this node's trusted
 * keys and running version and writes the passive slot. The file is removed either way.
 */
export async function stageHere(agent: Agent, body: Readable, declaredBytes: number, retryFailed: boolean): Promise<{ status: number; body: StageAnswer }> {
  const refuse = (reason: string, status = 409): { status: number; body: StageAnswer } => ({ status, body: { ok: false, reason } });
  if (busy.has(agent)) return refuse('another bundle is being staged on this node; wait for it');
  busy.add(agent);
  const { config } = agent.ctx;
  const file = join(config.stateDir, 'incoming.upgrade.tar');
  try {
    const fs = await statfs(config.stateDir);
    const free = Number(fs.bavail) * Number(fs.bsize);
    if (free < declaredBytes + 64 * 1024 ** 2) return refuse(`only ${free} bytes free in ${config.stateDir} for a ${declaredBytes}-byte bundle (and 64 MiB to spare); nothing was written`);
    await rm(file, { force: true });
    const t0 = performance.now();
    let received = 0;
    try {
      await pipeline(
        body,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            received += chunk.length;
            // Past the declared size the sender is wrong or hostile: stop before the disk fills.
            if (received > declaredBytes) throw new Error(`more than the ${declaredBytes} bytes declared`);
            yield chunk;
          }
        },
        createWriteStream(file, { mode: 0o600, flags: 'wx' }),
      );
    } catch (err) {
      return refuse(`the bundle did not arrive whole (${received} of ${declaredBytes} bytes: ${(err as Error).message}); nothing was written to a slot`, 400);
    }
    if (received !== declaredBytes) return refuse(`the bundle did not arrive whole (${received} of ${declaredBytes} bytes); nothing was written to a slot`, 400);
    const uploadMs = Math.round(performance.now() - t0);
    const secs = (ms: number): string => (ms / 1000).toFixed(1);
    const rate = (received / 1e6 / Math.max(uploadMs / 1000, 0.001)).toFixed(1);
    agent.log.warn({ event: 'upgrade-stage', bytes: received, uploadMs }, `staging an uploaded bundle (${received} bytes, received in ${secs(uploadMs)} s, ${rate} MB/s)`);
    try {
      const stage = await stageUpgrade({ bundle: file, upgrade: upgradeSettings(config), boot: bootSettings(config), retryFailed, progress: (line) => agent.log.info({ event: 'upgrade-stage' }, line) });
      // Where the minutes went, for the operator's progress line: the upload, then stageUpgrade's parts.
      const reason = `staged ${stage.version} (running ${stage.runningVersion}) on slot ${stage.slot}, signed by ${stage.signer}; its try is armed `
        + `(upload ${secs(uploadMs)} s at ${rate} MB/s, verify ${secs(stage.ms.verify)} s, root ${secs(stage.ms.root)} s, kernel and initrd ${secs(stage.ms.boot)} s)`;
      agent.log.warn({ event: 'upgrade-stage', version: stage.version, slot: stage.slot, ms: stage.ms }, reason);
      return { status: 200, body: { ok: true, reason, stage, uploadMs } };
    } catch (err) {
      const refused = err instanceof GeminiError && err.exitCode === ExitCode.refused;
      agent.log.warn({ event: 'upgrade-stage', refused, reason: (err as Error).message }, (err as Error).message);
      return refuse((err as Error).message, refused ? 409 : 500);
    }
  } finally {
    await rm(file, { force: true });
    busy.delete(agent);
  }
}
