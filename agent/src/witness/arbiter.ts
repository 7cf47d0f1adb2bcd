/**
 * The witness's arbiter: the pure rules that decide who may be the writable primary.
 *
 * The durable record per cluster follows Patroni's leader key plus its `/sync` key:
 * - `holder` and `generation`: who holds the lease, under which generation (issued here only);
 * - `promotable`: the one standby that may take the lease when it expires, or nobody.
 *
 * A leader records "nobody" here before it turns synchronous replication off, and records its
 * standby only after it has seen it `sync`; a standby can take the lease only when it is the
 * recorded promotable node and the lease has expired on this witness's monotonic clock.
 */

/** What the witness persists for one cluster (fsynced before any answer that depends on it). */
export interface ArbiterRecord {
  cluster: string;
  /** Last generation issued; only increases. 0 = never granted. */
  generation: number;
  holder: string | null;
  promotable: string | null;
  /** Longest lease period ever granted: after a restart, nobody but the holder gets the lease for this long plus a margin. */
  ttlMs: number;
  /** Timeline the holder reported after its promotion (audit). */
  timeline: number | null;
}

/** The record plus what lives only in memory: the expiry on this process's monotonic clock. */
export interface ArbiterState {
  record: ArbiterRecord;
  expiresAt: number;
  /**
   * Which grant or renewal the current lease is (a new value at each, chosen by the caller of
   * arbitrate): a `release` that names an older one was sent before a renewal and ends nothing.
   */
  lease?: number;
}

export type ArbiterRequest =
  /** Renew (the holder), take over (the promotable standby, once expired) or bootstrap (generation 0, nobody holds). */
  | { op: 'acquire'; node: string; generation: number; ttlMs: number; bootstrap?: boolean }
  /** The holder names the standby that may be promoted, or nobody (`null`). */
  | { op: 'promotable'; node: string; generation: number; promotable: string | null }
  /**
   * The holder gives the lease up now (planned switchover); `promotable` is kept. `lease`: the
   * grant or renewal it gives up (ArbiterAnswer.lease); a release that arrives after a later
   * renewal is refused as `stale`. Without it (an older agent), the current lease ends.
   */
  | { op: 'release'; node: string; generation: number; lease?: number }
  /** The holder reports its timeline after a promotion (audit). */
  | { op: 'timeline'; node: string; generation: number; timeline: number }
  /**
   * An operator's forced failover, sent by the standby named: once the lease has expired here,
   * revoke it (generation + 1, nobody holds) and name `node` promotable, although the holder had
   * not. Compare-and-set on the generation the operator decided on.
   */
  | { op: 'force'; node: string; generation: number }
  | { op: 'read' };

export type AnswerCode = 'granted' | 'renewed' | 'set' | 'released' | 'recorded' | 'forced' | 'read' | 'held' | 'not-promotable' | 'stale' | 'not-holder' | 'invalid';

export interface ArbiterAnswer {
  ok: boolean;
  code: AnswerCode;
  generation: number;
  holder: string | null;
  promotable: string | null;
  /** Lease time left at the witness (0 when expired). */
  remainingMs: number;
  /** Which grant or renewal the current lease is (ArbiterState.lease), for the holder's release. */
  lease?: number;
  reason: string;
}

/** One line for the audit log: every grant, refusal and handover. */
export interface ArbiterEvent {
  op: ArbiterRequest['op'];
  node?: string;
  code: AnswerCode;
  generation: number;
  holder: string | null;
  promotable: string | null;
  previousHolder?: string | null;
  timeline?: number;
}

export interface ArbiterResult {
  state: ArbiterState;
  answer: ArbiterAnswer;
  /** The durable record changed: persist it before answering. */
  persist: boolean;
  event?: ArbiterEvent;
}

export const MAX_TTL_MS = 600_000;

export function emptyRecord(cluster: string): ArbiterRecord {
  return { cluster, generation: 0, holder: null, promotable: null, ttlMs: 0, timeline: null };
}

/**
 * State after loading a record at start: the recorded holder may still believe its lease valid,
 * so nobody else gets it until a full lease period plus a margin has passed.
 */
export function restoredState(record: ArbiterRecord, now: number, marginMs: number): ArbiterState {
  return { record, expiresAt: record.holder ? now + record.ttlMs + marginMs : now };
}

