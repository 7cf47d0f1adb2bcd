import { X509Certificate } from 'node:crypto';
import { runPlan, type CommandPlan } from '#common/exec.ts';
import { registerSecret } from '#common/log.ts';
import { certFingerprint } from '#common/tls.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import type { Agent } from './agent.ts';
import { nodeCertProblem, writeTlsOverride, type NodeContext } from './context.ts';
import { reloadConfig, writePgTlsFiles } from './postgres.ts';

/** The answer to `POST /v1/tls`. */
export interface TlsRotateResult {
  ok: boolean;
  changed?: boolean;
  reason: string;
  /** SHA-256 of the certificate now served (DER, hex), for the operator to compare. */
  fingerprint?: string;
  notAfter?: string;
  /** What happened to K3s's own certificates. */
  k3s?: string;
}

/**
 * K3s's documented rotation: stop K3s, `k3s certificate rotate` (it backs up and removes its
 * leaf certificates, not the CAs), start K3s, which issues new ones. Kine and the datastore stay
 * up; so does the VIP, which the agent holds. Nothing without Kubernetes or outside systemd.
 */
export function k3sCertRotatePlans(ctx: Pick<NodeContext, 'config'>, k3sConfigFile = NODE_PATHS.k3sConfig): CommandPlan[] {
  const { config } = ctx;
  if (!config.kubernetes.enabled || config.serviceManager !== 'systemd') return [];
  return [
    { cmd: 'systemctl', args: ['stop', config.kubernetes.k3sUnit] },
    { cmd: 'k3s', args: ['certificate', 'rotate', '--config', k3sConfigFile] },
    { cmd: 'systemctl', args: ['start', config.kubernetes.k3sUnit] },
  ];
}

/**
 * `geminik8s certs rotate` on one node: a new certificate and key for this node, from the
 * cluster CA it already trusts. Checked first (the CA, this node's name, its address, loopback
 * and the VIP, the key, the expiry); then recorded in the state directory (a restart keeps it),
 * handed to PostgreSQL (files renamed into place, then a reload) and to the API servers (the next
 * handshake), and used by every later call this agent makes. No restart of the agent or of
 * PostgreSQL, so the leader keeps its lease and the VIP. With `k3s`, K3s's own certificates too.
 */
export async function rotateTlsHere(agent: Agent, cert: string, key: string, k3s: boolean): Promise<{ status: number; body: TlsRotateResult }> {
  const ctx = agent.ctx;
  const refuse = (status: number, reason: string): { status: number; body: TlsRotateResult } => ({ status, body: { ok: false, reason } });
  if (!ctx.tls) return refuse(409, 'this cluster runs without TLS (agent.insecurePlaintext): there is no certificate to rotate');
  const problem = nodeCertProblem(ctx.spec, ctx.self, ctx.tls.ca, cert, key, new Date());
  if (problem) return refuse(400, `refused, nothing changed: ${problem}`);
  registerSecret(key);
  const same = cert === ctx.tls.cert && key === ctx.tls.key;
  const c = agent.controller;
  const r = await c.exclusive('certificate rotation', ['leader', 'follower', 'fenced'], async (): Promise<TlsRotateResult> => {
    let pgNote = '';
    if (!same) {
      // Recorded first: from here a restart uses the new material, whatever happens next.
      await writeTlsOverride(ctx.config.stateDir, { cert, key, at: new Date().toISOString() });
      ctx.tls = { ...ctx.tls!, cert, key };
      await writePgTlsFiles(ctx);
      // A stopped server reads the new files when it starts.
      pgNote = (await c.ports.pg.status()).up ? (await reloadConfig(ctx), 'PostgreSQL reloaded') : 'PostgreSQL is down and reads them at its start';
      for (const listener of agent.tlsListeners) listener(ctx.tls);
    }
    let k3sNote: string | undefined;
    const plans = k3s ? k3sCertRotatePlans(ctx) : [];
    if (k3s && plans.length === 0) k3sNote = 'no Kubernetes layer on this node (or not under systemd): nothing to rotate';
    for (const plan of plans) await runPlan(plan, { timeoutMs: 180_000 });
    if (plans.length) k3sNote = 'K3s stopped, its certificates rotated, started again';
    const fingerprint = certFingerprint(cert);
    return {
      ok: true, changed: !same, fingerprint, notAfter: new X509Certificate(cert).validTo,
      reason: same ? 'this certificate is in use already' : `new certificate in use: ${pgNote}, the API serves it from the next handshake`,
      ...(k3sNote ? { k3s: k3sNote } : {}),
    };
  }).catch((err: Error) => ({ ok: false as const, reason: err.message }));
  if (!r.ok) return refuse(409, r.reason);
  agent.log.warn({ event: 'tls-rotate', changed: r.value.changed, fingerprint: r.value.fingerprint, k3s: r.value.k3s }, r.value.reason);
  return { status: 200, body: r.value };
}
