import { createHash, createPrivateKey, createPublicKey, randomBytes, scryptSync, sign, verify, type KeyObject } from 'node:crypto';
import { ExitCode, GeminiError } from './errors.ts';

// minisign's formats (jedisct1/minisign src/minisign.h, minisign.c), with node:crypto.
// A public key file: an untrusted comment line, then base64("Ed" | key id (8) | Ed25519 key (32)).
// A secret key file: an untrusted comment line, then base64("Ed" | kdf "Sc" or "\0\0" | "B2" |
// scrypt salt (32) | opslimit LE (8) | memlimit LE (8) | key id (8) | Ed25519 secret key (64:
// seed then public key) | BLAKE2b-256 checksum (32)); the last 104 bytes are XORed with an
// scrypt stream when the kdf is "Sc".
// A signature: untrusted comment line; base64("ED" | key id | Ed25519 over BLAKE2b-512(file));
// "trusted comment: " line; base64(Ed25519 over signature | trusted comment).

const COMMENT_PREFIX = 'untrusted comment: ';
const TRUSTED_PREFIX = 'trusted comment: ';
const SIGALG = Buffer.from('Ed');
const SIGALG_HASHED = Buffer.from('ED');
const KDF_SCRYPT = Buffer.from('Sc');
const KDF_NONE = Buffer.from([0, 0]);
const CHKALG = Buffer.from('B2');
const KEYNUM_SK_BYTES = 8 + 64 + 32;
const SECRET_KEY_BYTES = 2 + 2 + 2 + 32 + 8 + 8 + KEYNUM_SK_BYTES;
// libsodium's crypto_pwhash_scryptsalsa208sha256_{OPS,MEM}LIMIT_SENSITIVE, what minisign -G uses.
const OPSLIMIT_SENSITIVE = 33554432n;
const MEMLIMIT_SENSITIVE = 1073741824n;

/** A minisign public key: its 8-byte id and the Ed25519 key. */
export interface MinisignPublicKey {
  keyId: Buffer;
  publicKey: Buffer;
}

/** A minisign secret key, decrypted: the Ed25519 seed and public key. */
export interface MinisignSecretKey extends MinisignPublicKey {
  seed: Buffer;
}

/** What a good signature says. */
export interface MinisignVerified {
  keyId: string;
  trustedComment: string;
}

/** The key id as minisign prints it: the 8 bytes as a little-endian number, 16 upper-case hex digits. */
export function keyIdHex(keyId: Buffer): string {
  return Buffer.from(keyId).reverse().toString('hex').toUpperCase();
}

// ---------------------------------------------------------------- BLAKE2b (RFC 7693)

const MASK = (1n << 64n) - 1n;
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4], [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13], [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11], [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5], [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];
const rotr = (x: bigint, n: bigint): bigint => ((x >> n) | (x << (64n - n))) & MASK;

/**
 * Unkeyed BLAKE2b with any output length from 1 to 64 bytes. Only for short inputs (a secret
 * key's checksum): OpenSSL, and so node:crypto, offers BLAKE2b-512 alone, and BLAKE2b-256 is
 * not a truncation of it (the length is part of the parameter block).
 */
