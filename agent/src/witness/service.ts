import { randomInt } from 'node:crypto';
import { arbitrate, emptyRecord, restoredState, type ArbiterAnswer, type ArbiterEvent, type ArbiterRecord, type ArbiterRequest, type ArbiterState } from './arbiter.ts';

/** Where the witness keeps its records durably. Production: one fsynced file per cluster. */
export interface RecordStore {
  load(): Promise<ArbiterRecord[]>;
  /** Must be durable (file and directory fsynced) when it resolves. */
  save(record: ArbiterRecord): Promise<void>;
}

export interface WitnessDeps {
  store: RecordStore;
  /** Monotonic milliseconds. */
  now: () => number;
  /** Audit log: every grant, refusal and handover. */
  audit: (cluster: string, event: ArbiterEvent) => void;
  /** Added to the longest lease after a restart before anyone but the holder may take over. */
  restartMarginMs?: number;
  /**
   * The next lease tag (ArbiterState.lease): different from every earlier one, across restarts
   * too. Default: a counter from a random 47-bit start drawn when the service is made.
   */
  leaseTag?: () => number;
}

/** Lease tags from a random start: a restarted witness does not repeat the tags of the one before. */
export function randomLeaseTags(): () => number {
  let next = randomInt(1, 2 ** 47);
  return () => next++;
}

/**
 * The witness's imperative shell around the pure arbiter: one request at a time per cluster,
 * and a changed record is on disk before the answer leaves.
 */
export class WitnessService {
  private readonly states = new Map<string, ArbiterState>();
  private queue: Promise<unknown> = Promise.resolve();
  private loaded = false;

  private readonly leaseTag: () => number;

  constructor(private readonly deps: WitnessDeps) {
    this.leaseTag = deps.leaseTag ?? randomLeaseTags();
  }

  async load(): Promise<void> {
    const now = this.deps.now();
    for (const record of await this.deps.store.load()) this.states.set(record.cluster, restoredState(record, now, this.deps.restartMarginMs ?? 2000));
    this.loaded = true;
  }

  /** The record as last persisted (for status pages). */
  record(cluster: string): ArbiterRecord | undefined {
    return this.states.get(cluster)?.record;
  }

  handle(cluster: string, req: ArbiterRequest): Promise<ArbiterAnswer> {
    const run = async (): Promise<ArbiterAnswer> => {
      if (!this.loaded) throw new Error('witness records not loaded');
      const now = this.deps.now();
      const before = this.states.get(cluster) ?? { record: emptyRecord(cluster), expiresAt: now };
      const result = arbitrate(before, req, now, this.leaseTag());
      // Persist first: an answer must never promise what a restart would forget.
      if (result.persist) await this.deps.store.save(result.state.record);
      this.states.set(cluster, result.state);
      if (result.event) this.deps.audit(cluster, result.event);
      // The lease runs from when the request was decided; writing it down does not extend it.
      return result.answer;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }
}
