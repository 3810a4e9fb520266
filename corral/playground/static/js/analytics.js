// analytics.js: the Analytics tab.
// Owns: the browser's view (chat usage, latency chart, by-model table, HTTP status counts, saved
// chat sessions, estimated storage, recent errors, this browser's profile, the event log), the
// server's view from the request log (GET /api/admin/stats and /api/admin/requests over a time
// range: every client with an admin key, the key's own requests with a user key), export of all of
// it as JSON, and clearing the local events.

import { latencyChart } from "./charts.js";
import { exportData as chatExport } from "./chatlist.js";
import { conn, isAdmin, isConnected, json } from "./conn.js";
import { eventTable, fromRequestRow } from "./eventlog.js";
import { store } from "./store.js";
import { clientProfile } from "./telemetry.js";
import { $, confirmDialog, downloadJSON, fill, fmtBytes, fmtDateTime, fmtMs, fmtNum, h, table, toast } from "./ui.js";

let lastServer = null; // {range, stats, requests} of the last server view, for the export

export function initAnalytics() {
  $("#an-view").addEventListener("change", renderAnalytics);
  $("#an-range").addEventListener("change", renderAnalytics);
  $("#an-models-only").addEventListener("change", renderAnalytics);
  $("#an-refresh").addEventListener("click", renderAnalytics);
  $("#an-export").addEventListener("click", exportAll);
  $("#an-clear").addEventListener("click", async () => {
    if (!(await confirmDialog("Clear local events", "Delete this browser's analytics events? Saved chats stay.", "Delete"))) return;
    store.clearEvents();
    renderAnalytics();
  });
}

let generation = 0; // only the latest render may fill the tab (a slow server answer must not overwrite a newer one)

export async function renderAnalytics() {
  const server = $("#an-view").value === "server";
  $("#an-range-label").hidden = !server;
  $("#an-models-label").hidden = !server;
  if (server) await renderServer();
  else renderLocal();
}

const card = (title, ...content) => h("section", { class: "card" }, h("h3", {}, title), ...content);
const wideCard = (title, ...content) => h("section", { class: "card span2" }, h("h3", {}, title), ...content);
const stat = (label, value) => h("div", { class: "stat" }, h("div", { class: "value" }, value), h("div", { class: "label muted small" }, label));
const avg = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);

/** Rows of the by-model table from events: Model, Turns, OK, Avg latency, Prompt Σ, Reply Σ. */
function byModel(events) {
  const groups = new Map();
  for (const e of events) {
    if (!e.model) continue;
    const g = groups.get(e.model) || { turns: 0, ok: 0, times: [], prompt: 0, reply: 0 };
    g.turns++;
    if (e.ok) g.ok++;
    if (typeof e.timeline?.total === "number") g.times.push(e.timeline.total);
    g.prompt += e.promptTokens || 0;
    g.reply += e.outputTokens || 0;
    groups.set(e.model, g);
  }
  return [...groups].sort((a, b) => b[1].turns - a[1].turns)
    .map(([model, g]) => ({ model, turns: g.turns, ok: g.ok, avg_ms: avg(g.times), prompt_tokens: g.prompt, output_tokens: g.reply }));
}

function modelTable(rows, percentiles = false) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing yet.");
  const cols = ["Model", "Turns", "OK", "Avg latency", ...(percentiles ? ["p50", "p95"] : []), "Prompt Σ", "Reply Σ"];
  return h("div", { class: "scroll-x" }, table(cols, rows.map((r) => [
    h("td", { class: "mono" }, r.model), fmtNum(r.turns), fmtNum(r.ok), fmtMs(r.avg_ms),
    ...(percentiles ? [fmtMs(r.p50_ms), fmtMs(r.p95_ms)] : []), fmtNum(r.prompt_tokens), fmtNum(r.output_tokens),
  ]), { class: "by-model", "aria-label": "By model" }));
}

function statusCounts(counts) {
  const entries = Object.entries(counts).sort();
  if (!entries.length) return h("p", { class: "muted" }, "Nothing yet.");
  return h("ul", { class: "statuses" }, entries.map(([code, n]) =>
    h("li", { class: `status c${String(code)[0]}` }, h("b", {}, code), ` × ${fmtNum(n)}`)));
}