export function blake2b(data: Uint8Array, outLen = 64): Buffer {
  if (!Number.isInteger(outLen) || outLen < 1 || outLen > 64) throw new RangeError('BLAKE2b output length must be 1 to 64 bytes');
  const h = [...IV];
  h[0] = h[0]! ^ 0x01010000n ^ BigInt(outLen);
  const blocks = Math.max(1, Math.ceil(data.length / 128));
  for (let b = 0; b < blocks; b++) {
    const block = Buffer.alloc(128);
    Buffer.from(data.subarray(b * 128, b * 128 + 128)).copy(block);
    const m = Array.from({ length: 16 }, (_, i) => block.readBigUInt64LE(i * 8));
    const last = b === blocks - 1;
    const t = BigInt(last ? data.length : (b + 1) * 128);
    const v = [...h, ...IV];
    v[12] = v[12]! ^ (t & MASK);
    v[13] = v[13]! ^ (t >> 64n);
    if (last) v[14] = v[14]! ^ MASK;
    const g = (a: number, bb: number, c: number, d: number, x: bigint, y: bigint): void => {
      v[a] = (v[a]! + v[bb]! + x) & MASK;
      v[d] = rotr(v[d]! ^ v[a]!, 32n);
      v[c] = (v[c]! + v[d]!) & MASK;
      v[bb] = rotr(v[bb]! ^ v[c]!, 24n);
      v[a] = (v[a]! + v[bb]! + y) & MASK;
      v[d] = rotr(v[d]! ^ v[a]!, 16n);
      v[c] = (v[c]! + v[d]!) & MASK;
      v[bb] = rotr(v[bb]! ^ v[c]!, 63n);
    };
    for (let r = 0; r < 12; r++) {
      const s = SIGMA[r % 10]!;
      g(0, 4, 8, 12, m[s[0]!]!, m[s[1]!]!);
      g(1, 5, 9, 13, m[s[2]!]!, m[s[3]!]!);
      g(2, 6, 10, 14, m[s[4]!]!, m[s[5]!]!);
      g(3, 7, 11, 15, m[s[6]!]!, m[s[7]!]!);
      g(0, 5, 10, 15, m[s[8]!]!, m[s[9]!]!);
      g(1, 6, 11, 12, m[s[10]!]!, m[s[11]!]!);
      g(2, 7, 8, 13, m[s[12]!]!, m[s[13]!]!);
      g(3, 4, 9, 14, m[s[14]!]!, m[s[15]!]!);
    }
    for (let i = 0; i < 8; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 8]!;
  }
  const out = Buffer.alloc(64);
  h.forEach((w, i) => out.writeBigUInt64LE(w, i * 8));
  return out.subarray(0, outLen);
}

// ---------------------------------------------------------------- keys

const b64url = (b: Buffer): string => b.toString('base64url');

// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): the key is derived from the seed alone.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

function seedKey(seed: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' });
}

function privateKeyObject(k: MinisignSecretKey): KeyObject {
  return seedKey(k.seed);
}

function publicOf(seed: Buffer): Buffer {
  return Buffer.from(createPublicKey(seedKey(seed)).export({ format: 'jwk' }).x!, 'base64url');
}

function publicKeyObject(k: MinisignPublicKey): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(k.publicKey) }, format: 'jwk' });
}

/** A new key pair with a random key id, as `minisign -G` makes one. */
export function generateKeyPair(): MinisignSecretKey {
  const seed = randomBytes(32);
  return { keyId: randomBytes(8), seed, publicKey: publicOf(seed) };
}

function fail(source: string, message: string): never {
  throw new GeminiError(`${source}: ${message}`, ExitCode.invalidInput);
}

/** The base64 line of a key or signature file: the line after the untrusted comment, or the only line. */
function payloadLine(text: string, source: string, what: string): { comment?: string; b64: string } {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '');
  if (lines.length === 0) fail(source, `empty; expected a minisign ${what}`);
  if (lines[0]!.startsWith(COMMENT_PREFIX)) {
    if (lines.length < 2) fail(source, `line 2: missing; expected the base64 ${what} after the untrusted comment`);
    return { comment: lines[0]!.slice(COMMENT_PREFIX.length), b64: lines[1]! };
  }
  if (lines.length === 1) return { b64: lines[0]! };
  return fail(source, `line 1: expected "${COMMENT_PREFIX}…", found ${JSON.stringify(lines[0]!.slice(0, 40))}`);
}

function decodeBase64(b64: string, source: string, line: number, what: string, bytes: number): Buffer {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) fail(source, `line ${line}: not base64; expected a minisign ${what}`);
  const buf = Buffer.from(b64, 'base64');
  if (buf.length !== bytes) fail(source, `line ${line}: ${buf.length} bytes; expected a minisign ${what} of ${bytes} bytes`);
  return buf;
}

/** The text of a public key file, byte for byte as minisign writes it. */
export function encodePublicKey(k: MinisignPublicKey): string {
  const raw = Buffer.concat([SIGALG, k.keyId, k.publicKey]);
  return `${COMMENT_PREFIX}minisign public key ${keyIdHex(k.keyId)}\n${raw.toString('base64')}\n`;
}

/** Parse a public key file, or the bare base64 line (`minisign -P`). */
export function parsePublicKey(text: string, source: string): MinisignPublicKey {
  const { comment, b64 } = payloadLine(text, source, 'public key');
  const raw = decodeBase64(b64, source, comment === undefined ? 1 : 2, 'public key', 42);
  if (!raw.subarray(0, 2).equals(SIGALG)) fail(source, `unsupported signature algorithm ${JSON.stringify(raw.subarray(0, 2).toString('latin1'))}; expected "Ed"`);
  return { keyId: raw.subarray(2, 10), publicKey: raw.subarray(10, 42) };
}

