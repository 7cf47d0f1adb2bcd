import { runPlan, type CommandPlan } from '../../../common/exec.ts';
import type { NodeContext } from '../context.ts';
import type { KubePort } from '../core/ports.ts';

/** Restart Kine and K3s so they reconnect after a promotion that may have lost data (decision 5). */
export function kubeRestartPlan(ctx: NodeContext): CommandPlan | undefined {
  const { config } = ctx;
  if (!config.kubernetes.enabled || config.serviceManager !== 'systemd') return undefined;
  return { cmd: 'systemctl', args: ['restart', config.kubernetes.kineUnit, config.kubernetes.k3sUnit] };
}

/** No-op without Kubernetes or outside systemd; throws when systemctl fails. */
export function createKubePort(ctx: NodeContext): KubePort {
  return {
    async restart(): Promise<void> {
      const plan = kubeRestartPlan(ctx);
      if (plan) await runPlan(plan, { timeoutMs: 60_000 });
    },
  };
}
