import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { parse, parseAllDocuments } from 'yaml';
import { checkStructural, type SchemaNode } from '../helpers/openapi.ts';
import { cli } from '#lab/cli.ts';
import { ROOT, tempDir } from '../helpers/fixtures.ts';
import { assertGolden } from '../helpers/golden.ts';

// SUC's own CRD (../shared/reference): the Plan must fit its openAPIV3Schema.
const crd = parse(readFileSync(join(ROOT, '../shared/reference/suc-plans-crd.yaml'), 'utf8')) as {
  spec: { group: string; names: { kind: string }; versions: { name: string; served: boolean; schema: { openAPIV3Schema: SchemaNode } }[] };
};
const v1 = crd.spec.versions.find((v) => v.name === 'v1' && v.served)!;
// metadata is ObjectMeta, which the API server validates itself (the CRD declares a bare object).
const objectMeta: SchemaNode = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string' }, namespace: { type: 'string' }, labels: { type: 'object', additionalProperties: { type: 'string' } } },
};
const planSchema: SchemaNode = { ...v1.schema.openAPIV3Schema, properties: { ...v1.schema.openAPIV3Schema.properties, metadata: objectMeta } };

function checkPlan(plan: Record<string, unknown>): string[] {
  const errors = checkStructural(planSchema, plan);
  if (plan.apiVersion !== `${crd.spec.group}/v1`) errors.push(`apiVersion: expected ${crd.spec.group}/v1`);
  if (plan.kind !== crd.spec.names.kind) errors.push(`kind: expected ${crd.spec.names.kind}`);
  return errors;
}

const INIT = ['init', '--name', 'site-a', '--node1-ip', '192.168.10.11', '--node2-ip', '192.168.10.12', '--vip', '192.168.10.50', '--gateway', '192.168.10.1'];

async function initCluster(): Promise<string> {
  const dir = tempDir();
  const r = await cli(...INIT, '--config-dir', dir);
  if (r.code !== 0) throw new Error(r.stderr);
  return join(dir, 'cluster.yaml');
}

test('suc-plan: the Plan for the cluster init writes fits SUC\'s CRD schema, one node at a time, no drain', async (t) => {
  const cluster = await initCluster();
  const r = await cli('suc-plan', '--cluster', cluster, '--image', 'registry.example:5000/geminik8s/edge', '--version', '0.2.0');
  t.is(r.code, 0, r.stderr);
  const docs = parseAllDocuments(r.stdout).map((d) => d.toJS() as Record<string, unknown>);
  t.is(docs.length, 1);
  const plan = docs[0]!;
  t.deepEqual(checkPlan(plan), []);
  const spec = plan.spec as Record<string, any>;
  t.is(spec.concurrency, 1);
  t.is(spec.version, '0.2.0', 'the version drives the tag and the re-run');
  t.is(spec.upgrade.image, 'registry.example:5000/geminik8s/edge', 'no tag, so SUC appends the version');
  t.false('drain' in spec, 'no drain: it can deadlock a two-node cluster');
  t.not(spec.cordon, true, 'no cordon: a reboot inside the job would leave the node cordoned');
  t.deepEqual(spec.nodeSelector.matchExpressions, [{ key: 'kubernetes.io/hostname', operator: 'In', values: ['node1', 'node2'] }]);
  t.is(spec.jobActiveDeadlineSecs, 3600);
  assertGolden(t, 'suc/plan-site-a.yaml', r.stdout);

  const out = join(tempDir(), 'plan.yaml');
  const w = await cli('suc-plan', '--cluster', cluster, '--image', 'geminik8s/edge', '--version', '0.3.0-rc.1', '--deadline', '90m', '--namespace', 'upgrades', '--out', out);
  t.is(w.code, 0, w.stderr);
  const written = parse(readFileSync(out, 'utf8')) as Record<string, any>;
  t.deepEqual(checkPlan(written), []);
  t.like(written, { metadata: { name: 'geminik8s-os-site-a', namespace: 'upgrades' }, spec: { version: '0.3.0-rc.1', jobActiveDeadlineSecs: 5400 } });
});

test('the CRD check catches what the API server would reject or silently drop', async (t) => {
  const cluster = await initCluster();
  const r = await cli('suc-plan', '--cluster', cluster, '--image', 'geminik8s/edge', '--version', '0.2.0');
  const plan = parse(r.stdout) as Record<string, any>;
  const broken = structuredClone(plan);
  broken.spec.jobActiveDeadlineSeconds = 60;
  broken.spec.concurrency = '1';
  delete broken.spec.upgrade.image;
  broken.spec.nodeSelector.matchExpressions[0].values = 'node1';
  t.deepEqual(checkPlan(broken).sort(), [
    'spec.concurrency: expected an integer, found "1"',
    'spec.jobActiveDeadlineSeconds: not a field of this schema',
    'spec.nodeSelector.matchExpressions.0.values: expected an array, found "node1"',
    'spec.upgrade.image: required',
  ]);
});

test('suc-plan: bad options are all reported at once, exit 2, nothing written', async (t) => {
  const cluster = await initCluster();
  const out = join(tempDir(), 'plan.yaml');
  const r = await cli('suc-plan', '--cluster', cluster, '--image', 'registry.example/geminik8s/edge:0.2.0', '--version', '0.2.0+build.7', '--deadline', '5m', '--out', out);
  t.is(r.code, 2);
  t.regex(r.stderr, /3 problems found/);
  t.regex(r.stderr, /--image: must not carry a tag: SUC appends the plan version as the tag/);
  t.regex(r.stderr, /--version: contains "\+", which an image tag cannot/);
  t.regex(r.stderr, /--deadline: is too short .* \(found 300 s; expected at least 10m\)/);
  t.throws(() => readFileSync(out));
  const digest = await cli('suc-plan', '--cluster', cluster, '--image', 'geminik8s/edge@sha256:' + 'a'.repeat(64), '--version', '0.2.0');
  t.is(digest.code, 2);
  t.regex(digest.stderr, /--image: must not carry a digest/);
  const upper = await cli('suc-plan', '--cluster', cluster, '--image', 'Geminik8s/Edge', '--version', '0.2.0');
  t.regex(upper.stderr, /--image: is not an image repository name/);
  const dur = await cli('suc-plan', '--cluster', cluster, '--image', 'geminik8s/edge', '--version', '0.2.0', '--deadline', 'soon');
  t.is(dur.code, 2);
  t.regex(dur.stderr, /--deadline: expected a duration such as 1h or 45m, found "soon"/);
});
