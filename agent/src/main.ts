import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Agent } from './agent.ts';
import { PING_EVERY_MS, watchdogMs } from './core/controller.ts';
import { firstboot, firstbootAtStart } from './firstboot.ts';
import { runPlan } from '#common/exec.ts';
import { ExitCode } from '#common/errors.ts';
import { startApi } from './api.ts';
import { loadAgentConfig, loadNodeContext } from './context.ts';
import { NotifyPipe, sdNotify, watchdogIntervalMs } from './sdnotify.ts';
import { slotCommand } from './slotcli.ts';
import { upgradeCommand } from './upgradecli.ts';
import { installCommand } from './install.ts';
import { agentLogger, createLogPort } from './adapters/log.ts';
import { releaseVipNow, vipSpecOf } from './adapters/vip.ts';
import { vipReleaseText } from './vip.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { DEFAULT_WITNESS_STATE_DIR, serveWitness } from './witness/serve.ts';
import { option } from './args.ts';
import { hostPreflight } from './preflight.ts';
import { worst } from '#common/preflight.ts';
import { createClock } from './adapters/clock.ts';
import { deviceHasAddress, waitForOwnAddress } from './netwait.ts';

declare const GEMINIK8S_VERSION: string | undefined;
const VERSION = typeof GEMINIK8S_VERSION === 'string' ? GEMINIK8S_VERSION : 'dev';

const USAGE = `usage: geminik8s-agent run --config FILE [--firstboot]   (--firstboot: first boot here when needed; exit 2 if the node is unconfigured)
       geminik8s-agent firstboot --config FILE [--root DIR]
       geminik8s-agent witness [serve] --listen HOST:PORT --token-file FILE (--tls-dir DIR | --insecure-plaintext) [--state-dir DIR]
       geminik8s-agent release-vip --config FILE     (the agent unit's ExecStopPost)
       geminik8s-agent slot status [--json] | arm A|B [--tries N] | bless  [--config FILE]
       geminik8s-agent upgrade stage BUNDLE [--retry] | status  [--json] [--config FILE]
       geminik8s-agent preflight --config FILE [--json]   (memory, disk, link, address; exit 0 pass or warn, 1 fail)
       geminik8s-agent install [--dry-run] [--no-reboot] [--cmdline FILE]   (from geminik8s.install.* kernel arguments; exit 2 bad input, 4 failed, 5 refused)
       geminik8s-agent --version`;


/**
 * How long the agent's start waits for the watchdog's ping helper before it arms the watchdog
 * anyway: well inside the unit's own WatchdogSec (30 s), whichever way systemd counts a start.
 */
const HELPER_READY_TIMEOUT_MS = 20_000;

/** What first boot read besides the seed (this bundle and its configuration): the next boot skips it while all are unchanged. */
function stampInputs(configFile: string): string[] {
  return [process.argv[1], configFile].filter((f): f is string => !!f).map((f) => resolve(f));
}

/**
 * First boot's lines, for the journal and the console: an unconfigured node says why where its
 * operator looks. The agent's own log stays off the console (a serial console is slow).
 */
function consoleLine(line: string): void {
  process.stdout.write(`${line}\n`);
  try {
    appendFileSync('/dev/console', `${line}\n`);
  } catch {
    // No console (a container, a test): the journal has the line.
  }
}

