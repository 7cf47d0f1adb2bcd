import type { NodeContext } from '../context.ts';
import type { StatePort } from '../core/ports.ts';
import { readHostMeta, writeHostMeta } from '../hostmeta.ts';

/** hostmeta.json in the state directory: atomic, file and directory fsynced, generation never lowered. */
export function createStatePort(ctx: NodeContext): StatePort {
  const dir = ctx.config.stateDir;
  return {
    read: () => readHostMeta(dir),
    write: (meta) => writeHostMeta(dir, meta),
  };
}
