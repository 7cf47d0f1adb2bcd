import * as z from 'zod';
import { dnsLabel, size } from './units.ts';
import type { RuleIssue } from './rules.ts';
import { rangeError } from '../semver.ts';

export const API_VERSION = 'geminik8s.io/v1alpha1';

const debPackage = z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'must be a Debian package name');
const releaseTag = z.string().regex(/^v\d+\.\d+\.\d+([+-][0-9A-Za-z.+-]+)?$/, 'must be a release tag such as v1.2.3');
const kernelArg = z
  .string()
  .regex(/^\S+$/, 'must be one kernel argument without spaces')
  .refine((a) => !/^(root|geminik8s\.slot)=/.test(a), 'root= and geminik8s.slot= are set by the bootloader, not by the image definition');

export const ARCHES = ['amd64', 'arm64'] as const;
export type Arch = (typeof ARCHES)[number];
export const OUTPUT_FORMATS = ['raw', 'qcow2', 'raw.zst', 'upgrade', 'oci', 'pxe', 'iso'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
/** The outputs that are a whole disk image (the rest: the upgrade bundle, the OCI image holding it, the PXE directory and the installer ISO). */
export const DISK_FORMATS = ['raw', 'qcow2', 'raw.zst'] as const;
export const ROOT_FS_TYPES = ['squashfs', 'erofs', 'ext4'] as const;
/** Slot codecs: zstd, xz, gzip and lz4 for squashfs; lz4hc and lz4 for erofs (what erofs-utils 1.5 makes). */
export const ROOT_COMPRESSIONS = ['zstd', 'xz', 'gzip', 'lz4', 'lz4hc'] as const;
export type RootCompression = (typeof ROOT_COMPRESSIONS)[number];
const EROFS_COMPRESSIONS = ['lz4hc', 'lz4'] as const;

export const ImageSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Image'),
  name: dnsLabel,
  version: z.string().regex(/^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$/, 'must be a semantic version such as 1.0.0'),
  description: z.string().optional(),
  arch: z.enum(ARCHES),
  base: z
    .strictObject({
      distribution: z.literal('debian').default('debian'),
      suite: z.literal('trixie').default('trixie'),
      mirror: z.url().default('http://deb.debian.org/debian'),
    })
    .prefault({}),
  packages: z.array(debPackage).default([]),
  kubernetes: z.strictObject({ enabled: z.boolean().default(true) }).prefault({}),
  components: z.strictObject({
    k3s: z.strictObject({ version: releaseTag, airgapImages: z.boolean().default(true) }).optional(),
    kine: z.strictObject({ version: releaseTag }).optional(),
    kubeVip: z.strictObject({ version: releaseTag }).optional(),
    postgresql: z.strictObject({ major: z.number().int().min(13).max(18) }),
  }),
  partitions: z
    .strictObject({
      esp: size.default(64 * 1024 ** 2),
      config: size.default(32 * 1024 ** 2),
      root: size.default(2 * 1024 ** 3),
      persistent: size.default(1024 ** 3),
    })
    .prefault({}),
  rootfs: z
    .strictObject({
      type: z.enum(ROOT_FS_TYPES).default('squashfs'),
      // Left out: zstd for squashfs (at 128 KiB the fastest cold squashfs reads measured under
      // TCG, and the smallest slot), lz4hc for erofs (docs/boot.md, npm run bench:squashfs).
      compression: z.enum(ROOT_COMPRESSIONS).optional(),
      /** squashfs block size, or erofs's largest physical cluster: a cold read of a small file decompresses one whole block or cluster. */
      blockSize: z.enum(['64K', '128K', '256K', '512K', '1M']).default('128K'),
    })
    .prefault({}),
  boot: z
    .strictObject({
      modes: z.array(z.enum(['bios', 'uefi'])).min(1).default(['bios', 'uefi']),
      kernelArgs: z.array(kernelArg).default([]),
      timeoutSeconds: z.number().int().min(0).max(60).default(0),
      tries: z.number().int().min(1).max(9).default(3),
      serialConsole: z.string().regex(/^tty[A-Za-z0-9]+(,\d+)?$/, 'must look like ttyS0,115200').optional(),
      /** A root shell without password on the virtio console hvc0, for test images driven by the QEMU harness. Never for nodes. */
      debugShell: z.boolean().default(false),
    })
    .prefault({}),
  outputs: z.array(z.enum(OUTPUT_FORMATS)).min(1).default(['raw', 'qcow2', 'raw.zst']),
  upgrade: z
    .strictObject({
      /** minisign public keys (files, relative to the image definition) whose bundles nodes accept. */
      trustedKeys: z.array(z.string().min(1)).default([]),
      /** Running versions this image's upgrade bundle may replace; default: any older version. */
      from: z
        .array(
          z.string().superRefine((r, ctx) => {
            const e = rangeError(r);
            if (e) ctx.addIssue({ code: 'custom', message: e });
          }),
        )
        .min(1)
        .optional(),
    })
    .prefault({}),
});

