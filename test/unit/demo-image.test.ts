import test from 'ava';
import { createServer, type Server } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { chooseDemoImage, probeUpstream } from '#lab/demo-image.ts';
import { loadImageDef } from '../helpers/fixtures.ts';

const listen = async (s: Server | ReturnType<typeof createTcpServer>): Promise<string> => {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
};

test('demo image: --image as given, --artifacts builds the edge image from them, else the edge image only when upstream answered', (t) => {
  t.like(chooseDemoImage({ image: '/x.raw', artifacts: '/a' }), { kind: 'given', raw: '/x.raw' });
  t.like(chooseDemoImage({ artifacts: '/a', upstream: { reachable: false, detail: 'x' } }), { kind: 'build', file: 'edge-amd64.yaml', artifactsDir: '/a' });
  t.like(chooseDemoImage({ upstream: { reachable: true, detail: 'HEAD u: 302' } }), { kind: 'build', file: 'edge-amd64.yaml', artifactsDir: undefined });
  const test = chooseDemoImage({ upstream: { reachable: false, detail: 'HEAD u: ENOTFOUND' } });
  t.like(test, { kind: 'build', file: 'test-amd64.yaml' });
  t.regex(test.why, /Kubernetes layer off: .*\(HEAD u: ENOTFOUND\); give --artifacts DIR/);
});

test('demo image: the upstream probe asks for the K3s release file of the edge image, counts a redirect as an answer and a 404, a refusal or silence as none', async (t) => {
  const image = await loadImageDef('edge-amd64.yaml');
  const asked: string[] = [];
  const server = createServer((req, res) => {
    asked.push(`${req.method} ${req.url}`);
    res.writeHead(req.url?.startsWith('/gone/') ? 404 : 302, { location: 'http://127.0.0.1:1/storage' }).end();
  });
  const base = await listen(server);
  const sockets: Socket[] = [];
  const silent = createTcpServer((s) => void sockets.push(s));
  const silentBase = await listen(silent);
  t.teardown(() => {
    server.close();
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const up = await probeUpstream(image, 2000, { releases: base, registry: base });
  t.true(up.reachable, up.detail);
  t.regex(up.detail, /: 302$/);
  t.is(asked.length, 1);
  t.regex(asked[0]!, /^HEAD \/k3s-io\/k3s\/releases\/download\/v1\.33\.4%2Bk3s1\/k3s$/);
  t.like(await probeUpstream(image, 2000, { releases: `${base}/gone`, registry: base }), { reachable: false });
  const closed = createTcpServer();
  const closedBase = await listen(closed);
  await new Promise((r) => closed.close(r));
  const refused = await probeUpstream(image, 2000, { releases: closedBase, registry: base });
  t.false(refused.reachable);
  t.regex(refused.detail, /ECONNREFUSED/);
  const quiet = await probeUpstream(image, 300, { releases: silentBase, registry: base });
  t.false(quiet.reachable);
  t.regex(quiet.detail, /no answer within 300 ms/);
  t.like(await probeUpstream(await loadImageDef('test-amd64.yaml')), { reachable: false, detail: 'the image needs no release file' });
});
