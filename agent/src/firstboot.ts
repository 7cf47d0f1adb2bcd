import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSeed } from '#common/config.ts';
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
 * (the agent bundle and its configuration file). geminik8s-firstboot.service skips the next
 * first boot while all of them are unchanged (firstboot-needed.sh); an unconfigured outcome
 * removes the record.
 */
export async function firstboot(
  config: AgentConfig,
  root = '/',
  print: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  stampInputs: string[] = [],
): Promise<FirstbootResult> {
  const at = (p: string): string => join(root, p);
  const statusFile = at(join(config.stateDir, 'status.json'));
  const stampFile = at(join(config.stateDir, 'firstboot.sha256'));
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
