import { createReadStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { signData, defaultTrustedComment, type MinisignSecretKey } from '../../../common/minisign.ts';
import { sha256File } from '../components/fetch.ts';
import {
  BUNDLE_KIND, BundleManifestSchema, END_OF_ARCHIVE, MANIFEST_NAME, padding, PART_NAMES, SIGNATURE_NAME, ustarHeader, type BundleManifest, type PartName,
} from '../../../common/upgrade/bundle.ts';
import { API_VERSION } from '../../../common/schema/image.ts';

/** What the bundle describes; the parts' sizes and hashes are measured here. */
export interface BundleInput {
  image: string;
  version: string;
  arch: BundleManifest['arch'];
  postgresqlMajor: number;
  upgradableFrom: string[];
  rootfsType: BundleManifest['rootfsType'];
  sourceDateEpoch: number;
  parts: Record<PartName, string>;
}

/** The manifest for these parts (reads each part once for its sha256). */
export async function bundleManifest(input: BundleInput): Promise<BundleManifest> {
  const parts = [];
  for (const name of PART_NAMES) {
    const file = input.parts[name];
    parts.push({ name, bytes: (await stat(file)).size, sha256: await sha256File(file) });
  }
  return BundleManifestSchema.parse({
    apiVersion: API_VERSION, kind: BUNDLE_KIND, image: input.image, version: input.version, arch: input.arch,
    postgresqlMajor: input.postgresqlMajor, upgradableFrom: input.upgradableFrom, rootfsType: input.rootfsType,
    created: new Date(input.sourceDateEpoch * 1000).toISOString(), parts,
  });
}

/**
 * Write the bundle to `out` through a temporary name in the same directory: the manifest, its
 * signature when a key is given, then the parts. Returns the manifest.
 */
export async function writeBundle(out: string, input: BundleInput, key?: MinisignSecretKey): Promise<BundleManifest> {
  const manifest = await bundleManifest(input);
  const manifestBytes = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
  const mtime = input.sourceDateEpoch;
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  const handle = await open(tmp, 'w', 0o644);
  try {
    const put = async (b: Buffer): Promise<void> => {
      await handle.write(b);
    };
    const member = async (name: string, bytes: Buffer): Promise<void> => {
      await put(ustarHeader(name, bytes.length, mtime));
      await put(bytes);
      await put(padding(bytes.length));
    };
    await member(MANIFEST_NAME, manifestBytes);
    if (key) {
      const comment = `${defaultTrustedComment(MANIFEST_NAME, input.sourceDateEpoch)}\tgeminik8s:${manifest.image}-${manifest.version}-${manifest.arch}`;
      await member(SIGNATURE_NAME, Buffer.from(signData(key, manifestBytes, comment)));
    }
    for (const p of manifest.parts) {
      await put(ustarHeader(p.name, p.bytes, mtime));
      for await (const chunk of createReadStream(input.parts[p.name], { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) await put(chunk);
      await put(padding(p.bytes));
    }
    await put(END_OF_ARCHIVE);
    await handle.sync();
    await handle.close();
    await rename(tmp, out);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  return manifest;
}
