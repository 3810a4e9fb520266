// eventlog.js: the event-log table of the Analytics tab, shared by the browser's and the server's view.
// Owns: the timeline columns (Time, OK, HTTP, Proxy, Stream↑, Output, Total, Model, In, Out,
// Client I/O, Error) with what each means, the per-row "Show input / output" toggle, and mapping a
// server request-log row to the same shape as a browser event.

import { fill, fmtDateTime, fmtMs, fmtNum, fmtTime, h } from "./ui.js";

export const COLUMNS = [
  ["Time", "When the turn started"],
  ["OK", "Answered without an error (stopped: the user pressed Stop)"],
  ["HTTP", "HTTP status"],
  ["Proxy", "The gateway's time before the model ran: auth + queue (X-SDL-Proxy-Timing)"],
  ["Stream↑", "Time until the first streamed token reached the browser (server-side: ttft)"],
  ["Output", "Generation time (the corral_timing stream marker)"],
  ["Total", "The whole turn, as the browser saw it (server-side: as the gateway saw it)"],
  ["Model", "Model"],
  ["In", "Prompt tokens"],
  ["Out", "Output tokens"],
  ["Client I/O", "Total minus the server's own total: network and browser (server-side: sending the answer)"],
  ["Error", "Error text"],
];

/** A server request-log row (GET /api/admin/requests) in the shape of a browser event. */
export function fromRequestRow(r) {
  const sum = [r.auth_ms, r.queue_ms].filter((x) => typeof x === "number");
  return {
    id: r.id, ts: r.ts * 1000, kind: r.path, model: r.model, ok: r.status < 400 && !r.error, stopped: r.status === 499,
    status: r.status, error: r.error, promptTokens: r.prompt_tokens, outputTokens: r.output_tokens,
    timeline: {
      proxy: sum.length ? sum.reduce((a, b) => a + b, 0) : null, streamUp: r.ttft_ms, output: r.generation_ms,
      total: r.total_ms, clientIo: r.client_io_ms,
    },
    server: { key: r.key_name, client: r.client, method: r.method, path: r.path, userAgent: r.user_agent, doneReason: r.done_reason },
  };
}

/** The table of `events` (newest first), at most `limit` rows. */
export function eventTable(events, { limit = 50, label = "Event log" } = {}) {
  const rows = events.slice(-limit).reverse();
  if (!rows.length) return h("p", { class: "muted" }, "No events yet.");
  const body = h("tbody");
  for (const e of rows) {
    const t = e.timeline || {};
    const toggle = h("button", { type: "button", class: "small link", "aria-expanded": "false" },
      e.server ? "Show details" : "Show input / output");
    const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: COLUMNS.length + 1 }, detailView(e)));
    toggle.addEventListener("click", () => {
      detail.hidden = !detail.hidden;
      toggle.setAttribute("aria-expanded", String(!detail.hidden));
      toggle.textContent = detail.hidden ? (e.server ? "Show details" : "Show input / output") : "Hide";
    });
    body.append(h("tr", { class: e.ok ? "" : "bad" },
      h("td", { title: fmtDateTime(e.ts) }, fmtTime(e.ts)),
      h("td", {}, e.stopped ? "stopped" : e.ok ? "✓" : "✗"),
      h("td", {}, e.status ? String(e.status) : "—"),
      h("td", {}, fmtMs(t.proxy)), h("td", {}, fmtMs(t.streamUp)), h("td", {}, fmtMs(t.output)), h("td", {}, fmtMs(t.total)),
      h("td", { class: "mono small" }, e.model || "—"),
      h("td", {}, fmtNum(e.promptTokens)), h("td", {}, fmtNum(e.outputTokens)), h("td", {}, fmtMs(t.clientIo)),
      h("td", { class: "error small" }, e.error || ""),
      h("td", {}, toggle)), detail);
  }
  return h("div", { class: "scroll-x" }, h("table", { class: "events", "aria-label": label },
    h("thead", {}, h("tr", {}, COLUMNS.map(([name, help]) => h("th", { scope: "col", title: help }, name)), h("th", { scope: "col" }, h("span", { class: "offscreen" }, "Details")))),
    body));
}

function detailView(e) {
  if (e.server) {
    const s = e.server;
    return h("dl", { class: "facts small" },
      [["Request", `${s.method} ${s.path}`], ["Key", s.key || "—"], ["Client", s.client || "—"], ["User agent", s.userAgent || "—"],
        ["Done reason", s.doneReason || "—"]].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }
  const box = h("div", { class: "io" });
  fill(box,
    h("div", {}, h("h4", {}, "Input"), h("pre", {}, e.input || "(none)")),
    h("div", {}, h("h4", {}, "Output"), h("pre", {}, e.output || "(none)")),
    e.timeline?.server && Object.keys(e.timeline.server).length
      ? h("p", { class: "small muted" }, "Server phases: ", Object.entries(e.timeline.server).map(([k, v]) => `${k} ${fmtMs(v)}`).join(", "))
      : h("p", { class: "small muted" }, "No server timing came back for this turn."));
  return box;
}
