// A checker for Kubernetes structural schemas (a CRD's openAPIV3Schema), enough to hold a
// rendered object against a CRD we do not control. Stricter than the API server in one way:
// a field the schema does not declare is an error (the server would prune it silently, which
// is how a typo such as `jobActiveDeadlineSeconds` goes unnoticed).

export interface SchemaNode {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  properties?: Record<string, SchemaNode>;
  additionalProperties?: boolean | SchemaNode;
  items?: SchemaNode;
  required?: string[];
  enum?: unknown[];
  format?: string;
  'x-kubernetes-int-or-string'?: boolean;
  'x-kubernetes-preserve-unknown-fields'?: boolean;
}

/** Every place `value` breaks `schema`, as "dotted.path: problem". */
export function checkStructural(schema: SchemaNode, value: unknown, path = ''): string[] {
  const at = path || '(root)';
  if (schema['x-kubernetes-int-or-string']) {
    return Number.isInteger(value) || typeof value === 'string' ? [] : [`${at}: expected an integer or a string, found ${JSON.stringify(value)}`];
  }
  const errors: string[] = [];
  if (schema.enum && !schema.enum.includes(value)) errors.push(`${at}: expected one of ${JSON.stringify(schema.enum)}, found ${JSON.stringify(value)}`);
  switch (schema.type) {
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return [...errors, `${at}: expected an object, found ${JSON.stringify(value)}`];
      const record = value as Record<string, unknown>;
      for (const r of schema.required ?? []) if (!(r in record)) errors.push(`${path ? `${path}.` : ''}${r}: required`);
      for (const [k, v] of Object.entries(record)) {
        const sub = schema.properties?.[k] ?? (typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined);
        const child = path ? `${path}.${k}` : k;
        if (sub) errors.push(...checkStructural(sub, v, child));
        else if (!schema['x-kubernetes-preserve-unknown-fields'] && schema.additionalProperties !== true) errors.push(`${child}: not a field of this schema`);
      }
      return errors;
    }
    case 'array':
      if (!Array.isArray(value)) return [...errors, `${at}: expected an array, found ${JSON.stringify(value)}`];
      value.forEach((v, i) => schema.items && errors.push(...checkStructural(schema.items, v, `${path}.${i}`)));
      return errors;
    case 'string':
      return typeof value === 'string' ? errors : [...errors, `${at}: expected a string, found ${JSON.stringify(value)}`];
    case 'integer':
      return Number.isInteger(value) ? errors : [...errors, `${at}: expected an integer, found ${JSON.stringify(value)}`];
    case 'number':
      return typeof value === 'number' ? errors : [...errors, `${at}: expected a number, found ${JSON.stringify(value)}`];
    case 'boolean':
      return typeof value === 'boolean' ? errors : [...errors, `${at}: expected a boolean, found ${JSON.stringify(value)}`];
    default:
      return errors;
  }
}
