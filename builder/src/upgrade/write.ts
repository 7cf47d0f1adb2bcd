import { stat } from 'node:fs/promises';
import { signData, defaultTrustedComment, type MinisignSecretKey } from '#common/minisign.ts';
import { sha256File } from '../components/fetch.ts';
import { BUNDLE_KIND, BundleManifestSchema, MANIFEST_NAME, PART_NAMES, SIGNATURE_NAME, type BundleManifest, type PartName } from '#common/upgrade/bundle.ts';
import { writeFileMember, writeMember, writeTar } from './tar.ts';
import { API_VERSION } from '#common/schema/image.ts';

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
  await writeTar(out, async (t) => {
    await writeMember(t, MANIFEST_NAME, manifestBytes, mtime);
    if (key) {
      const comment = `${defaultTrustedComment(MANIFEST_NAME, input.sourceDateEpoch)}\tgeminik8s:${manifest.image}-${manifest.version}-${manifest.arch}`;
      await writeMember(t, SIGNATURE_NAME, Buffer.from(signData(key, manifestBytes, comment)), mtime);
    }
    for (const p of manifest.parts) await writeFileMember(t, p.name, input.parts[p.name], mtime);
  });
  return manifest;
}