function answer(s: ArbiterState, now: number, ok: boolean, code: AnswerCode, reason: string): ArbiterAnswer {
  const r = s.record;
  return { ok, code, generation: r.generation, holder: r.holder, promotable: r.promotable, remainingMs: Math.max(0, Math.round(s.expiresAt - now)), ...(s.lease === undefined ? {} : { lease: s.lease }), reason };
}

/**
 * Apply one request at witness time `now` (pure). `nextLease`: the value a grant or renewal made
 * by this request takes as ArbiterState.lease (the shell draws it: it must differ from every
 * earlier one, across restarts too).
 */
export function arbitrate(state: ArbiterState, req: ArbiterRequest, now: number, nextLease = (state.lease ?? 0) + 1): ArbiterResult {
  const r = state.record;
  const same = (s: ArbiterState, persist: boolean, code: AnswerCode, ok: boolean, reason: string, extra: Partial<ArbiterEvent> = {}): ArbiterResult => ({
    state: s,
    answer: answer(s, now, ok, code, reason),
    persist,
    event: req.op === 'read' ? undefined : { op: req.op, node: 'node' in req ? req.node : undefined, code, generation: s.record.generation, holder: s.record.holder, promotable: s.record.promotable, ...extra },
  });
  if (req.op === 'read') return same(state, false, 'read', true, 'record');
  const expired = now >= state.expiresAt;
  switch (req.op) {
    case 'acquire': {
      if (!(req.ttlMs > 0 && req.ttlMs <= MAX_TTL_MS)) return same(state, false, 'invalid', false, `ttlMs must be in (0, ${MAX_TTL_MS}]`);
      const ttlMs = Math.max(r.ttlMs, req.ttlMs);
      if (r.holder === req.node) {
        if (req.generation !== r.generation) return same(state, false, 'stale', false, `holder ${req.node} asked with generation ${req.generation}; the lease is at generation ${r.generation}`);
        const next = { record: ttlMs === r.ttlMs ? r : { ...r, ttlMs }, expiresAt: now + req.ttlMs, lease: nextLease };
        return { ...same(next, ttlMs !== r.ttlMs, 'renewed', true, 'lease renewed'), event: undefined };
      }
      if (r.holder === null && r.generation === 0) {
        if (!req.bootstrap) return same(state, false, 'not-promotable', false, 'the cluster has never had a leader; only the bootstrap leader may take the first lease');
        const next = { record: { ...r, generation: 1, holder: req.node, promotable: null, ttlMs }, expiresAt: now + req.ttlMs, lease: nextLease };
        return same(next, true, 'granted', true, 'first lease of the cluster (bootstrap)', { previousHolder: null });
      }
      if (!expired) return same(state, false, 'held', false, `${r.holder} holds the lease for ${Math.round(state.expiresAt - now)} ms more`);
      if (r.promotable !== req.node) {
        return same(state, false, 'not-promotable', false, r.promotable === null
          ? `the lease of ${r.holder} expired, but it recorded that nobody may be promoted (its standby was not synchronous)`
          : `the lease expired, but only ${r.promotable} may be promoted`);
      }
      if (req.generation > r.generation) return same(state, false, 'stale', false, `generation ${req.generation} is newer than the witness's ${r.generation}`);
      const next = { record: { ...r, generation: r.generation + 1, holder: req.node, promotable: null, ttlMs, timeline: null }, expiresAt: now + req.ttlMs, lease: nextLease };
      return same(next, true, 'granted', true, `lease of ${r.holder} expired; ${req.node} was the recorded synchronous standby: handed over`, { previousHolder: r.holder });
    }
    case 'promotable': {
      if (r.holder !== req.node || r.generation !== req.generation) return same(state, false, 'not-holder', false, `${req.node} at generation ${req.generation} does not hold the lease (holder ${r.holder}, generation ${r.generation})`);
      if (req.promotable === req.node) return same(state, false, 'invalid', false, 'the holder cannot name itself promotable');
      // Naming a standby widens who may take over: only under a live lease. Naming nobody only narrows it.
      if (req.promotable !== null && expired) return same(state, false, 'not-holder', false, 'the lease has expired: renew it before naming a promotable standby');
      if (r.promotable === req.promotable) return { ...same(state, false, 'set', true, 'unchanged'), event: undefined };
      const next = { ...state, record: { ...r, promotable: req.promotable } };
      return same(next, true, 'set', true, req.promotable === null ? 'nobody may be promoted' : `${req.promotable} may be promoted`);
    }
    case 'release': {
      if (r.holder !== req.node || r.generation !== req.generation) return same(state, false, 'not-holder', false, `${req.node} does not hold the lease at generation ${req.generation}`);
      // A release that was overtaken by a renewal of the same holder (the switchover failed and
      // it took its lease back, or a renewal sent earlier landed later) must not end the newer lease.
      if (req.lease !== undefined && req.lease !== state.lease) return same(state, false, 'stale', false, `this release gives up lease ${req.lease}; the lease is ${state.lease ?? 'unnamed'} now (renewed since): it stays`);
      return same({ ...state, expiresAt: now }, false, 'released', true, `released; ${r.promotable ?? 'nobody'} may take it over`);
    }
    case 'force': {
      // The operator saw this generation and decided on it: anything newer is another story.
      if (req.generation !== r.generation) return same(state, false, 'stale', false, `the operator decided at generation ${req.generation}; the witness is at generation ${r.generation}`);
      if (r.generation === 0) return same(state, false, 'not-promotable', false, 'the cluster has never had a leader: nothing to fail over from');
      if (r.holder === req.node) return same(state, false, 'invalid', false, `${req.node} already holds the lease`);
      // The expiry is what fences the old holder (its own deadline comes first): never before it.
      if (!expired) return same(state, false, 'held', false, `${r.holder} holds the lease for ${Math.round(state.expiresAt - now)} ms more: it may still be writing`);
      const next = { record: { ...r, generation: r.generation + 1, holder: null, promotable: req.node, timeline: null }, expiresAt: now };
      return same(next, true, 'forced', true, `forced by an operator: the expired lease of ${r.holder ?? 'nobody'} is revoked (generation ${r.generation + 1}) and ${req.node} may take it${r.promotable === req.node ? '' : ', although it was not recorded as synchronous'}`, { previousHolder: r.holder });
    }
    case 'timeline': {
      if (r.holder !== req.node || r.generation !== req.generation) return same(state, false, 'not-holder', false, `${req.node} does not hold the lease at generation ${req.generation}`);
      if (r.timeline === req.timeline) return { ...same(state, false, 'recorded', true, 'unchanged'), event: undefined };
      const next = { ...state, record: { ...r, timeline: req.timeline } };
      return same(next, true, 'recorded', true, `generation ${r.generation} runs on timeline ${req.timeline}`, { timeline: req.timeline });
    }
  }
}

