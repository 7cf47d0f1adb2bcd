// Semantic versions (semver.org 2.0.0) and the small range language upgrade bundles use.

/** A parsed version; build metadata is kept but never compared. */
export interface Version {
  major: number;
  minor: number;
  patch: number;
  prerelease: string[];
}

const VERSION_RE = /^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/;

export function parseVersion(text: string): Version | undefined {
  const m = VERSION_RE.exec(text.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]), prerelease: m[4] ? m[4].split('.') : [] };
}

/** Precedence as semver.org §11: -1, 0 or 1. */
export function compareVersions(a: Version, b: Version): number {
  for (const k of ['major', 'minor', 'patch'] as const) if (a[k] !== b[k]) return a[k] < b[k] ? -1 : 1;
  if (!a.prerelease.length || !b.prerelease.length) return a.prerelease.length === b.prerelease.length ? 0 : a.prerelease.length ? -1 : 1;
  for (let i = 0; i < Math.max(a.prerelease.length, b.prerelease.length); i++) {
    const x = a.prerelease[i];
    const y = b.prerelease[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    if (x === y) continue;
    const nx = /^\d+$/.test(x);
    const ny = /^\d+$/.test(y);
    if (nx && ny) return Number(x) < Number(y) ? -1 : 1;
    if (nx !== ny) return nx ? -1 : 1;
    return x < y ? -1 : 1;
  }
  return 0;
}

const COMPARATOR_RE = /^(>=|<=|>|<|=)?(.+)$/;

/**
 * Check a range: `*` (any version), or comparators separated by spaces that must all hold
 * (`>=1.0.0 <2.0.0`, `1.2.3`). Returns an error message for a malformed range.
 */
export function rangeError(range: string): string | undefined {
  if (range.trim() === '*') return undefined;
  const parts = range.trim().split(/\s+/);
  for (const p of parts) {
    const m = COMPARATOR_RE.exec(p);
    if (!m || !parseVersion(m[2]!)) return `${JSON.stringify(p)} is not a comparator such as >=1.0.0, <2.0.0 or 1.2.3`;
  }
  return undefined;
}

/** Whether `version` lies in `range` (see rangeError for the syntax); a malformed range matches nothing. */
export function satisfies(version: string, range: string): boolean {
  const v = parseVersion(version);
  if (!v || rangeError(range)) return false;
  if (range.trim() === '*') return true;
  return range.trim().split(/\s+/).every((p) => {
    const [, op = '=', text] = COMPARATOR_RE.exec(p)!;
    const c = compareVersions(v, parseVersion(text!)!);
    switch (op) {
      case '>=': return c >= 0;
      case '<=': return c <= 0;
      case '>': return c > 0;
      case '<': return c < 0;
      default: return c === 0;
    }
  });
}
