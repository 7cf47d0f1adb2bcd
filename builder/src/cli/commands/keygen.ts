import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { encodePublicKey, encodeSecretKey, generateKeyPair, keyIdHex, parsePublicKey, verifyData } from '#common/minisign.ts';
import { readBundle } from '#common/upgrade/bundle.ts';
import type { CliContext } from '../context.ts';

export function registerKeygen(program: Command, ctx: () => CliContext): void {
  program
    .command('keygen')
    .description('make a minisign key pair for signing upgrade bundles: PREFIX.key (secret, 0600) and PREFIX.pub')
    .requiredOption('--out <prefix>', 'path prefix of the two files, e.g. secrets/upgrade')
    .option('--password-file <file>', 'encrypt the secret key with the password in this file (scrypt, as minisign -G)')
    .option('--force', 'replace existing key files')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { out: string; passwordFile?: string; force?: boolean; json?: boolean }) => {
      const c = ctx();
      const secretFile = `${opts.out}.key`;
      const publicFile = `${opts.out}.pub`;
      for (const f of [secretFile, publicFile]) {
        if (existsSync(f) && !opts.force) throw new GeminiError(`${f} exists: keep it, or give --force to replace the key pair (bundles signed with the old key stop verifying on nodes that trust only the new one)`, ExitCode.refused);
      }
      const password = opts.passwordFile ? (await readFile(opts.passwordFile, 'utf8')).replace(/\r?\n$/, '') : undefined;
      if (password === '') throw new GeminiError(`${opts.passwordFile}: empty password`, ExitCode.invalidInput);
      const key = generateKeyPair();
      await writeFileAtomic(secretFile, encodeSecretKey(key, password), 0o600);
      await writeFileAtomic(publicFile, encodePublicKey(key), 0o644);
      const id = keyIdHex(key.keyId);
      if (opts.json) c.print(JSON.stringify({ keyId: id, secretKey: secretFile, publicKey: publicFile, encrypted: password !== undefined }));
      else c.print(`key ${id}\n${secretFile} (secret, mode 0600${password === undefined ? ', not encrypted' : ''})\n${publicFile}\nlist ${publicFile} in the image's upgrade.trustedKeys; sign bundles with geminik8s build --output upgrade --sign-key ${secretFile}`);
    });

  const bundle = program.command('bundle').description('upgrade bundles (geminik8s build --output upgrade)');
  bundle
    .command('inspect <file>')
    .description('show a bundle\'s manifest; with --trusted-key, check its signature as a node would')
    .option('--trusted-key <file...>', 'minisign public key(s) to check the signature against')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, opts: { trustedKey?: string[]; json?: boolean }) => {
      const c = ctx();
      const { manifest, manifestBytes, signature } = await readBundle(file);
      let signer: string | undefined;
      if (opts.trustedKey) {
        if (signature === undefined) throw new GeminiError(`${file}: unsigned (no manifest.json.minisig)`, ExitCode.refused);
        const keys = await Promise.all(opts.trustedKey.map(async (k) => parsePublicKey(await readFile(k, 'utf8'), k)));
        signer = verifyData(signature, manifestBytes, keys, `${file}: manifest.json.minisig`).keyId;
      }
      if (opts.json) {
        c.print(JSON.stringify({ manifest, signed: signature !== undefined, ...(signer ? { verifiedBy: signer } : {}) }));
        return;
      }
      c.print(`${manifest.image} ${manifest.version} ${manifest.arch}, PostgreSQL ${manifest.postgresqlMajor}, ${manifest.rootfsType}, built ${manifest.created}`);
      c.print(`upgrades from: ${manifest.upgradableFrom.join(' or ')}`);
      for (const p of manifest.parts) c.print(`  ${p.name.padEnd(10)} ${String(p.bytes).padStart(11)}  ${p.sha256}`);
      c.print(signature === undefined ? 'signature: none (nodes refuse unsigned bundles)' : signer ? `signature: good, key ${signer}` : 'signature: present (give --trusted-key to check it)');
    });
}
