import type { Logger } from '#common/log.ts';
import type { Image } from '#common/schema/image.ts';

/** What a root source gets from the build. */
export interface RootSourceContext {
  image: Image;
  /**
   * The staging tree: overlays, rendered units, agent bundle, components, manifest and the
   * inputs of the customize script. Every source lays it over its root, then runs
   * /usr/lib/geminik8s/customize-root.sh inside the root.
   */
  staging: string;
  cacheDir: string;
  /** Private scratch space of this build. */
  workDir: string;
  sourceDateEpoch: number;
  /** Whether the mmdebstrap source may take its packages from the base root cache (`--no-base-cache`: no). */
  baseCache: boolean;
  logger: Logger;
  /** How far the source is (mmdebstrap's phases, Docker's steps); the build's progress port. */
  progress: (message: string) => void;
}

/**
 * One way of making the root tar (`geminik8s build --rootfs NAME`). Every source ends with the
 * same node OS: Debian packages of builder/src/rootfs/packages.ts, the staging tree on top,
 * customize-root.sh run inside.
 */
export interface RootSource {
  /** As given to --rootfs: `mmdebstrap`, `docker` or `tar`. */
  readonly name: string;
  /** Where the packages come from, for the log and the manifest (`debian/trixie`, an image, a file). */
  readonly origin: string;
  /** Fail before any long work: a missing tool or engine exits 3, unusable input exits 2. */
  check(ctx: RootSourceContext): Promise<void>;
  /** Write the finished root tar to `output`, a temporary name the caller renames. */
  produce(ctx: RootSourceContext, output: string): Promise<void>;
}
