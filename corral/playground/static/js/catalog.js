// catalog.js: the models the server has (GET /api/tags), shared by every model picker on the page.
// Owns: the cached list, refresh(), and keeping each registered <select> filled (chat, generate,
// embeddings pick from it; the Models tab refreshes it after a pull, copy or delete).

import { json } from "./conn.js";
import { fill, h } from "./ui.js";

let models = [];
const pickers = new Map(); // select -> {kind, storeKey}
const listeners = new Set();

export const catalog = {
  get models() { return models; },
  onChange(fn) { listeners.add(fn); },

  /** Register a <select>; `kind` "embed" prefers embedding models, "text" the others. */
  picker(select, kind, storeKey) {
    pickers.set(select, { kind, storeKey });
    select.addEventListener("change", () => localStorage.setItem(`corral.playground.model.${storeKey}`, select.value));
    fillPicker(select);
  },

  async refresh() {
    try {
      models = (await json("/api/tags")).models || [];
    } catch (e) {
      models = [];
      throw e;
    } finally {
      for (const select of pickers.keys()) fillPicker(select);
      for (const fn of listeners) fn(models);
    }
    return models;
  },

  clear() {
    models = [];
    for (const select of pickers.keys()) fillPicker(select);
    for (const fn of listeners) fn(models);
  },
};

export function isEmbedding(m) {
  const fam = (m.details?.family || "").toLowerCase();
  return ["bert", "nomic-bert", "xlm-roberta"].includes(fam) || /embed|minilm|bge|e5-/i.test(m.name);
}

function fillPicker(select) {
  const { kind, storeKey } = pickers.get(select);
  const names = models.map((m) => m.name);
  const preferred = models.filter((m) => (kind === "embed" ? isEmbedding(m) : !isEmbedding(m))).map((m) => m.name);
  const ordered = [...preferred, ...names.filter((n) => !preferred.includes(n))];
  const saved = localStorage.getItem(`corral.playground.model.${storeKey}`);
  const keep = select.value;
  if (!ordered.length) {
    fill(select, h("option", { value: "" }, "no models"));
    return;
  }
  fill(select, ordered.map((n) => h("option", { value: n }, n)));
  for (const want of [keep, saved, preferred[0]]) {
    if (want && ordered.includes(want)) { select.value = want; break; }
  }
}
