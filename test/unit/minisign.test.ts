import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { GeminiError } from '#common/errors.ts';
import {
  blake2b, encodePublicKey, encodeSecretKey, generateKeyPair, keyIdHex, parsePublicKey, parseSecretKey, scryptParams, secretKeyEncrypted, signData, verifyData,
} from '#common/minisign.ts';

const dir = mkdtempSync(join(tmpdir(), 'gk-minisign-'));
const minisign = (args: string[], input?: string) => runPlan({ cmd: 'minisign', args, input: input ?? '' }, { allowFailure: true, timeoutMs: 60_000 });

test('BLAKE2b: RFC 7693 vectors, and the same bytes as OpenSSL\'s BLAKE2b-512 at every block boundary', (t) => {
  t.is(blake2b(Buffer.from('abc')).toString('hex'), 'ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923');
  t.is(blake2b(Buffer.alloc(0), 32).toString('hex'), '0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8');
  t.is(blake2b(Buffer.from('abc'), 32).toString('hex'), 'bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319');
  for (const n of [0, 1, 127, 128, 129, 255, 256, 257, 1000]) {
    const data = randomBytes(n);
    t.is(blake2b(data).toString('hex'), createHash('blake2b512').update(data).digest('hex'), `${n} bytes`);
  }
  t.throws(() => blake2b(Buffer.alloc(1), 65));
});

test('scrypt parameters: libsodium\'s pickparams for minisign\'s limits', (t) => {
  t.deepEqual(scryptParams(33554432n, 1073741824n), { N: 2 ** 20, r: 8, p: 1 });
  t.deepEqual(scryptParams(524288n, 16777216n), { N: 2 ** 14, r: 8, p: 1 });
});

test('our signature verifies with Debian\'s minisign -V; a changed file or trusted comment does not', async (t) => {
  const k = generateKeyPair();
  const pub = join(dir, 'ours.pub');
  writeFileSync(pub, encodePublicKey(k));
  const file = join(dir, 'manifest.json');
  writeFileSync(file, '{"version":"1.2.3"}\n');
  writeFileSync(`${file}.minisig`, signData(k, readFileSync(file), 'geminik8s upgrade 1.2.3'));
  const ok = await minisign(['-Vm', file, '-p', pub]);
  t.is(ok.exitCode, 0, ok.stderr);
  t.regex(ok.stdout, /Trusted comment: geminik8s upgrade 1\.2\.3/);
  t.regex(readFileSync(pub, 'utf8'), new RegExp(`^untrusted comment: minisign public key ${keyIdHex(k.keyId)}\n`));

  writeFileSync(file, '{"version":"9.9.9"}\n');
  t.not((await minisign(['-Vm', file, '-p', pub])).exitCode, 0, 'a changed file');
  writeFileSync(file, '{"version":"1.2.3"}\n');
  const sig = readFileSync(`${file}.minisig`, 'utf8');
  writeFileSync(`${file}.minisig`, sig.replace('trusted comment: geminik8s upgrade 1.2.3', 'trusted comment: geminik8s upgrade 9.9.9'));
  t.not((await minisign(['-Vm', file, '-p', pub])).exitCode, 0, 'a changed trusted comment');
});

test('minisign\'s signature verifies with our code; tampering, another key and a changed trusted comment are refused', async (t) => {
  const pub = join(dir, 'theirs.pub');
  const key = join(dir, 'theirs.key');
  t.is((await minisign(['-G', '-W', '-p', pub, '-s', key])).exitCode, 0);
  const file = join(dir, 'bundle-manifest.json');
  writeFileSync(file, 'manifest bytes\n');
  t.is((await minisign(['-S', '-s', key, '-m', file, '-t', 'signed by minisign'])).exitCode, 0);
  const keys = [parsePublicKey(readFileSync(pub, 'utf8'), pub)];
  const sig = readFileSync(`${file}.minisig`, 'utf8');
  const v = verifyData(sig, readFileSync(file), keys, 'sig');
  t.is(v.trustedComment, 'signed by minisign');
  t.is(v.keyId, keyIdHex(keys[0]!.keyId));
  // The bare base64 line, as minisign -P takes it.
  t.deepEqual(parsePublicKey(readFileSync(pub, 'utf8').split('\n')[1]!, 'line'), keys[0]);

  const refused = (fn: () => unknown, re: RegExp): void => {
    const err = t.throws(fn, { instanceOf: GeminiError });
    t.regex(err!.message, re);
  };
  refused(() => verifyData(sig, Buffer.from('manifest bytes!\n'), keys, 'sig'), /does not match the data/);
  refused(() => verifyData(sig, readFileSync(file), [generateKeyPair()], 'sig'), /not trusted/);
  refused(() => verifyData(sig.replace('signed by minisign', 'signed by someone'), readFileSync(file), keys, 'sig'), /trusted comment does not match/);
  refused(() => verifyData('garbage', readFileSync(file), keys, 'sig'), /line 1/);

  // A key minisign made signs with our code, and minisign verifies it.
  const sk = parseSecretKey(readFileSync(key, 'utf8'), key);
  t.false(secretKeyEncrypted(readFileSync(key, 'utf8'), key));
  writeFileSync(`${file}.minisig`, signData(sk, readFileSync(file), 'signed by geminik8s'));
  t.is((await minisign(['-Vm', file, '-p', pub])).exitCode, 0);
});

test('encrypted secret keys: minisign\'s open with the password, ours open in minisign, a wrong password is named', async (t) => {
  t.timeout(120_000);
  const pub = join(dir, 'enc.pub');
  const key = join(dir, 'enc.key');
  t.is((await minisign(['-G', '-p', pub, '-s', key], 'secret words\nsecret words\n')).exitCode, 0);
  const text = readFileSync(key, 'utf8');
  t.true(secretKeyEncrypted(text, key));
  const sk = parseSecretKey(text, key, 'secret words');
  t.deepEqual(sk.publicKey, parsePublicKey(readFileSync(pub, 'utf8'), pub).publicKey);
  t.throws(() => parseSecretKey(text, key, 'wrong words'), { message: /wrong password/ });
  t.throws(() => parseSecretKey(text, key), { message: /encrypted: give its password/ });

  const ours = join(dir, 'ours-enc.key');
  const k = generateKeyPair();
  writeFileSync(ours, encodeSecretKey(k, 'pw2'));
  writeFileSync(join(dir, 'ours-enc.pub'), encodePublicKey(k));
  const file = join(dir, 'signed-with-ours');
  writeFileSync(file, 'data\n');
  const signed = await minisign(['-S', '-s', ours, '-m', file], 'pw2\n');
  t.is(signed.exitCode, 0, signed.stderr);
  t.is((await minisign(['-Vm', file, '-p', join(dir, 'ours-enc.pub')])).exitCode, 0);
});

test('bad key files name the file, the line and what was expected', (t) => {
  t.throws(() => parsePublicKey('', 'k.pub'), { message: /^k\.pub: empty/ });
  t.throws(() => parsePublicKey('untrusted comment: x\nnot base64!\n', 'k.pub'), { message: /^k\.pub: line 2: not base64/ });
  t.throws(() => parsePublicKey('untrusted comment: x\nAAAA\n', 'k.pub'), { message: /line 2: 3 bytes; expected a minisign public key of 42 bytes/ });
  t.throws(() => parseSecretKey(encodePublicKey(generateKeyPair()), 'k.key'), { message: /k\.key: line 2: 42 bytes; expected a minisign secret key/ });
});
