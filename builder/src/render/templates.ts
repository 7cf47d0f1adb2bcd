import { readFileSync } from 'node:fs';
import Handlebars from 'handlebars';

const TEMPLATE_DIR = new URL('../../../templates/', import.meta.url);
const cache = new Map<string, Handlebars.TemplateDelegate>();

/**
 * Render a text template from templates/ in strict mode: a variable the template uses but the
 * context lacks is an error, never an empty string. No HTML escaping: these are config files.
 */
export function renderTemplate(name: string, context: Record<string, unknown>): string {
  let template = cache.get(name);
  if (!template) {
    const source = readFileSync(new URL(name, TEMPLATE_DIR), 'utf8');
    template = Handlebars.compile(source, { strict: true, noEscape: true });
    cache.set(name, template);
  }
  try {
    return template(context);
  } catch (err) {
    throw new Error(`template ${name}: ${(err as Error).message}`);
  }
}
