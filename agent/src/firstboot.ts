import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSeed } from '#common/config.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { formatIssue, type ValidationIssue } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { renderNodeFiles } from '#common/render/node.ts';
import type { AgentConfig } from '#common/schema/agent.ts';
import { seedDocument } from '#common/schema/seed.ts';
import { stringify } from 'yaml';

export interface FirstbootResult {
  state: 'configured' | 'unconfigured';
  node?: string;
  issues: ValidationIssue[];
  written: string[];
}

/**
 * Where first boot records what it read: sha256sum lines of the seed, the agent and its
 * configuration (firstboot-needed.sh compares them; the initramfs reads the default path).
 */
export function firstbootStampFile(config: AgentConfig): string {
  return join(config.stateDir, 'firstboot.sha256');
}

/** PostgreSQL major version from the configured binary directory (/usr/lib/postgresql/N/bin). */
function pgMajor(config: AgentConfig): number {
  const m = /postgresql\/(\d+)\//.exec(config.postgresql.binDir);
  return m ? Number(m[1]) : 0;
}

/**
 * First boot: validate the seed from the config partition with the builder's schema, keep a
 * private copy, and write the files derived from it. A bad or missing seed leaves the node
 * "unconfigured" (status file + console message) with nothing destroyed, reachable for repair.
 * Idempotent: running it again rewrites the same files.
 *
 * Once configured it records, in sha256sum format, what it read: the seed, and `stampInputs`
 * (the agent bundle and its configuration file). The agent's start (`run --firstboot`, see
 * firstbootAtStart) skips the next first boot while all of them are unchanged
 * (firstboot-needed.sh); an unconfigured outcome removes the record.
 */
export async function firstboot(
  config: AgentConfig,
  root = '/',
  print: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  stampInputs: string[] = [],
): Promise<FirstbootResult> {
  const at = (p: string): string => join(root, p);
  const statusFile = at(join(config.stateDir, 'status.json'));
  const stampFile = at(firstbootStampFile(config));
  const finish = async (result: FirstbootResult): Promise<FirstbootResult> => {
    if (result.state !== 'configured') await rm(stampFile, { force: true });
    await writeFileAtomic(statusFile, `${JSON.stringify({ ...result, at: new Date().toISOString() }, null, 2)}\n`, 0o644);
    return result;
  };
  let source = at(config.seedSource);
  if (!existsSync(source)) {
    if (existsSync(at(config.seedFile))) source = at(config.seedFile);
    else {
      const issue = { file: config.seedSource, path: '', message: 'no geminik8s seed found: write one with `geminik8s seed` onto the config partition (label CIDATA)' };
      print(`geminik8s: UNCONFIGURED: ${formatIssue(issue)}`);
      return finish({ state: 'unconfigured', issues: [issue], written: [] });
    }
  }
  const seedBytes = await readFile(source);
  const { seed, issues } = parseSeed(source === at(config.seedSource) ? config.seedSource : config.seedFile, seedBytes.toString('utf8'));
  if (!seed) {
    print(`geminik8s: UNCONFIGURED: the node seed is invalid; nothing was changed. Fix the seed and reboot:`);
    for (const i of issues) print(`geminik8s:   ${formatIssue(i)}`);
    return finish({ state: 'unconfigured', issues, written: [] });
  }
  const written: string[] = [];
  await writeFileAtomic(at(config.seedFile), stringify(seedDocument(seed), { version: '1.1' }), 0o600);
  written.push(config.seedFile);
  const image = { kubernetes: { enabled: config.kubernetes.enabled }, components: { postgresql: { major: pgMajor(config) } } };
  // PostgreSQL's own files are written by the agent when it creates or clones the data directory.
  for (const f of renderNodeFiles(image, seed.cluster, seed.node, seed.secrets).filter((f) => !f.path.startsWith('/var/lib/postgresql/'))) {
    await writeFileAtomic(at(f.path), f.content, f.mode);
    written.push(f.path);
  }
  // Last, once everything above is written: the record says the files match these inputs.
  const sum = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');
  const lines = [`${sum(seedBytes)}  ${source}`];
  for (const input of stampInputs) lines.push(`${sum(await readFile(input))}  ${input}`);
  await writeFileAtomic(stampFile, `${lines.join('\n')}\n`, 0o600);
  print(`geminik8s: node ${seed.node} of cluster ${seed.cluster.name} configured from its seed`);
  return finish({ state: 'configured', node: seed.node, issues: [], written });
}

/** What firstbootAtStart needs from the node: each one a port, so that a test can stand in. */
export interface FirstbootStartPorts {
  exists(path: string): boolean;
  /**
   * Runs firstboot-needed.sh (STAMP SEED_MOUNT): it mounts the seed medium if nothing has, then
   * exits 1 when the seed, the agent and its configuration are those recorded, 0 otherwise.
   */
  neededScript(script: string, stamp: string, seedMount: string): Promise<number>;
  /** First boot itself (`firstboot` above, with its stamp inputs and console). */
  run(): Promise<FirstbootResult>;
  print(line: string): void;
}

/** firstbootAtStart's outcome: skipped (and why), or first boot's own result. */
export type FirstbootAtStart = { ran: false; why: 'initramfs' | 'unchanged' } | { ran: true; result: FirstbootResult };

/**
 * First boot inside the agent's own process (`geminik8s-agent run --firstboot`), so that a node
 * starts Node.js once per boot: skipped when the initramfs found nothing changed (its marker,
 * no process started), or when firstboot-needed.sh says so; otherwise first boot runs here. Any
 * other answer of the script than "unchanged" (1) runs first boot, which is idempotent.
 */
export async function firstbootAtStart(
  config: AgentConfig,
  ports: FirstbootStartPorts,
  paths: { firstbootUnchanged: string; firstbootNeededScript: string; seedMount: string } = NODE_PATHS,
): Promise<FirstbootAtStart> {
  if (ports.exists(paths.firstbootUnchanged)) {
    ports.print('geminik8s: seed, agent and agent configuration unchanged (decided in the initramfs): first boot skipped');
    return { ran: false, why: 'initramfs' };
  }
  if ((await ports.neededScript(paths.firstbootNeededScript, firstbootStampFile(config), paths.seedMount)) === 1) {
    ports.print('geminik8s: seed, agent and agent configuration unchanged since the last first boot: first boot skipped');
    return { ran: false, why: 'unchanged' };
  }
  return { ran: true, result: await ports.run() };
}
