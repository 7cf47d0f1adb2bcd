import { createReadStream } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { IMAGE_TAG, REGISTRY_HOST, REPOSITORY_PATH } from '#common/upgrade/suc.ts';
import { readOciImage } from './oci.ts';

// `geminik8s push`: an OCI layout tar to a registry through the distribution API v2
// (blob existence check, monolithic blob upload, manifest put), with the registry's token
// or basic authentication when it asks for it.

/** `registry[:port]/path/name[:tag]`: the registry must be named (no implicit Docker Hub). */
export interface ImageRef {
  registry: string;
  repository: string;
  tag?: string;
}

const REF_RE = new RegExp(`^(${REGISTRY_HOST})/(${REPOSITORY_PATH})(?::(${IMAGE_TAG}))?$`);

export function parseImageRef(ref: string): ImageRef {
  const m = REF_RE.exec(ref);
  if (!m || !(m[1]!.includes('.') || m[1]!.includes(':') || m[1] === 'localhost')) {
    throw new GeminiError(`${JSON.stringify(ref)}: expected REGISTRY/REPOSITORY[:TAG] with the registry named, such as registry.example:5000/geminik8s/edge:0.2.0`, ExitCode.invalidInput);
  }
  return { registry: m[1]!, repository: m[2]!, ...(m[3] ? { tag: m[3] } : {}) };
}

type Body = Buffer | { file: string; offset: number; size: number };

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

function send(url: URL, method: string, headers: Record<string, string>, body?: Body): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const size = body === undefined ? 0 : Buffer.isBuffer(body) ? body.length : body.size;
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers: { ...headers, 'content-length': String(size) }, timeout: 120_000 }, (res) => {
      let text = '';
      // The body is only for messages: keep its first 64 KiB.
      res.setEncoding('utf8').on('data', (d: string) => {
        if (text.length < 65_536) text += d;
      }).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url.origin}${url.pathname}: no answer within 120 s`)));
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else if (body.size === 0) req.end();
    else createReadStream(body.file, { start: body.offset, end: body.offset + body.size - 1, highWaterMark: 1024 * 1024 }).on('error', reject).pipe(req);
  });
}

/** `Bearer realm="...",service="...",scope="..."` as a map (RFC 7235 auth-params). */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const [scheme = '', rest = ''] = header.split(/ (.*)/s);
  const params: Record<string, string> = {};
  for (const m of rest.matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) params[m[1]!.toLowerCase()] = m[2]!.replace(/\\(.)/g, '$1');
  return { scheme: scheme.toLowerCase(), params };
}

export interface PushOptions {
  /** http instead of https (a registry on loopback or a lab network). */
  plainHttp?: boolean;
  username?: string;
  password?: string;
  progress?: (line: string) => void;
}

export interface PushResult {
  ref: string;
  digest: string;
  blobs: { digest: string; size: number; uploaded: boolean }[];
}

/** A registry session: the base URL and whatever credential the registry asked for. */
class Registry {
  private authorization: string | undefined;
  constructor(private readonly base: string, private readonly repository: string, private readonly o: PushOptions) {}

  url(path: string): URL {
    return new URL(path, this.base);
  }

  async call(method: string, url: URL, headers: Record<string, string> = {}, body?: Body): Promise<Reply> {
    const go = (): Promise<Reply> => send(url, method, { ...headers, ...(this.authorization ? { authorization: this.authorization } : {}) }, body)
      .catch((err: Error) => {
        throw new GeminiError(`${method} ${url.origin}${url.pathname}: ${err.message}`, ExitCode.commandFailed);
      });
    const first = await go();
    if (first.status !== 401) return first;
    await this.authenticate(first.headers['www-authenticate']);
    return go();
  }

  private async authenticate(header: string | undefined): Promise<void> {
    if (!header) throw new GeminiError(`${this.base}: 401 without a WWW-Authenticate challenge`, ExitCode.commandFailed);
    const { scheme, params } = parseChallenge(header);
    const basic = this.o.username !== undefined ? `Basic ${Buffer.from(`${this.o.username}:${this.o.password ?? ''}`).toString('base64')}` : undefined;
    if (scheme === 'basic') {
      if (!basic) throw new GeminiError(`${this.base} asks for a user name and password: give --username and --password-file`, ExitCode.refused);
      this.authorization = basic;
      return;
    }
    if (scheme !== 'bearer' || !params.realm) throw new GeminiError(`${this.base}: unsupported authentication challenge ${JSON.stringify(header)}`, ExitCode.commandFailed);
    const realm = new URL(params.realm);
    if (params.service) realm.searchParams.set('service', params.service);
    realm.searchParams.set('scope', `repository:${this.repository}:pull,push`);
    const r = await send(realm, 'GET', basic ? { authorization: basic } : {});
    if (r.status !== 200) throw new GeminiError(`the registry's token service ${realm.origin}${realm.pathname} answered ${r.status}${basic ? '' : ' (no --username given)'}: ${r.text.slice(0, 200)}`, ExitCode.refused);
    const token = (JSON.parse(r.text) as { token?: string; access_token?: string });
    const value = token.token ?? token.access_token;
    if (!value) throw new GeminiError(`the registry's token service answered without a token`, ExitCode.commandFailed);
    this.authorization = `Bearer ${value}`;
  }
}

