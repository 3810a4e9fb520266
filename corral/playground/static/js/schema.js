// schema.js: reading the server's OpenAPI document (GET /api/openapi.json) for the API tab.
// Owns: $ref resolution, a readable type name for a JSON schema ("string | null", "Message[]"),
// flattening a schema into parameter-table rows ("options.temperature", "messages[].role"), the list
// of operations grouped by tag, and the cURL example of an operation.

export function resolve(doc, schema) {
  let s = schema;
  for (let i = 0; s && s.$ref && i < 20; i++) s = doc.components?.schemas?.[s.$ref.split("/").pop()];
  return s || {};
}

const refName = (s) => (s && s.$ref ? s.$ref.split("/").pop() : null);

/** The schema without its null alternative: anyOf [X, null] -> X. */
export function nonNull(schema) {
  if (schema && Array.isArray(schema.anyOf)) {
    const rest = schema.anyOf.filter((s) => s.type !== "null");
    if (rest.length === 1) return rest[0];
  }
  return schema || {};
}

export function typeName(doc, schema) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema);
  if (Array.isArray(schema.anyOf)) {
    const parts = schema.anyOf.filter((s) => s.type !== "null").map((s) => typeName(doc, s));
    return parts.join(" | ") + (schema.anyOf.some((s) => s.type === "null") ? " | null" : "");
  }
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return `${typeName(doc, schema.items)}[]`;
  if (schema.type === "object" && !schema.properties) return "object";
  return schema.type || "any";
}

/** The object schema inside X, X[] or X | null, if it has properties (for nesting rows). */
function nested(doc, schema) {
  const s = nonNull(schema);
  if (s.type === "array") {
    const item = resolve(doc, nonNull(s.items));
    return item.properties ? { schema: item, suffix: "[]", name: refName(nonNull(s.items)) } : null;
  }
  const obj = resolve(doc, s);
  return obj.properties ? { schema: obj, suffix: "", name: refName(s) } : null;
}

/** Rows {name, type, required, description, default} of an object schema, nested two levels deep. */
export function flatten(doc, schema, prefix = "", depth = 0, seen = new Set()) {
  const obj = resolve(doc, schema);
  const required = new Set(obj.required || []);
  const rows = [];
  for (const [name, prop] of Object.entries(obj.properties || {})) {
    const full = prefix + name;
    rows.push({
      name: full, type: typeName(doc, prop), required: required.has(name),
      description: prop.description || resolve(doc, nonNull(prop)).description || "",
      default: prop.default,
    });
    const inner = nested(doc, prop);
    if (inner && depth < 2 && !seen.has(inner.name || inner.schema)) {
      const next = new Set(seen).add(inner.name || inner.schema);
      rows.push(...flatten(doc, inner.schema, `${full}${inner.suffix}.`, depth + 1, next));
    }
  }
  return rows;
}

/** [{tag, ops: [{method, path, op}]}] in the document's tag order. */
export function operations(doc) {
  const groups = new Map((doc.tags || []).map((t) => [t.name, []]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (method === "head" && item.get) continue; // a GET's HEAD twin adds nothing to read
      const tag = op.tags?.[0] || "Other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push({ method: method.toUpperCase(), path, op, id: `${method.toUpperCase()} ${path}` });
    }
  }
  return [...groups].filter(([, ops]) => ops.length).map(([tag, ops]) => ({ tag, ops }));
}

export function requestExample(op) {
  const media = op.requestBody?.content?.["application/json"];
  return media?.example ?? (op.requestBody ? {} : undefined);
}

/** A path with its {params} filled from `values` (left as {name} when empty). */
export function fillPath(path, values = {}) {
  return path.replace(/\{(\w+)\}/g, (m, name) => (values[name] ? encodeURIComponent(values[name]).replace(/%2F/gi, "/") : m));
}

const shellQuote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;

/** The cURL command for an operation, with the real server URL and the key as a placeholder. */
export function curl(serverUrl, method, path, op, { params = {}, query = {}, body } = {}) {
  const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v !== undefined)).toString();
  const url = `${serverUrl}${fillPath(path, params)}${qs ? `?${qs}` : ""}`;
  const parts = ["curl"];
  if (op["x-corral-stream"]) parts.push("-N");
  else parts.push("-s");
  if (method === "HEAD") parts.push("-I");
  else if (method !== "GET") parts.push(`-X ${method}`);
  const lines = [parts.join(" ")];
  if (op["x-corral-scope"] !== "open") lines.push(`-H "Authorization: Bearer YOUR_API_KEY"`);
  if (body !== undefined) {
    lines.push(`-H "Content-Type: application/json"`);
    lines.push(`-d ${shellQuote(JSON.stringify(body, null, 2))}`);
  }
  lines.push(shellQuote(url));
  return lines.join(" \\\n  ");
}
