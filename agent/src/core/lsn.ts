/**
 * PostgreSQL WAL positions ("LSN", printed as `HI/LO` in hexadecimal) as byte offsets.
 * Compare positions as numbers, never as strings and never by time (design decision 1).
 */

const LSN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** `16/B374D848` → 0x16_B374D848n. Throws on anything that is not an LSN. */
export function lsnToBigInt(lsn: string): bigint {
  const m = LSN.exec(lsn.trim());
  if (!m) throw new Error(`not a PostgreSQL LSN: ${JSON.stringify(lsn)}`);
  return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`);
}

/** The inverse of lsnToBigInt, in PostgreSQL's own spelling (upper case, no padding). */
export function formatLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > 0xffff_ffff_ffff_ffffn) throw new Error(`LSN out of range: ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}
