import { runPlan, type CommandPlan } from '#common/exec.ts';
import type { NodeContext } from '../context.ts';
import type { KubePort } from '../core/ports.ts';

/** Restart Kine and K3s so they reconnect after a promotion that may have lost data (decision 5). */
export function kubeRestartPlan(ctx: NodeContext): CommandPlan | undefined {
  const { config } = ctx;
  if (!config.kubernetes.enabled || config.serviceManager !== 'systemd') return undefined;
  return { cmd: 'systemctl', args: ['restart', config.kubernetes.kineUnit, config.kubernetes.k3sUnit] };
}

/** Stop K3s, then Kine: nothing may write to the datastore while a restore replaces it. */
export function kubeStopPlan(ctx: NodeContext): CommandPlan | undefined {
  const { config } = ctx;
  if (!config.kubernetes.enabled || config.serviceManager !== 'systemd') return undefined;
  return { cmd: 'systemctl', args: ['stop', config.kubernetes.k3sUnit, config.kubernetes.kineUnit] };
}

/** No-op without Kubernetes or outside systemd; throws when systemctl fails. */
export function createKubePort(ctx: NodeContext): KubePort {
  return {
    async restart(): Promise<void> {
      const plan = kubeRestartPlan(ctx);
      if (plan) await runPlan(plan, { timeoutMs: 60_000 });
    },
    async stop(): Promise<void> {
      const plan = kubeStopPlan(ctx);
      if (plan) await runPlan(plan, { timeoutMs: 120_000 });
    },
  };
}
