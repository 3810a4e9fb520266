// tryit.js: the API tab's "Try it" form for one endpoint, and its live response view.
// Owns: inputs for path and query parameters, the JSON body editor (prefilled with the document's
// example), Send / Abort, and the response as it arrives: status, elapsed time and time to first
// byte, the timing headers (Server-Timing, X-SDL-Proxy-Timing) and the corral_timing stream marker,
// every readable header, and the body line by line for NDJSON and SSE (pretty JSON otherwise).

import { call, parseServerTiming } from "./conn.js";
import { fillPath, requestExample } from "./schema.js";
import { fill, fmtMs, h, table } from "./ui.js";

const MAX_LINES = 5000;

/** The form; `onChange(values)` lets the cURL example follow what is typed. */
export function tryItForm(doc, method, path, op, params, onChange) {
  const inputs = params.map((p) => ({
    p, input: h("input", { type: "text", value: p.example ?? "", placeholder: p.schema?.type || "string", "aria-label": p.name,
      class: "mono", dataset: { param: p.name } }),
  }));
  const example = requestExample(op);
  const bodyArea = example === undefined ? null
    : h("textarea", { class: "mono wide body-editor", rows: Math.min(16, JSON.stringify(example, null, 2).split("\n").length + 1),
      spellcheck: false, "aria-label": "Request body (JSON)" }, JSON.stringify(example, null, 2));
  const bodyError = h("p", { class: "error small", role: "alert", hidden: true });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const abort = h("button", { type: "button", hidden: true }, "Abort");
  const result = h("div", { class: "tryit-result", "aria-live": "polite" });
  let controller = null;

  const values = () => {
    const out = { params: {}, query: {}, body: undefined };
    for (const { p, input } of inputs) (p.in === "path" ? out.params : out.query)[p.name] = input.value.trim();
    if (bodyArea) {
      try {
        out.body = bodyArea.value.trim() ? JSON.parse(bodyArea.value) : undefined;
        bodyError.hidden = true;
      } catch (e) {
        bodyError.textContent = `The body is not valid JSON: ${e.message}`;
        bodyError.hidden = false;
        out.invalid = true;
      }
    }
    return out;
  };
  const changed = () => { const v = values(); if (!v.invalid) onChange(v); };
  for (const { input } of inputs) input.addEventListener("input", changed);
  bodyArea?.addEventListener("input", changed);
  bodyArea?.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });

  const form = h("form", { class: "tryit stack", onsubmit: async (e) => {
    e.preventDefault();
    if (controller) return;
    const v = values();
    if (v.invalid) return;
    const missing = inputs.filter(({ p, input }) => p.required && !input.value.trim()).map(({ p }) => p.name);
    if (missing.length) {
      fill(result, h("p", { class: "error" }, `Fill in ${missing.join(", ")}`));
      return;
    }
    controller = new AbortController();
    send.hidden = true;
    abort.hidden = false;
    try {
      await runRequest(method, path, op, v, controller.signal, result);
    } finally {
      controller = null;
      send.hidden = false;
      abort.hidden = true;
    }
  } },
  inputs.length ? h("div", { class: "param-inputs" }, inputs.map(({ p, input }) => h("label", {},
    h("span", { class: "mono" }, `${p.name}${p.required ? " *" : ""}`, h("span", { class: "muted small" }, ` ${p.in}`)), input))) : null,
  bodyArea ? h("label", {}, "Body (JSON; Ctrl+Enter sends)", bodyArea) : null,
  bodyError,
  h("div", { class: "row" }, send, abort,
    bodyArea ? h("button", { type: "button", onclick: () => { bodyArea.value = JSON.stringify(example, null, 2); changed(); } }, "Reset example") : null),
  result);
  abort.addEventListener("click", () => controller?.abort());
  return form;
}

