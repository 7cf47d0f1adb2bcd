import { formatBytes } from '#common/schema/units.ts';
import type { StepTiming } from '../build/steps.ts';
import type { BuildContext } from '../build/steps.ts';
import { partitionReport, type DiskState } from './steps.ts';

/** The build report: `<name>.report.json` for machines, `reportTable` for people. */
export interface BuildReport {
  image: string;
  version: string;
  arch: string;
  sourceDateEpoch: number;
  seconds: number;
  rootfs: { tar: string; bytes: number; slotFilesystem: string; slotBytes: number | null };
  partitions: ReturnType<typeof partitionReport>;
  diskBytes: number;
  outputs: DiskState['outputs'];
  components: unknown;
  steps: StepTiming[];
}

export function buildReport(ctx: BuildContext, steps: StepTiming[], seconds: number, manifest: Record<string, unknown> | undefined): BuildReport {
  const state = ctx.state.disk!;
  return {
    image: ctx.image.name,
    version: ctx.image.version,
    arch: ctx.image.arch,
    sourceDateEpoch: ctx.sourceDateEpoch,
    seconds,
    rootfs: {
      tar: ctx.state.rootfsTar!,
      bytes: ctx.state.rootfsBytes ?? (manifest?.rootfsBytes as number | undefined) ?? 0,
      slotFilesystem: `${ctx.image.rootfs.type}${ctx.image.rootfs.type === 'ext4' ? '' : `/${ctx.image.rootfs.compression}`}`,
      slotBytes: state.images.rootA?.used ?? null,
    },
    partitions: partitionReport(state),
    diskBytes: state.layout.size,
    outputs: state.outputs.map((o) => ({ ...o })),
    components: manifest?.components ?? {},
    steps,
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd()).join('\n');
}

/** The report as aligned text tables. */
export function reportTable(r: BuildReport): string {
  const parts = table([
    ['#', 'partition', 'fs', 'size', 'used', 'use%'],
    ...r.partitions.map((p) => [String(p.number), p.name, p.fs, formatBytes(p.size), p.used === null ? '-' : formatBytes(p.used), p.used === null ? '-' : `${((100 * p.used) / p.size).toFixed(0)}%`]),
  ]);
  const outs = table([['output', 'size', 'sha256'], ...r.outputs.map((o) => [o.file.split('/').pop()!, formatBytes(o.bytes), o.sha256.slice(0, 16)])]);
  const steps = table([['step', 'seconds'], ...r.steps.map((s) => [s.step, s.status === 'skipped' ? 'skipped' : (s.ms / 1000).toFixed(1)])]);
  return [
    `${r.image} ${r.version} ${r.arch}: ${r.seconds.toFixed(1)} s; root ${formatBytes(r.rootfs.bytes)} uncompressed, slot ${r.rootfs.slotFilesystem} ${r.rootfs.slotBytes === null ? '-' : formatBytes(r.rootfs.slotBytes)}; disk ${formatBytes(r.diskBytes)}`,
    '', parts, '', outs, '', steps,
  ].join('\n');
}
