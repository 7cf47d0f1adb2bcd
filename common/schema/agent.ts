import * as z from 'zod';
import { NODE_PATHS } from '../render/paths.ts';

/** The agent's A/B boot settings; every field has a default. */
export const BootConfigSchema = z
  .strictObject({
    /** Where the ESP is mounted on the running node. */
    espMount: z.string().default('/boot/efi'),
    /** The GRUB environment block, relative to the ESP (NODE_PATHS.grubEnv). */
    grubEnv: z.string().default('grub/grubenv'),
    /** The kernel command line carrying `geminik8s.slot=A|B`; defaults to `image.slotFile`. */
    cmdline: z.string().optional(),
    /** This boot's id: tells "armed in this boot" from "armed, then rebooted". */
    bootId: z.string().default('/proc/sys/kernel/random/boot_id'),
    /** The health gate must pass continuously this long before a try slot is blessed. */
    blessAfterMs: z.number().int().min(0).default(60_000),
    /** A try slot whose gate has not passed after this long since boot is rebooted (0: never). */
    trialTimeoutMs: z.number().int().min(0).default(15 * 60_000),
  })
  .refine((b) => b.trialTimeoutMs === 0 || b.trialTimeoutMs > b.blessAfterMs, {
    message: 'boot.trialTimeoutMs must be 0 (never reboot) or longer than boot.blessAfterMs',
    path: ['trialTimeoutMs'],
  });

/**
 * /etc/geminik8s/agent.yaml: where things are on this node. Cluster-wide settings and secrets
 * come from the node seed (`seedFile`); this file holds only node-local paths and switches,
 * so it can be baked into the generic image.
 */
export const AgentConfigSchema = z.strictObject({
  /** The validated node seed, copied from the config partition at first boot (0600). */
  seedFile: z.string().default('/var/lib/geminik8s/seed.yaml'),
  /** hostmeta.json, status files and the agent's own state. */
  stateDir: z.string().default('/var/lib/geminik8s'),
  listen: z
    .strictObject({
      /** One address to listen on. Unset: the node's own address (from the seed) and 127.0.0.1, never every interface. */
      host: z.string().optional(),
      /** Overrides the cluster's agent.port (tests run two agents on one host; 0 = any free port). */
      port: z.number().int().min(0).max(65535).optional(),
    })
    .prefault({}),
  postgresql: z.strictObject({
    binDir: z.string(),
    dataDir: z.string(),
    socketDir: z.string().default('/run/postgresql'),
    /** OS user that owns the data directory and runs the server. */
    osUser: z.string().default('postgres'),
    /** Extra postgresql.conf lines rendered for this image (included from postgresql.auto-geminik8s.conf). */
    confFragment: z.string().optional(),
  }),
  kubernetes: z
    .strictObject({
      enabled: z.boolean().default(false),
      kineUnit: z.string().default('kine.service'),
      k3sUnit: z.string().default('k3s.service'),
    })
    .prefault({}),
  /** Manage the VIP with ip/arping (off only in tests without a shared L2). */
  vip: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Where the agent writes the VIP for the unit's ExecStopPost script (release-vip.sh). */
      releaseFile: z.string().default(NODE_PATHS.vipReleaseFile),
    })
    .prefault({}),
  /** Where first boot finds the seed (the config partition, mounted read-only). */
  seedSource: z.string().default('/run/geminik8s/config/geminik8s/seed.yaml'),
  /** How services are (re)started: systemd on a node, direct process control in the test harness. */
  serviceManager: z.enum(['systemd', 'direct']).default('systemd'),
  /** Executable health-check scripts (exit 0 = healthy), run in name order. */
  checksDir: z.string().default('/etc/geminik8s/checks.d'),
  /**
   * A/B boot counting (docs/boot-slots.md). Optional so the rendered agent.yaml stays as it
   * is; `bootSettings()` fills in the defaults.
   */
  boot: BootConfigSchema.optional(),
  /** A/B upgrades (docs/upgrades.md). Optional like `boot`; `upgradeSettings()` fills in the defaults. */
  upgrade: z
    .strictObject({
      /** The root slot partitions, written whole by an upgrade. */
      slotDevices: z.strictObject({ A: z.string().default('/dev/disk/by-partlabel/ROOT_A'), B: z.string().default('/dev/disk/by-partlabel/ROOT_B') }).prefault({}),
      /** What the running slot is: the build manifest in the image. */
      imageManifest: z.string().default('/usr/share/geminik8s/manifest.json'),
      /** Directories of minisign public keys (*.pub) a bundle may be signed with: the image's, then the operator's. */
      trustedKeyDirs: z.array(z.string()).default(['/usr/share/geminik8s/upgrade-keys', '/etc/geminik8s/upgrade-keys']),
      /** Boots GRUB grants the new slot before it falls back. */
      tries: z.number().int().min(1).max(9).default(3),
    })
    .optional(),
  /** Image facts reported in /v1/status. */
  image: z
    .strictObject({
      version: z.string().default('unknown'),
      slotFile: z.string().default('/proc/cmdline'),
    })
    .prefault({}),
});

