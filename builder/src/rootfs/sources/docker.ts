import { createReadStream, createWriteStream, existsSync, readFileSync } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import Docker from 'dockerode';
import tarStream, { type Header } from 'tar-stream';
import { ExitCode, GeminiError } from '#common/errors.ts';
import type { Logger } from '#common/log.ts';
import type { Image } from '#common/schema/image.ts';
import { APT_OPTIONS, DPKG_EXCLUDES } from '../mmdebstrap.ts';
import { rootPackages } from '../packages.ts';
import { rootFromDockerExport } from './docker-export.ts';
import type { RootSource, RootSourceContext } from './source.ts';

const ROOT = new URL('../../../../', import.meta.url).pathname;

/** The Containerfile at the top of the repository: the node OS as a container image. */
export const CONTAINERFILE = join(ROOT, 'Containerfile');

/** The base image when `--rootfs docker` names none. */
export const DEFAULT_DOCKER_BASE = 'debian:trixie';

/**
 * The Containerfile's build arguments: the package list, dpkg path filters and apt options of
 * the mmdebstrap source, and the image's suite and mirror, so each exists once.
 */
export function containerfileBuildArgs(image: Image, base: string): Record<string, string> {
  return {
    BASE: base,
    SUITE: image.base.suite,
    MIRROR: image.base.mirror,
    PACKAGES: rootPackages(image).join(' '),
    DPKG_EXCLUDES: DPKG_EXCLUDES.join('\n'),
    APT_OPTIONS: APT_OPTIONS.join('\n'),
  };
}

/** The Docker build of the Containerfile as data: the options given to the engine's build API. */
export function dockerBuildPlan(image: Image, base: string): Docker.ImageBuildOptions & { dockerfile: string; platform: string; buildargs: Record<string, string> } {
  return {
    dockerfile: 'Containerfile',
    buildargs: containerfileBuildArgs(image, base),
    platform: `linux/${image.arch}`,
    // Intermediate containers go even when a step fails; the image itself is removed after export.
    rm: true,
    forcerm: true,
    labels: { 'io.geminik8s.build': `${image.name}-${image.version}-${image.arch}` },
  };
}

/** The engine dockerode talks to: $DOCKER_HOST, else the default socket. */
export function dockerEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_HOST || 'unix:///var/run/docker.sock';
}

function engineMissing(endpoint: string, cause: unknown): GeminiError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const how = process.env.DOCKER_HOST ? ' (DOCKER_HOST)' : '';
  if (code === 'EACCES') {
    return new GeminiError(`permission denied on the Docker engine at ${endpoint}${how}: run as root or as a member of the docker group`, ExitCode.missingTool);
  }
  const reason = code === 'ENOENT' ? 'no such socket' : code === 'ECONNREFUSED' ? 'connection refused' : ((cause as Error | undefined)?.message ?? String(cause));
  return new GeminiError(
    `no Docker engine answers at ${endpoint}${how} (${reason}): start it (systemctl start docker, or run dockerd as root) ` +
      'or install it with the Debian package docker.io (apt-get install docker.io); set DOCKER_HOST to use another engine',
    ExitCode.missingTool,
  );
}

export interface Engine {
  docker: Docker;
  endpoint: string;
  version: Docker.DockerVersion;
}

/** Connect to the Docker engine and ask its version; exit 3 when none answers. */
export async function connectEngine(timeoutMs = 15_000): Promise<Engine> {
  const endpoint = dockerEndpoint();
  let docker: Docker;
  try {
    docker = new Docker();
  } catch (err) {
    throw new GeminiError(`DOCKER_HOST=${process.env.DOCKER_HOST}: ${(err as Error).message}`, ExitCode.invalidInput);
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    const version = await Promise.race([docker.ping().then(() => docker.version()), timeout]);
    return { docker, endpoint, version };
  } catch (err) {
    throw engineMissing(endpoint, err);
  } finally {
    clearTimeout(timer);
  }
}

