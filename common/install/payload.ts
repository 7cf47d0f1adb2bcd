import type { RenderedFile } from '../render/node.ts';

/** What an installer is handed as its seed: by `pxe serve` at its seed URL, or in the installer ISO's seed slot. */
export interface SeedPayload {
  node: string;
  disk: Record<string, unknown>;
  files: RenderedFile[];
}

/** A node's seed payload as the installer reads it, JSON with a final newline (pure). */
export function seedPayloadJson(node: string, disk: Record<string, unknown> | undefined, files: RenderedFile[]): string {
  return `${JSON.stringify({ node, disk: disk ?? {}, files: files.map((f) => ({ path: f.path, mode: f.mode, content: f.content })) })}\n`;
}
