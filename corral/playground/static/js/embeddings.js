// embeddings.js: the Embeddings tab: embed two or more texts with /api/embed and compare them.
// Owns: the list of text fields (add, remove), the request, and the cosine-similarity matrix
// (shaded by similarity) with the most and least similar pair, dimensions and latency.

import { catalog } from "./catalog.js";
import { call, describeStatus, errorText } from "./conn.js";
import { $, fill, fmtMs, h, table, toast } from "./ui.js";

const SAMPLES = ["The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaped over a sleepy hound.",
  "Quarterly revenue grew by eight percent."];

export function initEmbeddings() {
  catalog.picker($("#emb-model"), "embed", "embeddings");
  for (const text of SAMPLES) addText(text);
  $("#emb-add").addEventListener("click", () => addText("").querySelector("textarea").focus());
  $("#emb-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
}

function addText(value) {
  const list = $("#emb-texts");
  const row = h("div", { class: "emb-text row" },
    h("textarea", { rows: 2, class: "wide", "aria-label": "Text" }, value),
    h("button", { type: "button", class: "icon", title: "Remove", "aria-label": "Remove this text",
      onclick: () => { if (list.children.length > 2) { row.remove(); renumber(); } else toast("Keep at least two texts"); } }, "✕"));
  list.append(row);
  renumber();
  return row;
}

function renumber() {
  [...$("#emb-texts").children].forEach((row, i) => {
    row.querySelector("textarea").setAttribute("aria-label", `Text ${i + 1}`);
    row.dataset.label = `T${i + 1}`;
  });
}

export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

async function run() {
  const texts = [...$("#emb-texts").querySelectorAll("textarea")].map((t) => t.value.trim());
  const model = $("#emb-model").value;
  const out = $("#emb-result");
  if (texts.filter(Boolean).length < 2 || texts.some((t) => !t)) { toast("Fill in at least two texts (remove empty ones)", "error"); return; }
  if (!model) { toast("No model", "error"); return; }
  fill(out, h("p", { class: "muted" }, "Embedding…"));
  try {
    const { res, t0 } = await call("/api/embed", { method: "POST", body: { model, input: texts, keep_alive: "30m" } });
    const body = await res.json().catch(() => null);
    const ms = performance.now() - t0;
    if (!res.ok) throw new Error(describeStatus(res.status, errorText(body, res.statusText)));
    show(texts, body.embeddings, ms, model);
  } catch (e) {
    fill(out, h("p", { class: "error" }, e.message));
  }
}

function show(texts, vectors, ms, model) {
  const n = texts.length;
  const sims = vectors.map((a) => vectors.map((b) => cosine(a, b)));
  const pairs = [];
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) pairs.push([sims[i][j], i, j]);
  pairs.sort((a, b) => b[0] - a[0]);
  const label = (i) => `T${i + 1}`;
  const cell = (v, i, j) => {
    const td = h("td", { class: "sim", title: `${label(i)} · ${label(j)}` }, v.toFixed(3));
    td.style.setProperty("--sim", String(Math.max(0, v)));
    return td;
  };
  const best = pairs[0];
  const worst = pairs.at(-1);
  fill($("#emb-result"),
    h("p", {}, `${model}: ${n} vectors of ${vectors[0]?.length ?? 0} dimensions in ${fmtMs(ms)}.`),
    h("p", {}, "Most similar: ", h("b", {}, `${label(best[1])} and ${label(best[2])}`), ` (${best[0].toFixed(3)}); least similar: `,
      h("b", {}, `${label(worst[1])} and ${label(worst[2])}`), ` (${worst[0].toFixed(3)}).`),
    h("div", { class: "scroll-x" }, table(["", ...texts.map((_, i) => label(i))],
      sims.map((row, i) => h("tr", {}, h("th", { scope: "row", title: texts[i] }, label(i)), row.map((v, j) => cell(v, i, j)))),
      { class: "matrix", "aria-label": "Cosine similarity" })),
    h("ol", { class: "small muted" }, texts.map((t) => h("li", {}, t))));
}