const ENGINE_ARCH: Record<string, string> = { x86_64: 'amd64', amd64: 'amd64', aarch64: 'arm64', arm64: 'arm64' };

/** Check that the engine can build a root of the image's architecture. */
export function checkEnginePlatform(engine: Engine, image: Image): void {
  const { version, endpoint } = engine;
  if (version.Os !== 'linux') {
    throw new GeminiError(`the Docker engine at ${endpoint} runs ${version.Os} containers; the node OS needs a Linux engine`, ExitCode.missingTool);
  }
  const arch = ENGINE_ARCH[version.Arch] ?? version.Arch;
  if (arch === image.arch) return;
  const [major, minor] = version.ApiVersion.split('.').map(Number);
  if (major! < 1 || (major === 1 && minor! < 32)) {
    throw new GeminiError(`the Docker engine at ${endpoint} (API ${version.ApiVersion}) is too old to build for linux/${image.arch}: API 1.32 or later is needed`, ExitCode.missingTool);
  }
  const entry = `/proc/sys/fs/binfmt_misc/qemu-${image.arch === 'arm64' ? 'aarch64' : 'x86_64'}`;
  const enabled = existsSync(entry) && readFileSync(entry, 'utf8').startsWith('enabled');
  if (endpoint.startsWith('unix://') && !enabled) {
    throw new GeminiError(
      `the Docker engine at ${endpoint} is ${arch}: building an ${image.arch} root runs its maintainer scripts through binfmt emulation (${entry}): ` +
        'install the Debian packages qemu-user-static binfmt-support (apt-get install qemu-user-static binfmt-support)',
      ExitCode.missingTool,
    );
  }
}

/** The build context: the Containerfile, and the staging tree as staging/, owned by root. */
export function buildContext(containerfile: string, staging: string): Readable {
  const pack = tarStream.pack();
  const add = (header: Partial<Header> & Pick<Header, 'name'>, body?: string | Buffer): Promise<void> =>
    new Promise((resolve, reject) => pack.entry(header, body as Buffer, (err) => (err ? reject(err) : resolve())));
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const path = join(dir, name);
      const st = await lstat(path);
      const header = { name: `${prefix}/${name}`, mode: st.mode & 0o7777, mtime: st.mtime, uid: 0, gid: 0 };
      if (st.isDirectory()) {
        await add({ ...header, type: 'directory' });
        await walk(path, header.name);
      } else if (st.isSymbolicLink()) {
        await add({ ...header, type: 'symlink', linkname: await readlink(path) });
      } else if (st.isFile()) {
        await pipeline(createReadStream(path), pack.entry({ ...header, type: 'file', size: st.size }) as unknown as NodeJS.WritableStream);
      }
    }
  };
  (async () => {
    await add({ name: 'Containerfile', mode: 0o644, mtime: new Date(0), uid: 0, gid: 0, type: 'file' }, containerfile);
    await add({ name: 'staging', mode: 0o755, mtime: new Date(0), uid: 0, gid: 0, type: 'directory' });
    await walk(staging, 'staging');
    pack.finalize();
  })().catch((err: Error) => pack.destroy(err));
  // tar-stream's streams are streamx streams; dockerode only pipes them.
  return pack as unknown as Readable;
}

interface BuildEvent {
  stream?: string;
  status?: string;
  aux?: { ID?: string };
  error?: string;
  errorDetail?: { message?: string };
}

