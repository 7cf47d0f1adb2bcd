import { appendFileSync } from 'node:fs';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const secrets = new Set<string>();

/** Register a secret value: every log line and error message passes through `redact`. */
export function registerSecret(value: string): void {
  if (value.length >= 8) secrets.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const s of secrets) out = out.split(s).join('***');
  return out;
}

export interface LoggerOptions {
  level: LogLevel;
  file?: string;
  color: boolean;
  /** Where human lines go; stderr so stdout stays machine-readable. */
  write?: (line: string) => void;
}

/** The builder's logger: plain lines for people on stderr, JSON lines in --log-file. */
export class Logger {
  constructor(private readonly options: LoggerOptions) {}

  get level(): LogLevel {
    return this.options.level;
  }

  enabled(level: LogLevel): boolean {
    return LOG_LEVELS.indexOf(level) >= LOG_LEVELS.indexOf(this.options.level);
  }

  log(level: LogLevel, message: string, fields: Record<string, unknown> = {}): void {
    const clean = redact(message);
    if (this.options.file) {
      appendFileSync(this.options.file, `${redact(JSON.stringify({ time: new Date().toISOString(), level, msg: clean, ...fields }))}\n`, { mode: 0o600 });
    }
    if (!this.enabled(level)) return;
    const prefix = level === 'info' ? '' : `${this.paint(level, level)}: `;
    (this.options.write ?? ((l: string) => process.stderr.write(`${l}\n`)))(`${prefix}${clean}`);
  }

  debug(message: string, fields?: Record<string, unknown>): void {
    this.log('debug', message, fields);
  }
  info(message: string, fields?: Record<string, unknown>): void {
    this.log('info', message, fields);
  }
  warn(message: string, fields?: Record<string, unknown>): void {
    this.log('warn', message, fields);
  }
  error(message: string, fields?: Record<string, unknown>): void {
    this.log('error', message, fields);
  }

  paint(kind: LogLevel | 'ok', text: string): string {
    if (!this.options.color) return text;
    const codes = { debug: 90, info: 0, warn: 33, error: 31, ok: 32 } as const;
    return `\u001b[${codes[kind]}m${text}\u001b[0m`;
  }
}