function checksum(keyId: Buffer, secret: Buffer): Buffer {
  return blake2b(Buffer.concat([SIGALG, keyId, secret]), 32);
}

/** libsodium's pickparams for scryptsalsa208sha256: opslimit and memlimit to N, r, p. */
export function scryptParams(opslimit: bigint, memlimit: bigint): { N: number; r: number; p: number } {
  const ops = opslimit < 32768n ? 32768n : opslimit;
  const r = 8n;
  let nLog2 = 1n;
  let p: bigint;
  if (ops < memlimit / 32n) {
    p = 1n;
    const maxN = ops / (r * 4n);
    for (nLog2 = 1n; nLog2 < 63n; nLog2++) if (1n << nLog2 > maxN / 2n) break;
  } else {
    const maxN = memlimit / (r * 128n);
    for (nLog2 = 1n; nLog2 < 63n; nLog2++) if (1n << nLog2 > maxN / 2n) break;
    let maxrp = ops / 4n / (1n << nLog2);
    if (maxrp > 0x3fffffffn) maxrp = 0x3fffffffn;
    p = maxrp / r;
  }
  return { N: Number(1n << nLog2), r: Number(r), p: Number(p) };
}

function scryptStream(password: string, salt: Buffer, opslimit: bigint, memlimit: bigint): Buffer {
  const { N, r, p } = scryptParams(opslimit, memlimit);
  return scryptSync(Buffer.from(password, 'utf8'), salt, KEYNUM_SK_BYTES, { N, r, p, maxmem: 128 * N * r * (p + 1) + 1024 * 1024 });
}

/**
 * The text of a secret key file. With a password the key is encrypted as `minisign -G` does
 * (scrypt with libsodium's "sensitive" limits: 1 GiB of memory); without, as `minisign -G -W`.
 */
export function encodeSecretKey(k: MinisignSecretKey, password?: string): string {
  const secret = Buffer.concat([k.seed, k.publicKey]);
  let keynum = Buffer.concat([k.keyId, secret, checksum(k.keyId, secret)]);
  const salt = password === undefined ? Buffer.alloc(32) : randomBytes(32);
  const ops = Buffer.alloc(8);
  const mem = Buffer.alloc(8);
  if (password !== undefined) {
    ops.writeBigUInt64LE(OPSLIMIT_SENSITIVE);
    mem.writeBigUInt64LE(MEMLIMIT_SENSITIVE);
    const stream = scryptStream(password, salt, OPSLIMIT_SENSITIVE, MEMLIMIT_SENSITIVE);
    keynum = Buffer.from(keynum.map((b, i) => b ^ stream[i]!));
  }
  const raw = Buffer.concat([SIGALG, password === undefined ? KDF_NONE : KDF_SCRYPT, CHKALG, salt, ops, mem, keynum]);
  return `${COMMENT_PREFIX}minisign encrypted secret key\n${raw.toString('base64')}\n`;
}

/** Whether a secret key file needs a password. */
export function secretKeyEncrypted(text: string, source: string): boolean {
  const raw = decodeBase64(payloadLine(text, source, 'secret key').b64, source, 2, 'secret key', SECRET_KEY_BYTES);
  return raw.subarray(2, 4).equals(KDF_SCRYPT);
}