function renderLocal() {
  generation++;
  const events = store.events();
  const chats = store.chats();
  const usage = store.usage();
  const recent = events.slice(-200);
  const statuses = {};
  for (const e of recent) { const code = e.status || (e.stopped ? "stopped" : "network"); statuses[code] = (statuses[code] || 0) + 1; }
  const turns = events.filter((e) => e.kind === "chat");
  const errors = events.filter((e) => !e.ok && !e.stopped).slice(-5).reverse();
  const chart = h("div", { class: "chart", "aria-label": "Latency of recent events" });
  const storage = h("div", {},
    h("p", {}, `${fmtBytes(usage.total)} in localStorage: chats ${fmtBytes(usage.chats)}, events ${fmtBytes(usage.events)}, settings ${fmtBytes(usage.settings)}.`));
  fill($("#an-note"), `Recorded in this browser (device ${store.deviceId()}). ${events.length} events kept (at most 500).`);
  const profile = clientProfile();
  fill($("#an-body"),
    h("div", { class: "cards" },
      card("Chat usage (recorded in this browser)", h("div", { class: "stats" },
        stat("chat turns", fmtNum(turns.length)), stat("generate turns", fmtNum(events.length - turns.length)),
        stat("prompt tokens", fmtNum(events.reduce((a, e) => a + (e.promptTokens || 0), 0))),
        stat("reply tokens", fmtNum(events.reduce((a, e) => a + (e.outputTokens || 0), 0))),
        stat("avg latency", fmtMs(avg(events.map((e) => e.timeline?.total).filter((x) => typeof x === "number")))),
        stat("errors", fmtNum(events.filter((e) => !e.ok && !e.stopped).length)))),
      card("Latency (recent events)", chart),
      wideCard("By model", modelTable(byModel(events))),
      card("HTTP status (recent events)", statusCounts(statuses)),
      card("Saved chat sessions (localStorage)", h("p", {}, `${chats.length} chats, ${fmtNum(chats.reduce((a, c) => a + c.messages.length, 0))} messages.`),
        h("ul", { class: "small" }, chats.slice(0, 5).map((c) => h("li", {}, `${c.title} (${c.messages.length})`)))),
      card("Estimated playground storage", storage),
      card("Recent errors", errors.length ? h("ul", { class: "small errors" }, errors.map((e) =>
        h("li", {}, h("span", { class: "muted" }, `${fmtDateTime(e.ts)} · ${e.model || "—"} · `), e.error))) : h("p", { class: "muted" }, "None.")),
      card("This browser (export includes this)", h("dl", { class: "facts small" },
        [["Device ID", store.deviceId()], ["User agent", profile.userAgent], ["Screen", profile.screen], ["Timezone", profile.timezone],
          ["Language", profile.language]].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])))),
    h("h3", {}, "Event log (latest 50)"),
    h("p", { class: "small muted" }, "Timeline columns come from the server's timing headers and its corral_timing stream marker; hover a column for its meaning. Show input / output expands a turn."),
    eventTable(events, { label: "Event log" }));
  latencyChart(chart, events.slice(-50).map((e) => ({ ts: e.ts, total: e.timeline?.total, first: e.timeline?.streamUp })));
  if (navigator.storage?.estimate) {
    navigator.storage.estimate().then((est) => {
      storage.append(h("p", { class: "small muted" }, `This origin uses ${fmtBytes(est.usage)} of a ${fmtBytes(est.quota)} quota (all storage kinds).`));
    }).catch(() => {});
  }
}

async function renderServer() {
  const body = $("#an-body");
  if (!isConnected()) {
    fill($("#an-note"), "");
    fill(body, h("p", { class: "muted" }, "Not connected: the server's view needs a connection (and a key, where the server asks for one)."));
    return;
  }
  const range = $("#an-range").value;
  const mine = ++generation;
  fill($("#an-note"), isAdmin() ? `Every client's requests, from the server's request log, ${$("#an-range").selectedOptions[0].text}.`
    : `Only this key's requests (a user key reads its own rows; an admin key sees every client), ${$("#an-range").selectedOptions[0].text}.`);
  if (!body.querySelector("table.events")) fill(body, h("p", { class: "muted" }, "Loading the server's request log…"));
  let stats;
  let requests;
  try {
    [stats, requests] = await Promise.all([
      json(`/api/admin/stats?since=${encodeURIComponent(range)}`),
      json(`/api/admin/requests?since=${encodeURIComponent(range)}&limit=500`),
    ]);
  } catch (e) {
    if (mine !== generation) return;
    fill(body, h("p", { class: "error" }, e.status === 404 ? "This server has no request log (not a Corral server, or its gateway is off)." : e.message));
    return;
  }
  if (mine !== generation) return;
  lastServer = { range, fetchedAt: new Date().toISOString(), stats, requests: requests.requests };
  const rows = requests.requests.map(fromRequestRow).reverse(); // oldest first, as the browser's events
  const inference = rows.filter((r) => r.model);
  const shown = $("#an-models-only").checked ? inference : rows;
  const chart = h("div", { class: "chart", "aria-label": "Latency of recent requests" });
  const beacons = stats.beacons || { total: 0, errors: 0, by_event: {} };
  const keys = new Set(rows.map((r) => r.server.key || "(no key)"));
  const clients = new Set(rows.map((r) => r.server.client).filter(Boolean));
  fill(body,
    h("div", { class: "cards" },
      card("Server usage", h("div", { class: "stats" },
        stat("requests", fmtNum(stats.requests)), stat("with a model", fmtNum(stats.models.reduce((a, m) => a + m.turns, 0))),
        stat("keys", fmtNum(keys.size)), stat("clients", fmtNum(clients.size)),
        stat("playground beacons", fmtNum(beacons.total)), stat("beacon errors", fmtNum(beacons.errors)))),
      card("Latency (recent requests with a model)", chart),
      wideCard("By model", modelTable(stats.models, true)),
      card("HTTP status", statusCounts(stats.statuses)),
      card("Playground beacons", Object.keys(beacons.by_event || {}).length
        ? h("ul", { class: "small" }, Object.entries(beacons.by_event).map(([ev, n]) => h("li", {}, `${ev} × ${n}`)))
        : h("p", { class: "muted" }, "None in this range."))),
    h("h3", {}, "Request log (latest 50)"),
    h("p", { class: "small muted" }, `${fmtNum(rows.length)} rows loaded, ${fmtNum(shown.length)} shown; phases as the ` +
      "gateway measured them. Show details names the key and the client."),
    eventTable(shown, { label: "Server request log" }));
  latencyChart(chart, inference.slice(-100).map((r) => ({ ts: r.ts, total: r.timeline.total, first: r.timeline.streamUp })),
    { firstLabel: "ttft" });
}

function exportAll() {
  const data = {
    format: "corral-playground-export",
    version: 1,
    exportedAt: new Date().toISOString(),
    deviceId: store.deviceId(),
    server: conn.url,
    clientProfile: clientProfile(),
    storage: store.usage(),
    events: store.events(),
    chats: chatExport().chats,
    serverView: lastServer,
  };
  downloadJSON(`corral-playground-${new Date().toISOString().slice(0, 10)}.json`, data);
  toast("Exported");
}
