// apiref.js: the API tab: a reference of every endpoint, drawn from the server's own OpenAPI document.
// Owns: loading /api/openapi.json (no key needed), the endpoint list grouped by API family with a
// filter, and one endpoint's page: summary, scope, parameter table, response schema, the cURL
// example (real server URL, key placeholder) and the Try it form (tryit.js). Nothing about an
// endpoint is written here by hand, so the reference cannot drift from the server.

import { conn, json } from "./conn.js";
import { curl, flatten, operations, requestExample, resolve, typeName } from "./schema.js";
import { tryItForm } from "./tryit.js";
import { $, copyText, debounce, fill, h, richText, table } from "./ui.js";

let doc = null;
let groups = [];
let selected = localStorage.getItem("corral.playground.apiSelected") || "POST /api/generate";

export function initApiRef() {
  $("#api-filter").addEventListener("input", debounce(renderList, 100));
}

export async function loadApiRef() {
  try {
    doc = await json("/api/openapi.json");
  } catch (e) {
    fill($("#api-detail"), h("p", { class: "error" }, `Cannot load the API description: ${e.message}`));
    return;
  }
  groups = operations(doc);
  renderList();
  const all = groups.flatMap((g) => g.ops);
  show(all.find((o) => o.id === selected) || all[0]);
}

function renderList() {
  if (!doc) return;
  const filter = $("#api-filter").value.trim().toLowerCase();
  const match = (o) => !filter || `${o.method} ${o.path} ${o.op.summary}`.toLowerCase().includes(filter);
  fill($("#api-list"), groups.map((g) => {
    const ops = g.ops.filter(match);
    if (!ops.length) return null;
    return h("section", { class: "api-group" },
      h("h3", {}, g.tag),
      h("ul", {}, ops.map((o) => h("li", {},
        h("button", { type: "button", class: `api-link${o.id === selected ? " active" : ""}`, dataset: { op: o.id },
          "aria-current": o.id === selected ? "true" : null, onclick: () => show(o, true) },
          h("span", { class: `method m-${o.method.toLowerCase()}` }, o.method),
          h("span", { class: "path" }, o.path),
          h("span", { class: "summary muted" }, o.op.summary))))));
  }));
}

function scopeBadge(scope) {
  const words = { open: "no key", user: "any key", admin: "admin key" };
  return h("span", { class: `badge scope-${scope}`, title: `Scope: ${scope}` }, words[scope] || scope);
}

function show(entry, focus = false) {
  if (!entry) return;
  selected = entry.id;
  localStorage.setItem("corral.playground.apiSelected", selected);
  renderList();
  const { method, path, op } = entry;
  const pathParams = (op.parameters || []).filter((p) => p.in !== "header");
  const body = op.requestBody?.content?.["application/json"]?.schema;
  const bodyRows = body ? flatten(doc, body) : [];
  const ok = Object.entries(op.responses || {}).find(([code]) => code.startsWith("2"));
  const okSchema = ok?.[1]?.content?.["application/json"]?.schema;
  const stream = op["x-corral-stream"];
  const title = h("h2", { tabindex: "-1" }, op.summary);
  const curlText = () => curl(conn.url, method, path, op, { body: requestExample(op), params: exampleParams(pathParams) });
  const curlPre = h("pre", { class: "curl" }, curlText());
  fill($("#api-detail"),
    h("header", { class: "api-head" },
      title,
      h("div", { class: "row wrap" },
        h("span", { class: `method m-${method.toLowerCase()}` }, method), h("code", { class: "path" }, path),
        scopeBadge(op["x-corral-scope"]),
        stream ? h("span", { class: "badge", title: "The answer can stream" }, stream === "ndjson" ? "streams NDJSON" : "streams SSE") : null,
        h("span", { class: "badge muted" }, op["x-corral-dialect"])),
      op.description ? h("p", {}, richText(op.description)) : null),
    section("Parameters", pathParams.length || bodyRows.length ? [
      pathParams.length ? paramTable(pathParams.map((p) => ({ name: p.name, type: `${p.schema?.type || "string"} (${p.in})`,
        required: p.required, description: p.description || "" }))) : null,
      bodyRows.length ? [h("p", { class: "small muted" }, `JSON body: ${typeName(doc, body)}`), paramTable(bodyRows)] : null,
    ] : h("p", { class: "muted" }, "None.")),
    section("Response schema", okSchema ? [
      h("p", { class: "small muted" }, `${ok[0]}: ${typeName(doc, okSchema)}${stream === "ndjson" ? " (one per line while streaming)" : ""}`),
      resolve(doc, okSchema).description ? h("p", {}, richText(resolve(doc, okSchema).description)) : null,
      paramTable(flatten(doc, okSchema), "field", "schema"),
    ] : h("p", { class: "muted" }, responseWords(op, ok))),
    section("cURL", [h("div", { class: "row end" }, h("button", { type: "button", class: "small", onclick: () => copyText(curlPre.textContent) }, "Copy")), curlPre]),
    section("Try it", tryItForm(doc, method, path, op, pathParams, (values) => {
      curlPre.textContent = curl(conn.url, method, path, op, values);
    })));
  if (focus) title.focus();
}

function exampleParams(params) {
  return Object.fromEntries(params.filter((p) => p.in === "path").map((p) => [p.name, p.example ?? ""]));
}

function responseWords(op, ok) {
  if (!ok) return "No success body.";
  const media = Object.keys(ok[1].content || {});
  return media.length ? `${ok[0]} ${ok[1].description || ""}: ${media.join(", ")}` : `${ok[0]}: no body.`;
}

function section(title, content) {
  return h("section", { class: "api-section" }, h("h3", {}, title), content);
}

function paramTable(rows, first = "parameter", cls = "params") {
  return h("div", { class: "scroll-x" }, table([first, "type", "description"], rows.map((r) => [
    h("td", { class: "mono" }, r.name, r.required ? h("span", { class: "required" }, " required") : null),
    h("td", { class: "mono small" }, r.type),
    h("td", {}, richText(r.description), r.default !== undefined && r.default !== null && r.default !== ""
      ? h("span", { class: "muted small" }, ` (default: ${JSON.stringify(r.default)})`) : null),
  ]), { class: cls }));
}