async function run(args: string[]): Promise<number> {
  // How long Node.js took to start and load the bundle: on a cold root slot, a share of the boot.
  const loadMs = Math.round(process.uptime() * 1000);
  // The watchdog's ping helper starts first: its Python start (seconds under TCG) runs while the
  // configuration loads and the address comes, and the watchdog is armed only once it is ready.
  const watchdog = watchdogIntervalMs() !== undefined;
  const notifier = new NotifyPipe();
  if (watchdog) notifier.prepare();
  const configFile = option(args, '--config');
  if (!configFile) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const config = await loadAgentConfig(configFile);
  // First boot in this same process (the unit passes --firstboot): one Node.js start per boot.
  if (args.includes('--firstboot')) {
    const fb = await firstbootAtStart(config, {
      exists: existsSync,
      neededScript: async (script, stamp, seedMount) => (await runPlan({ cmd: script, args: [stamp, seedMount] }, { allowFailure: true, timeoutMs: 120_000 }).catch(() => ({ exitCode: -1 }))).exitCode,
      run: () => firstboot(config, '/', consoleLine, stampInputs(configFile)),
      print: (line) => process.stdout.write(`${line}\n`),
    });
    // Reported on the console and in status.json; the unit does not restart on this code. This
    // process took no VIP: the file says so, or the unit's ExecStopPost would start Node.js again.
    if (fb.ran && fb.result.state !== 'configured') {
      await writeFileAtomic(config.vip.releaseFile, vipReleaseText(undefined), 0o644);
      return ExitCode.invalidInput;
    }
  }
  const { ctx, override, ignored, tlsIgnored, tlsRotatedAt } = await loadNodeContext(config);
  const log = agentLogger(ctx.self.name);
  if (override && !ignored) log.info({ event: 'peer-override', peer: override.name, ip: override.ip, seedIp: override.previousIp }, `${override.name} was replaced at ${override.ip} (${override.at}); the seed's ${override.previousIp} no longer applies`);
  if (ignored) log.error({ event: 'peer-override', ignored }, `the recorded peer replacement is not applied: ${ignored}`);
  if (tlsRotatedAt) log.info({ event: 'tls-override', at: tlsRotatedAt }, `using the certificate rotated at ${tlsRotatedAt}, not the seed's`);
  if (tlsIgnored) log.error({ event: 'tls-override', ignored: tlsIgnored }, `the rotated certificate is not used (the seed's is): ${tlsIgnored}`);
  // Before anything can take the VIP: the unit's ExecStopPost drops what this file names.
  await writeFileAtomic(config.vip.releaseFile, vipReleaseText(config.vip.enabled ? vipSpecOf(ctx) : undefined), 0o644);
  const agent = new Agent(ctx, log);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    // First: the unit's TimeoutStopSec is short, and only these keep a live agent from its SIGKILL.
    extendStop();
    setInterval(extendStop, PING_EVERY_MS).unref();
    log.info({ event: 'stop', signal }, 'stopping');
    void agent.shutdown().catch((err: Error) => log.error({ event: 'stop', err: err.message }, 'stop failed')).finally(() => setTimeout(() => process.exit(0), 200).unref());
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // The guard timer pings systemd (a leader only while its lease outlasts the watchdog period), so
  // a frozen agent is killed, and PostgreSQL stopped with it (BindsTo=), before the lease can pass.
  // It decides how often (PING_EVERY_MS, and once just before a leader falls silent).
  let pinging = false;
  let guardPinged = false;
  const ping = (): void => {
    // One at a time: before the helper is ready a ping is a systemd-notify, and on a loaded box a spawn can take seconds.
    // Once stopping, extendStop speaks instead (systemd runs no watchdog during a stop).
    if (!watchdog || pinging || stopping) return;
    pinging = true;
    void notifier.send(`WATCHDOG=1\nSTATUS=role ${agent.role}`).finally(() => {
      pinging = false;
    });
  };
  agent.heartbeat = () => {
    guardPinged = true;
    ping();
  };
  // systemd stops a unit's watchdog when the unit starts to stop (service_set_state) and kills
  // it TimeoutStopSec after SIGTERM unless told it lives: told here, as often as the watchdog's
  // pings and under the guard's rule (a leader only while its lease outlasts the period), so that
  // an agent frozen in its handover is killed as soon as a frozen running one.
  const watchdogUsec = Math.round(watchdogMs(ctx.spec.failover.fenceAfter) * 1000);
  let extending = false;
  function extendStop(): void {
    if (!watchdog || extending || !agent.maySignalLife()) return;
    extending = true;
    void notifier.send(`EXTEND_TIMEOUT_USEC=${watchdogUsec}\nSTATUS=stopping as ${agent.role}`).finally(() => {
      extending = false;
    });
  }
  // Before the watchdog is armed: waiting for the network must not look like a frozen agent.
  // 120 s, systemd-networkd-wait-online's default, after which it goes on as that unit did.
  const device = ctx.spec.network.interface;
  const address = ctx.self.ip;
  const net = await waitForOwnAddress(
    {
      hasAddress: () => deviceHasAddress(device, address),
      clock: createClock(),
      waiting: (ms) => log.info({ event: 'wait-address', device, address, waitedMs: Math.round(ms) }, `waiting for ${address} on ${device}`),
    },
    { timeoutMs: 120_000, pollMs: 200, reportEveryMs: 30_000 },
  );
  if (!net.present) log.warn({ event: 'wait-address', device, address, waitedMs: Math.round(net.waitedMs) }, `${address} is not on ${device} after ${Math.round(net.waitedMs / 1000)} s: starting anyway`);
  let helperWaitMs = 0;
  if (watchdog) {
    // The short watchdog (half of fenceAfter) is armed only once a ping is a line to the helper,
    // not a program start: on a loaded arm64 guest under TCG a systemd-notify start took longer
    // than the 1.25 s, and systemd killed the agent at every start of its first boot. Nothing
    // is at stake while it waits: no lease is held before agent.init().
    const t0 = performance.now();
    const ready = await notifier.whenReady(HELPER_READY_TIMEOUT_MS);
    helperWaitMs = Math.round(performance.now() - t0);
    if (!ready) log.warn({ event: 'watchdog', waitedMs: helperWaitMs }, `the watchdog's ping helper (python3) is not ready after ${helperWaitMs} ms: pinging through systemd-notify`);
    await notifier.send(`WATCHDOG_USEC=${watchdogUsec}\nWATCHDOG=1`);
    // Until the controller's guard pings (its first round, before its first reconcile can hold a
    // lease), this does: the API and the state file come first, and the period is short.
    const bridge = setInterval(() => {
      if (guardPinged) clearInterval(bridge);
      else ping();
    }, PING_EVERY_MS);
    bridge.unref();
  }
  const server = await startApi(agent);
  const addressWaitMs = Math.round(net.waitedMs);
  log.info({ event: 'start', version: VERSION, api: ctx.apiPort, witness: ctx.witness.kind, tls: Boolean(ctx.tls), loadMs, addressWaitMs, helperWaitMs }, `geminik8s agent ${VERSION} starting`);
  if (!ctx.tls) log.warn({ event: 'plaintext' }, 'no TLS: the API, the witness calls and PostgreSQL between the nodes are in plain text (cluster.agent.insecurePlaintext, or a seed from before TLS); write new seeds with `geminik8s seed` to turn it on');
  const tInit = performance.now();
  await agent.init();
  const initMs = Math.round(performance.now() - tInit);
  const sinceStartMs = Math.round(process.uptime() * 1000);
  log.info({ event: 'ready', role: agent.role, loadMs, addressWaitMs, initMs, sinceStartMs }, `ready as ${agent.role} ${sinceStartMs} ms after the process started (loading ${loadMs} ms, waiting for the address ${addressWaitMs} ms, first reconcile ${initMs} ms)`);
  await sdNotify(`READY=1\nSTATUS=role ${agent.role}`);
  await agent.run();
  server.close();
  return 0;
}