export type ImageInput = z.input<typeof ImageSchema>;
type ParsedImage = z.output<typeof ImageSchema>;
/** A validated, normalized image definition: sizes in bytes, defaults filled in. */
export type Image = Omit<ParsedImage, 'boot' | 'rootfs'> & {
  boot: ParsedImage['boot'] & { serialConsole: string };
  rootfs: ParsedImage['rootfs'] & { compression: RootCompression };
};

const MiB = 1024 ** 2;

/** Fill in values that depend on other fields. */
export function normalizeImage(image: ParsedImage): Image {
  return {
    ...image,
    boot: { ...image.boot, serialConsole: image.boot.serialConsole ?? (image.arch === 'arm64' ? 'ttyAMA0,115200' : 'ttyS0,115200') },
    rootfs: { ...image.rootfs, compression: image.rootfs.compression ?? (image.rootfs.type === 'erofs' ? 'lz4hc' : 'zstd') },
  };
}

/** Rules that span fields; each names the path it is about. */
export function imageRules(image: Image): RuleIssue[] {
  const issues: RuleIssue[] = [];
  if (image.kubernetes.enabled) {
    for (const c of ['k3s', 'kine', 'kubeVip'] as const) {
      if (!image.components[c]) {
        issues.push({ path: ['components', c], message: `the Kubernetes layer is enabled, so components.${c} is required`, expected: '{ version: vX.Y.Z }' });
      }
    }
  }
  if (image.arch === 'arm64' && image.boot.modes.includes('bios')) {
    issues.push({ path: ['boot', 'modes'], message: 'arm64 machines have no BIOS boot', found: '"bios"', expected: '["uefi"]' });
  }
  if (image.rootfs.type === 'erofs' && !(EROFS_COMPRESSIONS as readonly string[]).includes(image.rootfs.compression)) {
    issues.push({ path: ['rootfs', 'compression'], message: 'an erofs slot is compressed with lz4hc or lz4 (what erofs-utils 1.5 makes)', found: `"${image.rootfs.compression}"`, expected: '"lz4hc" or "lz4"' });
  }
  if (image.rootfs.type === 'squashfs' && image.rootfs.compression === 'lz4hc') {
    issues.push({ path: ['rootfs', 'compression'], message: 'lz4hc is an erofs codec; a squashfs slot takes zstd, xz, gzip or lz4', found: '"lz4hc"', expected: '"zstd", "xz", "gzip" or "lz4"' });
  }
  if (image.boot.debugShell && image.kubernetes.enabled) {
    issues.push({ path: ['boot', 'debugShell'], message: 'a password-less root console is for offline test images only, not for images with the Kubernetes layer', found: 'true', expected: 'false' });
  }
  if (new Set(image.boot.modes).size !== image.boot.modes.length) {
    issues.push({ path: ['boot', 'modes'], message: 'boot modes are listed more than once' });
  }
  if (new Set(image.outputs).size !== image.outputs.length) {
    issues.push({ path: ['outputs'], message: 'outputs are listed more than once' });
  }
  const minimum = { esp: 32 * MiB, config: 4 * MiB, root: 256 * MiB, persistent: 256 * MiB } as const;
  for (const [name, min] of Object.entries(minimum) as [keyof typeof minimum, number][]) {
    const value = image.partitions[name];
    if (value % MiB !== 0) issues.push({ path: ['partitions', name], message: 'partition sizes must be whole MiB', found: `${value} bytes` });
    if (value < min) issues.push({ path: ['partitions', name], message: 'partition too small', found: `${value / MiB}MiB`, expected: `at least ${min / MiB}MiB` });
  }
  return issues;
}
