import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runPlan } from '#common/exec.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';

// overlays/usr/lib/geminik8s/k3s-images.sh run for real, in a private mount namespace (bind
// mounts need root, as CI has). What K3s then sees in its images directory is read back inside
// the same namespace.
const SCRIPT = join(ROOT, 'overlays', NODE_PATHS.k3sImagesScript);
const rootOnly = process.getuid?.() === 0 ? test.serial : test.serial.skip;

rootOnly('k3s-images.sh bind-mounts each shipped archive read-only into K3s\'s images directory, opts in to its import cache, and runs again cleanly', async (t) => {
  const dir = tempDir();
  const src = join(dir, 'usr/share/geminik8s/k3s-images');
  const dst = join(dir, 'var/lib/rancher/k3s/agent/images');
  mkdirSync(src, { recursive: true });
  writeFileSync(join(src, 'k3s-airgap-images-amd64.tar.zst'), 'archive bytes');
  mkdirSync(join(src, 'not-a-file'));
  const inspect = [
    '"$0" && "$0"', // twice: the second run replaces its own mounts
    'stat -c "%F %s" "$1/k3s-airgap-images-amd64.tar.zst" "$1/.cache.json"',
    'cat "$1/k3s-airgap-images-amd64.tar.zst"; echo',
    'findmnt -no OPTIONS "$1/k3s-airgap-images-amd64.tar.zst" | tr , "\\n" | grep -x ro',
    'findmnt -n "$1/k3s-airgap-images-amd64.tar.zst" | wc -l',
    'if echo x >>"$1/k3s-airgap-images-amd64.tar.zst" 2>/dev/null; then echo WRITABLE; else echo read-only; fi',
    'ls -A "$1"',
  ].join(' && ');
  const r = await runPlan(
    { cmd: 'unshare', args: ['--mount', '--propagation', 'private', 'sh', '-c', inspect, SCRIPT, dst], env: { GEMINIK8S_K3S_IMAGES_SRC: src, GEMINIK8S_K3S_IMAGES_DIR: dst } },
    { allowFailure: true },
  );
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split('\n'), [
    'geminik8s: 1 K3s air-gap image archive(s) from ' + src + ' in ' + dst,
    'geminik8s: 1 K3s air-gap image archive(s) from ' + src + ' in ' + dst,
    'regular file 13',
    'regular empty file 0',
    'archive bytes',
    'ro',
    '1',
    'read-only',
    '.cache.json',
    'k3s-airgap-images-amd64.tar.zst',
  ]);
});