async function runRequest(method, path, op, v, signal, result) {
  const qs = new URLSearchParams(Object.entries(v.query).filter(([, x]) => x !== "")).toString();
  const url = fillPath(path, v.params) + (qs ? `?${qs}` : "");
  const status = h("div", { class: "status-line" }, `${method} ${url} …`);
  const timing = h("div", { class: "timing" });
  const headers = h("details", { class: "headers" }, h("summary", {}, "Response headers"));
  const body = h("pre", { class: "response-body", tabindex: "0", "aria-label": "Response body" });
  fill(result, status, timing, headers, body);
  let lines = 0;
  let firstByte = null;
  let marker = null;
  let answer = null;
  try {
    answer = await call(url, { method, body: v.body, signal });
  } catch (e) {
    fill(status, h("span", { class: "error" }, e.name === "AbortError" ? "Aborted before the answer started" : e.message));
    return;
  }
  const { res, t0, tHeaders } = answer;
  const type = res.headers.get("content-type") || "";
  const streamed = /ndjson|event-stream/.test(type);
  const showStatus = (extra = "") => fill(status,
    h("span", { class: `code c${String(res.status)[0]}` }, `HTTP ${res.status}`), ` ${res.statusText || ""} · `,
    `headers ${fmtMs(tHeaders - t0)}`, firstByte !== null ? ` · first byte ${fmtMs(firstByte - t0)}` : "",
    streamed ? ` · ${lines} lines` : "", extra);
  showStatus(" · receiving…");
  headers.append(table(["header", "value"], [...res.headers].map(([k, val]) => [h("td", { class: "mono" }, k), h("td", { class: "mono small" }, val)])));
  const append = (text) => {
    if (lines < MAX_LINES) body.append(text + "\n");
    else if (lines === MAX_LINES) body.append(`… (only the first ${MAX_LINES} lines are shown)\n`);
    lines++;
  };
  try {
    if (method === "HEAD" || !res.body) {
      body.textContent = "(no body)";
    } else if (streamed) {
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (firstByte === null) firstByte = performance.now();
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim() && type.includes("ndjson")) continue;
          append(line);
          if (line.includes("corral_timing")) {
            try { marker = JSON.parse(line).corral_timing || marker; } catch { /* an SSE line */ }
          }
        }
        showStatus(" · receiving…");
        body.scrollTop = body.scrollHeight;
      }
      if (buf) append(buf);
    } else if (/json/.test(type)) {
      const text = await res.text();
      firstByte = performance.now();
      let pretty = text;
      try { pretty = JSON.stringify(JSON.parse(text), null, 2); marker = JSON.parse(text).corral_timing || null; } catch { /* not JSON */ }
      body.textContent = pretty || "(empty body)";
    } else if (/^text\//.test(type) || !type) {
      const text = await res.text();
      firstByte = performance.now();
      body.textContent = text.length > 200000 ? `${text.slice(0, 200000)}\n… (${text.length} characters)` : text || "(empty body)";
    } else {
      const blob = await res.blob();
      firstByte = performance.now();
      body.textContent = `(${blob.size} bytes of ${type})`;
    }
    showStatus(` · total ${fmtMs(performance.now() - t0)}`);
  } catch (e) {
    showStatus(e.name === "AbortError" ? " · aborted" : ` · ${e.message}`);
  }
  fill(timing, timingView(res.headers, marker));
}

function timingView(headers, marker) {
  const st = parseServerTiming(headers.get("Server-Timing"));
  const px = parseServerTiming(headers.get("X-SDL-Proxy-Timing"));
  if (!st && !px && !marker) {
    return h("p", { class: "muted small" }, "No timing headers came back (not a Corral server, or CORS does not expose them).");
  }
  const phases = [...new Set([...Object.keys(st || {}), ...Object.keys(px || {}), ...Object.keys(marker || {})])];
  return table(["phase", "Server-Timing", "X-SDL-Proxy-Timing", "corral_timing"], phases.map((p) => [
    h("td", { class: "mono" }, p), fmtMs(st?.[p]), fmtMs(px?.[p]), fmtMs(marker?.[p]),
  ]), { class: "compact", "aria-label": "Timing" });
}

