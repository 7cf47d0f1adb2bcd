import pino, { type DestinationStream, type Logger } from 'pino';
import { redact } from '#common/log.ts';
import type { LogPort } from '../core/ports.ts';

/**
 * Deep copy of log fields with every string passed through `redact()` (registered secrets become
 * `***`), bigints (LSNs) as decimal strings and errors as their message. Cycles and depth are cut.
 */
export function redactFields(value: unknown, depth = 0, seen = new WeakSet<object>()): unknown {
  if (typeof value === 'string') return redact(value);
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object') return typeof value === 'function' || typeof value === 'symbol' ? String(value) : value;
  if (seen.has(value)) return '[circular]';
  if (depth >= 8) return '[too deep]';
  seen.add(value);
  try {
    if (value instanceof Error) {
      return { type: value.name, message: redact(value.message), ...((value as { code?: unknown }).code !== undefined ? { code: redactFields((value as { code?: unknown }).code, depth + 1, seen) } : {}) };
    }
    if (value instanceof Date) return value.toISOString();
    if (Array.isArray(value)) return value.map((v) => redactFields(v, depth + 1, seen));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = redactFields(v, depth + 1, seen);
    return out;
  } finally {
    seen.delete(value);
  }
}

function redactedError(err: Error): Error {
  const copy = new Error(redact(err.message));
  copy.name = err.name;
  copy.stack = err.stack === undefined ? undefined : redact(err.stack);
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) Object.assign(copy, { code: redactFields(code) });
  return copy;
}

/** The agent's LogPort over pino: nothing reaches pino without having gone through redact(). */
export function createLogPort(logger: Logger): LogPort {
  const emit = (level: 'info' | 'warn' | 'error' | 'debug') => (fields: Record<string, unknown>, msg: string): void => {
    if (!logger.isLevelEnabled(level)) return;
    const clean = redactFields(fields) as Record<string, unknown>;
    // pino's own serializer formats `err` (type, message, stack): give it a redacted Error.
    if (fields.err instanceof Error) clean.err = redactedError(fields.err);
    logger[level](clean, redact(msg));
  };
  return { info: emit('info'), warn: emit('warn'), error: emit('error'), debug: emit('debug') };
}

/**
 * The agent's pino logger. Every serialized line passes through `redact()` on its way out,
 * whichever path logged it (the LogPort, the API, a library's error), so registered secrets
 * never reach the journal.
 */
export function agentLogger(node: string, destination?: DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level: process.env.GEMINIK8S_LOG_LEVEL ?? 'info',
    base: { node },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Belt and braces: these keys are masked even when their value was never registered.
    redact: { paths: ['password', '*.password', 'token', '*.token', 'secrets', '*.secrets', 'dsn', '*.dsn'], censor: '***' },
    hooks: { streamWrite: (line: string) => redact(line) },
  };
  return destination ? pino(options, destination) : pino(options);
}
