/** Exit codes of every geminik8s command. Documented in README.md; keep both in sync. */
export const ExitCode = {
  ok: 0,
  internal: 1,
  invalidInput: 2,
  missingTool: 3,
  commandFailed: 4,
  refused: 5,
  artifact: 6,
  timeout: 7,
  /** `status`: a leader writes, but a node, the witness or synchronous replication is missing. */
  degraded: 8,
  /** `status`: no node is a leader with a writable primary (or two claim to be). */
  down: 9,
  /** `preflight`: a check failed (the report says which and why). */
  preflightFailed: 10,
  interrupted: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** An error meant for the operator: its message is complete and its exit code documented. */
export class GeminiError extends Error {
  readonly exitCode: ExitCodeValue;
  constructor(message: string, exitCode: ExitCodeValue = ExitCode.internal, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GeminiError';
    this.exitCode = exitCode;
  }
}

/** One problem in an input file, located as precisely as the source allows. */
export interface ValidationIssue {
  file: string;
  line?: number;
  col?: number;
  /** Dotted path inside the document, e.g. `nodes.1.ip`; empty for the whole document. */
  path: string;
  message: string;
  found?: string;
  expected?: string;
}

export function formatIssue(issue: ValidationIssue): string {
  const where = issue.line ? `${issue.file}:${issue.line}:${issue.col ?? 1}` : issue.file;
  const path = issue.path ? ` ${issue.path}:` : '';
  const detail: string[] = [];
  if (issue.found !== undefined) detail.push(`found ${issue.found}`);
  if (issue.expected !== undefined) detail.push(`expected ${issue.expected}`);
  return `${where}:${path} ${issue.message}${detail.length ? ` (${detail.join('; ')})` : ''}`;
}

/** Raised with every problem found in one or more files, reported together. */
export class ValidationError extends GeminiError {
  readonly issues: ValidationIssue[];
  constructor(issues: ValidationIssue[]) {
    const count = issues.length;
    super(
      `${count} problem${count === 1 ? '' : 's'} found:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`,
      ExitCode.invalidInput,
    );
    this.name = 'ValidationError';
    this.issues = issues;
  }
}

export function exitCodeOf(err: unknown): ExitCodeValue {
  return err instanceof GeminiError ? err.exitCode : ExitCode.internal;
}