// The engine's build output: `Step` lines at info, the rest at debug; returns the built image's ID.
async function followBuild(stream: NodeJS.ReadableStream, logger: Logger, progress: (message: string) => void, base: string): Promise<string> {
  const tail: string[] = [];
  let imageId: string | undefined;
  let error: string | undefined;
  for await (const line of createInterface({ input: stream as Readable, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    let ev: BuildEvent;
    try {
      ev = JSON.parse(line) as BuildEvent;
    } catch {
      continue;
    }
    for (const l of (ev.stream ?? ev.status ?? '').split('\n')) {
      const text = l.trimEnd();
      if (!text) continue;
      tail.push(text);
      if (tail.length > 20) tail.shift();
      if (/^Step \d+\/\d+ :/.test(text)) progress(text.length > 110 ? `${text.slice(0, 107)}...` : text);
      else logger.debug(`  ${text}`);
      imageId ??= /^Successfully built ([0-9a-f]+)$/.exec(text)?.[1];
    }
    if (ev.aux?.ID) imageId = ev.aux.ID;
    if (ev.error) error = ev.errorDetail?.message ?? ev.error;
  }
  if (error || !imageId) {
    const noBase = error && /pull access denied|repository does not exist|not found|manifest unknown|dial tcp|lookup .* on|TLS handshake/i.test(error);
    const hint = noBase
      ? `\nthe base image ${base} is not on the engine and could not be pulled; with no registry reachable, import a Debian trixie root: ` +
        `mmdebstrap --variant=apt trixie - | docker import - NAME, then --rootfs docker:NAME`
      : '';
    throw new GeminiError(`docker build of the Containerfile failed: ${error ?? 'the engine reported no image'}${hint}\n--- last lines of the build ---\n${tail.join('\n')}`, ExitCode.commandFailed);
  }
  return imageId;
}

/**
 * `--rootfs docker[:BASE]`: the Containerfile built through a Docker engine (dockerode) on
 * BASE (default debian:trixie), a container of the result exported into the root tar.
 */
export function dockerSource(base = DEFAULT_DOCKER_BASE): RootSource {
  let engine: Engine | undefined;
  return {
    name: 'docker',
    origin: `docker ${base}`,
    async check(ctx: RootSourceContext) {
      if (!existsSync(CONTAINERFILE)) throw new GeminiError(`${CONTAINERFILE} is missing`, ExitCode.internal);
      engine = await connectEngine();
      checkEnginePlatform(engine, ctx.image);
    },
    async produce(ctx: RootSourceContext, output: string) {
      engine ??= await connectEngine();
      const { docker } = engine;
      const plan = dockerBuildPlan(ctx.image, base);
      ctx.logger.info(`  docker build FROM ${base} for ${plan.platform} on Docker ${engine.version.Version} at ${engine.endpoint}`);
      const progress = await docker.buildImage(buildContext(readFileSync(CONTAINERFILE, 'utf8'), ctx.staging), plan);
      const imageId = await followBuild(progress, ctx.logger, ctx.progress, base);
      let container: Docker.Container | undefined;
      try {
        // Created, never started: only its filesystem is wanted.
        container = await docker.createContainer({ Image: imageId, Cmd: ['/bin/true'], NetworkDisabled: true, Labels: plan.labels });
        ctx.logger.info(`  exporting container ${container.id.slice(0, 12)} of image ${imageId.replace(/^sha256:/, '').slice(0, 12)}`);
        const exported = (await container.export()) as Readable;
        const summary = await rootFromDockerExport(exported, createWriteStream(output, { mode: 0o644 }), { sourceDateEpoch: ctx.sourceDateEpoch });
        const notDev = (p: string): boolean => !p.startsWith('dev/');
        ctx.logger.info(`  ${summary.entries} entries; Docker's files dropped: ${summary.dropped.filter(notDev).join(', ') || 'none'}; Debian's written back: ${summary.added.filter(notDev).join(', ') || 'none'}; /dev as mmdebstrap makes it`);
      } finally {
        await container?.remove({ force: true, v: true }).catch((err: Error) => ctx.logger.warn(`could not remove container ${container?.id}: ${err.message}`));
        // Removing the image also removes its untagged parents: the build's intermediate images.
        await docker.getImage(imageId).remove({ force: true }).catch((err: Error) => ctx.logger.warn(`could not remove image ${imageId}: ${err.message}`));
      }
    },
  };
}