/** Parse (and decrypt) a secret key file; a wrong password is caught by the key's checksum. */
export function parseSecretKey(text: string, source: string, password?: string): MinisignSecretKey {
  const { comment, b64 } = payloadLine(text, source, 'secret key');
  const raw = decodeBase64(b64, source, comment === undefined ? 1 : 2, 'secret key', SECRET_KEY_BYTES);
  if (!raw.subarray(0, 2).equals(SIGALG)) fail(source, 'unsupported signature algorithm; expected "Ed"');
  if (!raw.subarray(4, 6).equals(CHKALG)) fail(source, 'unsupported checksum function; expected "B2"');
  const kdf = raw.subarray(2, 4);
  let keynum = raw.subarray(54);
  if (kdf.equals(KDF_SCRYPT)) {
    if (password === undefined) fail(source, 'the key is encrypted: give its password');
    const stream = scryptStream(password, raw.subarray(6, 38), raw.readBigUInt64LE(38), raw.readBigUInt64LE(46));
    keynum = Buffer.from(keynum.map((b, i) => b ^ stream[i]!));
  } else if (!kdf.equals(KDF_NONE)) {
    fail(source, 'unsupported key derivation function; expected scrypt ("Sc") or none');
  }
  const keyId = keynum.subarray(0, 8);
  const secret = keynum.subarray(8, 72);
  // minisign -W leaves the checksum of an unencrypted key zero; it only checks encrypted ones.
  if (kdf.equals(KDF_SCRYPT) && !checksum(keyId, secret).equals(keynum.subarray(72, 104))) fail(source, 'wrong password for that key');
  const k = { keyId, seed: secret.subarray(0, 32), publicKey: secret.subarray(32, 64) };
  if (!publicOf(k.seed).equals(k.publicKey)) fail(source, kdf.equals(KDF_SCRYPT) ? 'wrong password for that key' : 'the key is damaged: its public half does not match its seed');
  return k;
}

// ---------------------------------------------------------------- signatures

/** The default trusted comment minisign writes for a prehashed signature. */
export function defaultTrustedComment(fileName: string, nowSeconds: number): string {
  return `timestamp:${nowSeconds}\tfile:${fileName}\thashed`;
}

/** A signature file for `data` in minisign's prehashed ("ED") form. */
export function signData(k: MinisignSecretKey, data: Uint8Array, trustedComment: string, untrustedComment = 'signature from geminik8s secret key'): string {
  if (/[\r\n]/.test(trustedComment) || /[\r\n]/.test(untrustedComment)) throw new GeminiError('a minisign comment must be one line', ExitCode.invalidInput);
  const priv = privateKeyObject(k);
  const sig = sign(null, createHash('blake2b512').update(data).digest(), priv);
  const global = sign(null, Buffer.concat([sig, Buffer.from(trustedComment, 'utf8')]), priv);
  const line2 = Buffer.concat([SIGALG_HASHED, k.keyId, sig]).toString('base64');
  return `${COMMENT_PREFIX}${untrustedComment}\n${line2}\n${TRUSTED_PREFIX}${trustedComment}\n${global.toString('base64')}\n`;
}

/**
 * Check a signature file over `data` against trusted keys, as `minisign -V` does, global
 * signature included. Throws a GeminiError (refused) naming what is wrong.
 */
export function verifyData(signature: string, data: Uint8Array, keys: MinisignPublicKey[], source: string): MinisignVerified {
  const lines = signature.split(/\r?\n/);
  if (!lines[0]?.startsWith(COMMENT_PREFIX)) fail(source, `line 1: expected "${COMMENT_PREFIX}…"`);
  const raw = decodeBase64((lines[1] ?? '').trim(), source, 2, 'signature', 74);
  if (!lines[2]?.startsWith(TRUSTED_PREFIX)) fail(source, `line 3: expected "${TRUSTED_PREFIX}…"`);
  const trustedComment = lines[2].slice(TRUSTED_PREFIX.length).replace(/\s+$/, '');
  const global = decodeBase64((lines[3] ?? '').trim(), source, 4, 'global signature', 64);
  const alg = raw.subarray(0, 2);
  if (!alg.equals(SIGALG_HASHED) && !alg.equals(SIGALG)) fail(source, `unsupported signature algorithm ${JSON.stringify(alg.toString('latin1'))}`);
  const keyId = raw.subarray(2, 10);
  const sig = raw.subarray(10, 74);
  const key = keys.find((k) => k.keyId.equals(keyId));
  const refuse = (why: string): never => {
    throw new GeminiError(`${source}: ${why}`, ExitCode.refused);
  };
  if (!key) refuse(`signed with key ${keyIdHex(keyId)}, which is not trusted (trusted: ${keys.map((k) => keyIdHex(k.keyId)).join(', ') || 'none'})`);
  const pub = publicKeyObject(key!);
  const message = alg.equals(SIGALG_HASHED) ? createHash('blake2b512').update(data).digest() : data;
  if (!verify(null, message, pub, sig)) refuse(`the signature by key ${keyIdHex(keyId)} does not match the data`);
  if (!verify(null, Buffer.concat([sig, Buffer.from(trustedComment, 'utf8')]), pub, global)) refuse('the trusted comment does not match its global signature');
  return { keyId: keyIdHex(keyId), trustedComment };
}