function fail(what: string, r: Reply): never {
  throw new GeminiError(`${what}: HTTP ${r.status}${r.text ? `: ${r.text.trim().slice(0, 300)}` : ''}`, r.status === 401 || r.status === 403 ? ExitCode.refused : ExitCode.commandFailed);
}

/** Push the image in an OCI layout tar to `ref` (the tag defaults to the image's version). */
export async function pushOci(file: string, refText: string, o: PushOptions = {}): Promise<PushResult> {
  const ref = parseImageRef(refText);
  const { archive, entry, manifest, manifestBytes } = await readOciImage(file).catch((err: Error) => {
    throw new GeminiError(err.message, ExitCode.invalidInput);
  });
  const tag = ref.tag ?? entry.annotations?.['org.opencontainers.image.ref.name'];
  if (!tag) throw new GeminiError(`${refText}: no tag given and the image has no org.opencontainers.image.ref.name`, ExitCode.invalidInput);
  const blobMember = (digest: string): { offset: number; size: number } => {
    const m = archive.members.get(`blobs/sha256/${digest.replace(/^sha256:/, '')}`);
    if (!m) throw new GeminiError(`${file}: blob ${digest} is missing`, ExitCode.invalidInput);
    return m;
  };
  const reg = new Registry(`${o.plainHttp ? 'http' : 'https'}://${ref.registry}`, ref.repository, o);
  const say = o.progress ?? (() => undefined);
  const blobs: PushResult['blobs'] = [];
  for (const b of [...manifest.layers, manifest.config]) {
    const member = blobMember(b.digest);
    if (member.size !== b.size) throw new GeminiError(`${file}: blob ${b.digest} is ${member.size} bytes, the manifest says ${b.size}`, ExitCode.invalidInput);
    const head = await reg.call('HEAD', reg.url(`/v2/${ref.repository}/blobs/${b.digest}`));
    if (head.status === 200) {
      say(`${b.digest.slice(0, 19)} exists (${b.size} bytes)`);
      blobs.push({ ...b, uploaded: false });
      continue;
    }
    const start = await reg.call('POST', reg.url(`/v2/${ref.repository}/blobs/uploads/`));
    if (start.status !== 202 || !start.headers.location) fail(`starting the upload of ${b.digest}`, start);
    const put = reg.url(start.headers.location!);
    put.searchParams.set('digest', b.digest);
    say(`${b.digest.slice(0, 19)} uploading ${b.size} bytes`);
    const done = await reg.call('PUT', put, { 'content-type': 'application/octet-stream' }, { file, ...member });
    if (done.status !== 201) fail(`uploading ${b.digest}`, done);
    blobs.push({ ...b, uploaded: true });
  }
  const put = await reg.call('PUT', reg.url(`/v2/${ref.repository}/manifests/${tag}`), { 'content-type': manifest.mediaType }, manifestBytes);
  if (put.status !== 201) fail(`putting the manifest ${ref.repository}:${tag}`, put);
  const digest = put.headers['docker-content-digest'];
  if (digest && digest !== entry.digest) throw new GeminiError(`the registry stored the manifest as ${String(digest)}, not ${entry.digest}`, ExitCode.commandFailed);
  say(`${ref.registry}/${ref.repository}:${tag} is ${entry.digest}`);
  return { ref: `${ref.registry}/${ref.repository}:${tag}`, digest: entry.digest, blobs };
}