/** ExecStopPost of the agent unit: whatever killed the agent, the VIP leaves with it. */
async function releaseVip(args: string[]): Promise<number> {
  const configFile = option(args, '--config');
  if (!configFile) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const config = await loadAgentConfig(configFile);
  if (!config.vip.enabled) return 0;
  const { ctx } = await loadNodeContext(config);
  await releaseVipNow(ctx);
  return 0;
}

/** The node's own preflight, printed; exit 1 when an item fails. */
async function preflight(args: string[]): Promise<number> {
  const configFile = option(args, '--config');
  if (!configFile) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const config = await loadAgentConfig(configFile);
  const { ctx } = await loadNodeContext(config);
  const report = await hostPreflight(ctx);
  if (args.includes('--json')) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else for (const c of report.checks) process.stdout.write(`[${c.status.toUpperCase().padEnd(4)}] ${c.name}: ${c.detail}\n`);
  return worst(report.checks) === 'fail' ? 1 : 0;
}

async function witness(args: string[]): Promise<number> {
  if (args[0] === 'serve') args = args.slice(1);
  const listen = option(args, '--listen');
  const tokenFile = option(args, '--token-file');
  if (!listen || !tokenFile) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const tlsDir = option(args, '--tls-dir');
  await serveWitness({
    listen, tokenFile, stateDir: option(args, '--state-dir') ?? DEFAULT_WITNESS_STATE_DIR, log: createLogPort(agentLogger('witness')),
    ...(tlsDir ? { tlsDir } : {}), insecurePlaintext: args.includes('--insecure-plaintext'),
  });
  return new Promise(() => undefined);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--version' || command === 'version') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (command === 'run') return run(rest);
  if (command === 'firstboot') {
    const configFile = option(rest, '--config');
    if (!configFile) {
      process.stderr.write(`${USAGE}\n`);
      return 2;
    }
    // An unconfigured node is a valid outcome: boot goes on and the node stays reachable for repair.
    await firstboot(await loadAgentConfig(configFile), option(rest, '--root') ?? '/', undefined, stampInputs(configFile));
    return 0;
  }
  if (command === 'witness') return witness(rest);
  if (command === 'preflight') return preflight(rest);
  if (command === 'release-vip') return releaseVip(rest);
  if (command === 'slot') return slotCommand(rest);
  if (command === 'upgrade') return upgradeCommand(rest);
  if (command === 'install') return installCommand(rest);
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== 0) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`geminik8s-agent: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
