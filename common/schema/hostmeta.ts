import * as z from 'zod';

export const ROLES = ['init', 'leader', 'follower', 'fenced', 'unconfigured'] as const;
export type Role = (typeof ROLES)[number];

/** /var/lib/geminik8s/hostmeta.json: the node's persistent view of its place in the cluster. */
export const HostMetaSchema = z.strictObject({
  cluster: z.string(),
  node: z.string(),
  role: z.enum(ROLES),
  peer: z.string(),
  /** Only ever increases; the side with the higher generation holds the truth. */
  generation: z.number().int().nonnegative(),
  timeline: z.number().int().nonnegative().optional(),
  lastTransition: z.strictObject({
    at: z.string(),
    from: z.enum(ROLES),
    to: z.enum(ROLES),
    reason: z.string(),
  }),
});
export type HostMeta = z.output<typeof HostMetaSchema>;