export type AgentConfig = z.output<typeof AgentConfigSchema>;

/** Boot settings with defaults applied and every path resolved. */
export interface BootSettings {
  /** Where the ESP is mounted (read-only; remounted read-write only while grubenv is written). */
  espMount: string;
  grubEnvFile: string;
  cmdlineFile: string;
  bootIdFile: string;
  /** The agent's record of armed tries (boot.json in the state dir). */
  recordFile: string;
  blessAfterMs: number;
  trialTimeoutMs: number;
}

/** Resolve `config.boot` (absent in a rendered agent.yaml: all defaults). */
export function bootSettings(config: AgentConfig): BootSettings {
  const b = BootConfigSchema.parse(config.boot ?? {});
  return {
    grubEnvFile: `${b.espMount.replace(/\/+$/, '')}/${b.grubEnv.replace(/^\/+/, '')}`,
    espMount: b.espMount.replace(/\/+$/, ''),
    cmdlineFile: b.cmdline ?? config.image.slotFile,
    bootIdFile: b.bootId,
    recordFile: `${config.stateDir.replace(/\/+$/, '')}/boot.json`,
    blessAfterMs: b.blessAfterMs,
    trialTimeoutMs: b.trialTimeoutMs,
  };
}

/** Upgrade settings with defaults applied. */
export interface UpgradeSettings {
  slotDevices: Record<'A' | 'B', string>;
  imageManifest: string;
  trustedKeyDirs: string[];
  tries: number;
  /** Where the ESP is mounted: each slot's kernel and initrd go to /slot-a/, /slot-b/ there. */
  espMount: string;
  /** upgrade.json in the state dir: the last staged bundle and the bundles that failed here. */
  recordFile: string;
}

export function upgradeSettings(config: AgentConfig): UpgradeSettings {
  const u = AgentConfigSchema.shape.upgrade.unwrap().parse(config.upgrade ?? {});
  const b = BootConfigSchema.parse(config.boot ?? {});
  return { ...u, espMount: b.espMount.replace(/\/+$/, ''), recordFile: `${config.stateDir.replace(/\/+$/, '')}/upgrade.json` };
}

export const SLOTS = ['A', 'B'] as const;
export type Slot = (typeof SLOTS)[number];

/**
 * boot.json in the state dir: the try the agent knows is (or was) armed. GRUB clears
 * try_slot when the tries are spent, exactly as a bless does; this record is what tells a
 * fall-back from a bless afterwards.
 */
export const BootRecordSchema = z.strictObject({
  pending: z
    .strictObject({
      slot: z.enum(SLOTS),
      /** The slot that was running when the try was armed or first seen. */
      from: z.enum(SLOTS).optional(),
      tries: z.number().int().nonnegative().optional(),
      /** `armed` by this agent (slot arm), or `observed` in grubenv (armed by another tool). */
      how: z.enum(['armed', 'observed']),
      /** The kernel boot id at that moment. */
      bootId: z.string(),
      at: z.string(),
    })
    .nullable()
    .default(null),
  /** How the last remembered try ended, and when that was noticed. */
  last: z
    .strictObject({
      slot: z.enum(SLOTS),
      outcome: z.enum(['blessed', 'cancelled', 'fell-back']),
      at: z.string(),
      armedAt: z.string().optional(),
      /** How the try was known: `observed` when the record of arming it was lost (a cut before ext4 committed it). */
      how: z.enum(['armed', 'observed']).optional(),
    })
    .optional(),
});
export type BootRecord = z.output<typeof BootRecordSchema>;