/** Parse and check a request body; a string saying what is wrong when it is not a request. */
export function parseRequest(body: unknown): ArbiterRequest | string {
  if (typeof body !== 'object' || body === null) return 'expected a JSON object';
  const b = body as Record<string, unknown>;
  const str = (k: string): boolean => typeof b[k] === 'string' && (b[k] as string).length > 0 && (b[k] as string).length <= 63;
  const int = (k: string): boolean => Number.isInteger(b[k]) && (b[k] as number) >= 0;
  switch (b.op) {
    case 'read':
      return { op: 'read' };
    case 'acquire':
      if (!str('node') || !int('generation') || typeof b.ttlMs !== 'number') return 'acquire needs node, generation, ttlMs';
      return { op: 'acquire', node: b.node as string, generation: b.generation as number, ttlMs: b.ttlMs, bootstrap: b.bootstrap === true };
    case 'promotable':
      if (!str('node') || !int('generation') || !(b.promotable === null || str('promotable'))) return 'promotable needs node, generation, promotable (a node name or null)';
      return { op: 'promotable', node: b.node as string, generation: b.generation as number, promotable: b.promotable as string | null };
    case 'release':
      if (!str('node') || !int('generation') || (b.lease !== undefined && !int('lease'))) return 'release needs node, generation (and lease, if any, an integer)';
      return { op: 'release', node: b.node as string, generation: b.generation as number, ...(b.lease === undefined ? {} : { lease: b.lease as number }) };
    case 'force':
      if (!str('node') || !int('generation')) return 'force needs node, generation';
      return { op: 'force', node: b.node as string, generation: b.generation as number };
    case 'timeline':
      if (!str('node') || !int('generation') || !int('timeline')) return 'timeline needs node, generation, timeline';
      return { op: 'timeline', node: b.node as string, generation: b.generation as number, timeline: b.timeline as number };
    default:
      return 'op must be one of acquire, promotable, release, timeline, force, read';
  }
}
