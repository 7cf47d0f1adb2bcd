import { timingSafeEqual } from 'node:crypto';

/**
 * A presented bearer token equals the expected one, compared in constant time for equal
 * lengths (timingSafeEqual throws otherwise). An empty expected token never matches.
 */
export function tokenMatches(given: string, token: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return b.length > 0 && a.length === b.length && timingSafeEqual(a, b);
}
