import { readFile } from 'node:fs/promises';
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type * as z from 'zod';
import { ExitCode, GeminiError, ValidationError, type ValidationIssue } from './errors.ts';

/** A parsed YAML file that can point back at the line and column of any path in it. */
export interface SourceDocument {
  file: string;
  text: string;
  doc: Document.Parsed;
  lines: LineCounter;
  /** The plain data, parsed with YAML 1.1 semantics (as cloud-init reads it). */
  data: unknown;
}

/** Parse YAML text with YAML 1.1 semantics; syntax errors become located issues. */
export function parseSource(file: string, text: string): { source?: SourceDocument; issues: ValidationIssue[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { version: '1.1', lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const issues: ValidationIssue[] = doc.errors.map((e) => {
    const pos = lines.linePos(e.pos[0]);
    return { file, line: pos.line, col: pos.col, path: '', message: `YAML syntax: ${e.message.split('\n')[0]}` };
  });
  if (issues.length > 0) return { issues };
  return { source: { file, text, doc, lines, data: doc.toJS({ maxAliasCount: 100 }) }, issues };
}

export async function readSource(file: string): Promise<{ source?: SourceDocument; issues: ValidationIssue[] }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new GeminiError(`cannot read ${file}: ${why}`, ExitCode.invalidInput);
  }
  return parseSource(file, text);
}

/** Line and column of the node at `path`, or of the nearest existing ancestor. */
export function locate(source: SourceDocument, path: readonly PropertyKey[]): { line: number; col: number } {
  let node: unknown = source.doc.contents;
  let best: Node | undefined = isNodeLike(node) ? node : undefined;
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(segment));
      if (!pair) break;
      if (pair.value === null || pair.value === undefined) {
        best = pair.key as Node;
        break;
      }
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number') {
      const item = node.items[segment];
      if (!item) break;
      node = item;
    } else {
      break;
    }
    if (isNodeLike(node)) best = node;
  }
  const offset = best?.range?.[0] ?? 0;
  return source.lines.linePos(offset);
}

function isNodeLike(value: unknown): value is Node {
  return typeof value === 'object' && value !== null && 'range' in value;
}

/** Describe a parsed value for an error message. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (typeof value === 'boolean') return `boolean ${value}`;
  if (typeof value === 'number') return `number ${value}`;
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === 'object') return 'a mapping';
  return typeof value;
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg as string];
  }
  return v;
}

const YAML11_BOOLEAN_WORDS = /^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/;

/** Turn zod issues into located validation issues. */
export function issuesFromZod(source: SourceDocument, error: Pick<z.ZodError, 'issues'>, basePath: PropertyKey[] = []): ValidationIssue[] {
  return error.issues.flatMap((issue): ValidationIssue[] => {
    if (issue.code === 'unrecognized_keys') {
      // One issue per unknown key, pointing at the key itself.
      return issue.keys.map((key) => {
        const path = [...basePath, ...issue.path, key];
        return { file: source.file, ...locate(source, path), path: path.map(String).join('.'), message: 'unknown field (check the spelling)' };
      });
    }
    const path = [...basePath, ...issue.path];
    const found = valueAt(source.data, path);
    const { line, col } = locate(source, path);
    let expected: string | undefined;
    let message = issue.message;
    switch (issue.code) {
      case 'invalid_type':
        expected = issue.expected;
        message = found === undefined ? 'required field is missing' : 'wrong type';
        break;
      case 'invalid_value':
        expected = `one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
        message = 'value not allowed';
        break;
      default:
        break;
    }
    const rawScalar = sourceTextAt(source, path);
    if (typeof found === 'boolean' && rawScalar && YAML11_BOOLEAN_WORDS.test(rawScalar) && expected === 'string') {
      message += `; YAML 1.1 (what cloud-init reads) turns unquoted ${rawScalar} into a boolean, quote it`;
    }
    return [{ file: source.file, line, col, path: path.map(String).join('.'), message, found: describeValue(found), expected }];
  });
}

function sourceTextAt(source: SourceDocument, path: readonly PropertyKey[]): string | undefined {
  const node = source.doc.getIn(path as unknown[], true);
  if (isScalar(node) && node.range) return source.text.slice(node.range[0], node.range[1]).trim();
  return undefined;
}

/** Throw a ValidationError when there are issues. */
export function assertNoIssues(issues: ValidationIssue[]): void {
  if (issues.length > 0) throw new ValidationError(issues);
}
