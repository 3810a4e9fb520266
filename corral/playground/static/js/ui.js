// ui.js: DOM and formatting helpers shared by every tab.
// Owns: the h() element builder (text only: it never parses HTML), number/byte/time formatting,
// the toast line, the confirm and prompt dialogs, copy-to-clipboard and JSON download/upload.
// Nothing here knows about the API or storage.

/** Build an element: h("button", {class: "x", onclick: fn}, "text", child...). Strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtBytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function fmtMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "—";
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms >= 100 ? Math.round(ms) : Number(ms).toFixed(1)} ms`;
}

export function fmtNum(n) {
  return n === undefined || n === null ? "—" : Number(n).toLocaleString("en-US");
}

export function fmtTime(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function fmtDateTime(ts) {
  const d = new Date(ts);
  return `${d.toLocaleDateString()} ${fmtTime(ts)}`;
}

/** "in 29m", "3h ago". */
export function relTime(ts) {
  const diff = (new Date(ts).getTime() - Date.now()) / 1000;
  const abs = Math.abs(diff);
  const [v, unit] = abs < 60 ? [abs, "s"] : abs < 3600 ? [abs / 60, "m"] : abs < 86400 ? [abs / 3600, "h"] : [abs / 86400, "d"];
  const text = `${Math.round(v)}${unit}`;
  if (abs > 3.15e9) return "never";
  return diff >= 0 ? `in ${text}` : `${text} ago`;
}

/** Inline `code` and ``code`` spans of a description, as text and <code> nodes (no HTML parsing). */
export function richText(text) {
  const out = [];
  const re = /``([^`]+)``|`([^`]+)`/g;
  let last = 0;
  for (const m of String(text || "").matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(h("code", {}, m[1] ?? m[2]));
    last = m.index + m[0].length;
  }
  if (last < String(text || "").length) out.push(text.slice(last));
  return out;
}

let toastTimer = 0;
export function toast(message, kind = "info") {
  const el = $("#toast");
  fill(el, message);
  el.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, 4000);
}

/** A modal yes/no question; resolves true on confirm. Keyboard: Enter confirms, Escape cancels. */
export function confirmDialog(title, message, confirmLabel = "Delete") {
  return modal(title, message, null, confirmLabel).then((v) => v !== null);
}

/** A modal text prompt; resolves the text, or null when cancelled. */
export function promptDialog(title, label, value = "", confirmLabel = "Save") {
  return modal(title, null, { label, value }, confirmLabel);
}

function modal(title, message, input, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = $("#dialog");
    const field = input ? h("input", { type: "text", value: input.value, "aria-label": input.label, class: "wide" }) : null;
    const form = h("form", { method: "dialog" },
      h("h2", {}, title),
      message ? h("p", {}, message) : null,
      field ? h("label", {}, input.label, field) : null,
      h("div", { class: "row end" },
        h("button", { type: "button", value: "cancel", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "submit", value: "ok", class: confirmLabel === "Delete" ? "danger" : "primary" }, confirmLabel)));
    fill(dialog, form);
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") resolve(null);
      else resolve(field ? field.value.trim() : "");
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    (field || form.querySelector("button[type=submit]")).focus();
  });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (an insecure origin): the old way.
    const area = h("textarea", { class: "offscreen" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied");
}

export function downloadJSON(filename, data) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, class: "offscreen" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Ask for a JSON file; resolves its parsed content (rejects on bad JSON). */
export function pickJSON() {
  return new Promise((resolve, reject) => {
    const input = h("input", { type: "file", accept: "application/json,.json", class: "offscreen" });
    input.addEventListener("change", async () => {
      const file = input.files[0];
      input.remove();
      if (!file) return;
      try { resolve(JSON.parse(await file.text())); } catch (e) { reject(e); }
    });
    document.body.append(input);
    input.click();
  });
}

/** A table from column titles and rows of cells (strings or nodes). */
export function table(columns, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => typeof c === "string" ? h("th", { scope: "col" }, c) : c))),
    h("tbody", {}, rows.map((r) => r instanceof Node ? r : h("tr", {}, r.map((cell) => cell instanceof Node && (cell.tagName === "TD" || cell.tagName === "TH") ? cell : h("td", {}, cell))))));
}

/** A <select> filled with options, keeping the current value when it is still offered. */
export function fillSelect(select, values, preferred) {
  const keep = preferred ?? select.value;
  fill(select, values.map((v) => h("option", { value: v }, v)));
  if (values.includes(keep)) select.value = keep;
}

export function debounce(fn, ms) {
  let t = 0;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}
