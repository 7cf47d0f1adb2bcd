import type { ClusterSpec } from '../schema/cluster.ts';
import type { ValidationIssue } from '../errors.ts';

// System Upgrade Controller (rancher/system-upgrade-controller) facts this module relies on,
// read from its source (pkg/upgrade/job/job.go, pkg/upgrade/container/container.go):
// - the job's upgrade container gets the host's root at /host, runs privileged with hostPID
//   and hostNetwork, and sees SYSTEM_UPGRADE_NODE_NAME, SYSTEM_UPGRADE_PLAN_NAME,
//   SYSTEM_UPGRADE_PLAN_LATEST_VERSION and SYSTEM_UPGRADE_PLAN_LATEST_HASH;
// - the plan's `version` becomes the image tag only when `upgrade.image` has no tag or digest;
// - a Job is complete when its container exits 0, and the node is then labelled with the
//   plan's hash: a change of `version` makes a new hash (a new run), a change of the image
//   name alone does not.

/** Where the upgrade image keeps what the job needs (the contract with `build --output oci`). */
export const SUC_IMAGE_PATHS = {
  entrypoint: '/geminik8s/suc-job',
  bundle: '/geminik8s/bundle.tar',
} as const;

/** What `geminik8s suc-plan` needs besides the cluster. */
export interface SucPlanOptions {
  /** Registry and repository of the upgrade image, without tag or digest. */
  image: string;
  /** The bundle version: the image tag, and what the Plan converges to. */
  version: string;
  namespace: string;
  serviceAccount: string;
  /** Job deadline: covers waiting for the peer, the slot write, the reboot and the blessing. */
  deadlineSeconds: number;
}

export const SUC_DEFAULTS = { namespace: 'system-upgrade', serviceAccount: 'system-upgrade', deadlineSeconds: 3600 } as const;

// Docker reference grammar (distribution/reference), shared with `geminik8s push`:
// [host[:port]/]path-component(/path-component)*[:tag]
/** A registry host with an optional port. */
export const REGISTRY_HOST = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)';
const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
/** A repository path: lowercase components separated by "/". */
export const REPOSITORY_PATH = `${COMPONENT}(?:/${COMPONENT})*`;
/** An image tag. */
export const IMAGE_TAG = '[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}';
const NAME_RE = new RegExp(`^(?:${REGISTRY_HOST}/)?${REPOSITORY_PATH}$`);
const TAG_RE = new RegExp(`^${IMAGE_TAG}$`);

/** Check the options as one batch; every problem is returned with the option it concerns. */
export function checkSucOptions(o: SucPlanOptions): ValidationIssue[] {
  const issues: ValidationIssue[] = [];
  if (o.image.includes('@')) {
    issues.push({ file: 'command line', path: '--image', message: 'must not carry a digest: SUC appends the plan version as the tag', found: o.image, expected: 'a repository such as registry.example:5000/geminik8s/edge' });
  } else if (!NAME_RE.test(o.image)) {
    const tagged = /^(.*\/)?[^/:]+:[^/]+$/.test(o.image) && NAME_RE.test(o.image.replace(/:[^/:]+$/, ''));
    issues.push({
      file: 'command line', path: '--image',
      message: tagged ? 'must not carry a tag: SUC appends the plan version as the tag, and ignores --version when the image has one' : 'is not an image repository name',
      found: o.image,
      expected: 'a repository such as registry.example:5000/geminik8s/edge (lowercase path components)',
    });
  }
  if (!TAG_RE.test(o.version)) {
    issues.push({
      file: 'command line', path: '--version',
      message: o.version.includes('+') ? 'contains "+", which an image tag cannot: use the bundle version without build metadata' : 'is not a valid image tag',
      found: o.version,
      expected: 'the bundle version, such as 0.2.0 (letters, digits, "_", "." and "-", at most 128)',
    });
  }
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(o.namespace) || o.namespace.length > 63) {
    issues.push({ file: 'command line', path: '--namespace', message: 'is not a Kubernetes namespace name', found: o.namespace, expected: 'a DNS label such as system-upgrade' });
  }
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(o.serviceAccount) || o.serviceAccount.length > 253) {
    issues.push({ file: 'command line', path: '--service-account', message: 'is not a service account name', found: o.serviceAccount, expected: 'a DNS subdomain such as system-upgrade' });
  }
  if (!Number.isInteger(o.deadlineSeconds) || o.deadlineSeconds < 600) {
    issues.push({ file: 'command line', path: '--deadline', message: 'is too short for a node to wait for its peer, write its slot, reboot and bless', found: `${o.deadlineSeconds} s`, expected: 'at least 10m' });
  }
  return issues;
}

/** The Plan's name: one per cluster, so two sites' Plans never select each other's nodes. */
export function sucPlanName(spec: ClusterSpec): string {
  return `geminik8s-os-${spec.name}`.slice(0, 63).replace(/-+$/, '');
}

/**
 * The SUC Plan that upgrades the pair's OS, as a Kubernetes object.
 * - `concurrency: 1`; the agents enforce the order besides (a node waits for its peer to be
 *   blessed, and a leader hands over before it reboots), so SUC's hashed node order is harmless.
 * - No drain and no cordon: draining one node of two can deadlock on PodDisruptionBudgets, and
 *   a reboot inside the job would leave the node cordoned (SUC #23); the switchover is the
 *   agents' work.
 * - `exclusive`, so no other exclusive Plan (a K3s upgrade) runs beside it.
 * - The job only hands the bundle to the host's agent, which verifies and writes it.
 */
export function sucPlan(spec: ClusterSpec, o: SucPlanOptions): Record<string, unknown> {
  const names = spec.nodes.map((n) => n.name);
  return {
    apiVersion: 'upgrade.cattle.io/v1',
    kind: 'Plan',
    metadata: {
      name: sucPlanName(spec),
      namespace: o.namespace,
      labels: { 'app.kubernetes.io/managed-by': 'geminik8s', 'geminik8s.io/cluster': spec.name },
    },
    spec: {
      concurrency: 1,
      exclusive: true,
      version: o.version,
      serviceAccountName: o.serviceAccount,
      jobActiveDeadlineSecs: o.deadlineSeconds,
      nodeSelector: { matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: names }] },
      tolerations: [{ key: 'CriticalAddonsOnly', operator: 'Exists' }, { key: 'node-role.kubernetes.io/control-plane', operator: 'Exists', effect: 'NoSchedule' }],
      upgrade: {
        image: o.image,
        command: [SUC_IMAGE_PATHS.entrypoint],
        envs: [{ name: 'GEMINIK8S_CLUSTER', value: spec.name }],
      },
    },
  };
}
