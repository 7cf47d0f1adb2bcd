import { z } from 'zod';

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
      host: z.string().default('0.0.0.0'),
      /** Overrides the cluster's agent.port (tests run two agents on one host; 0 = any free port). */
      port: z.number().int().min(0).max(65535).optional(),
      tlsCert: z.string().optional(),
      tlsKey: z.string().optional(),
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
  vip: z.strictObject({ enabled: z.boolean().default(true) }).prefault({}),
  /** Where first boot finds the seed (the config partition, mounted read-only). */
  seedSource: z.string().default('/run/geminik8s/config/geminik8s/seed.yaml'),
  /** How services are (re)started: systemd on a node, direct process control in the test harness. */
  serviceManager: z.enum(['systemd', 'direct']).default('systemd'),
  /** Executable health-check scripts (exit 0 = healthy), run in name order. */
  checksDir: z.string().default('/etc/geminik8s/checks.d'),
  /** Image facts reported in /v1/status. */
  image: z
    .strictObject({
      version: z.string().default('unknown'),
      slotFile: z.string().default('/proc/cmdline'),
    })
    .prefault({}),
});

export type AgentConfig = z.output<typeof AgentConfigSchema>;
