import { resolve } from 'node:path';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { DEFAULT_DOCKER_BASE, dockerSource } from './docker.ts';
import { mmdebstrapSource } from './mmdebstrap.ts';
import type { RootSource } from './source.ts';
import { tarSource } from './tar.ts';

export type { RootSource, RootSourceContext } from './source.ts';

/** The forms `--rootfs` accepts, for help and error messages. */
export const ROOT_SOURCE_FORMS = ['mmdebstrap', 'docker[:BASE-IMAGE]', 'tar:PATH'];

/**
 * The root source named by `--rootfs`: `mmdebstrap` (default), `docker` or `docker:IMAGE`
 * (the Containerfile on that base, default debian:trixie), `tar:PATH` (an existing root
 * tarball). Anything else exits 2.
 */
export function parseRootSource(value: string | undefined): RootSource {
  const spec = (value ?? 'mmdebstrap').trim();
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const arg = colon < 0 ? undefined : spec.slice(colon + 1);
  if (kind === 'mmdebstrap' && arg === undefined) return mmdebstrapSource();
  if (kind === 'docker') {
    if (arg === '') throw new GeminiError('--rootfs docker: needs an image after the colon (--rootfs docker:IMAGE), or no colon for debian:trixie', ExitCode.invalidInput);
    return dockerSource(arg ?? DEFAULT_DOCKER_BASE);
  }
  if (kind === 'tar') {
    if (!arg) throw new GeminiError('--rootfs tar needs the path of a root tarball: --rootfs tar:PATH (.tar, optionally .gz, .xz or .zst)', ExitCode.invalidInput);
    return tarSource(resolve(arg));
  }
  throw new GeminiError(`--rootfs: unknown root source ${JSON.stringify(spec)}; expected ${ROOT_SOURCE_FORMS.join(', ')}`, ExitCode.invalidInput);
}
