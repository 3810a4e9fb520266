// environment.js: the Environment tab: a live probe of the server and what this browser knows.
// Owns: Refresh, which times /api/version, /api/tags, /api/ps and a few round trips, reports which
// timing headers come back and whether CORS lets this page read them, and the key's scope; and the
// browser side: storage used, device ID, user agent, language, timezone, screen, secure context.

import { call, conn, statusText } from "./conn.js";
import { store } from "./store.js";
import { clientProfile } from "./telemetry.js";
import { $, fill, fmtBytes, fmtMs, h, table } from "./ui.js";

const HEADERS = ["Server-Timing", "X-SDL-Proxy-Timing", "X-Request-Id"];

export function initEnvironment() {
  $("#env-refresh").addEventListener("click", probe);
}

async function timed(path) {
  const t0 = performance.now();
  try {
    const result = await call(path);
    const text = await result.res.text();
    let body = null;
    try { body = JSON.parse(text); } catch { body = text; }
    return { ok: result.res.ok, status: result.res.status, ms: performance.now() - t0, body, res: result.res };
  } catch (e) {
    return { ok: false, status: 0, ms: performance.now() - t0, error: e.message };
  }
}

const row = (label, value, note = "") => [h("th", { scope: "row" }, label), h("td", {}, value), h("td", { class: "muted small" }, note)];
const outcome = (r, text) => (r.ok ? text : h("span", { class: "error" }, r.error || `HTTP ${r.status}`));

export async function probe() {
  const body = $("#env-body");
  fill(body, h("p", { class: "muted" }, "Probing…"));
  const sameOrigin = new URL(conn.url).origin === location.origin;
  const version = await timed("/api/version");
  const tags = await timed("/api/tags");
  const ps = await timed("/api/ps");
  const trips = [];
  for (let i = 0; i < 5; i++) trips.push((await timed("/api/version")).ms);
  trips.sort((a, b) => a - b);
  const headerRows = HEADERS.map((name) => {
    const value = tags.res?.headers.get(name);
    const note = value ? (sameOrigin ? "same origin: every header is readable" : "exposed by CORS (Access-Control-Expose-Headers)")
      : sameOrigin ? "not sent by this server" : "not readable: not sent, or CORS does not expose it";
    return row(name, value ? h("code", {}, value) : h("span", { class: "muted" }, "absent"), note);
  });
  const usage = store.usage();
  let estimate = null;
  try { estimate = navigator.storage?.estimate ? await navigator.storage.estimate() : null; } catch { estimate = null; }
  const profile = clientProfile();
  const models = Array.isArray(tags.body?.models) ? tags.body.models : [];
  const running = Array.isArray(ps.body?.models) ? ps.body.models : [];
  fill(body,
    h("h3", {}, "Server"),
    table(["", "", ""], [
      row("URL", h("code", {}, conn.url), sameOrigin ? "this page's own origin" : `cross-origin from ${location.origin}`),
      row("Connection", statusText(), conn.message || ""),
      row("Version", outcome(version, version.body?.version ?? "?"), fmtMs(version.ms)),
      row("Models (/api/tags)", outcome(tags, `${models.length}: ${models.map((m) => m.name).join(", ") || "none"}`), fmtMs(tags.ms)),
      row("Loaded (/api/ps)", outcome(ps, `${running.length}${running.length ? `: ${running.map((m) => m.name).join(", ")}` : ""}`), fmtMs(ps.ms)),
      row("Round trip (5 × /api/version)", `min ${fmtMs(trips[0])} · median ${fmtMs(trips[2])} · max ${fmtMs(trips[4])}`, "browser to server and back"),
    ], { class: "env", "aria-label": "Server probe" }),
    h("h3", {}, "Timing headers"),
    table(["", "", ""], headerRows, { class: "env", "aria-label": "Timing headers" }),
    h("p", { class: "small muted" }, "The corral_timing stream marker comes in the last object of /api/generate and /api/chat; the Analytics event log shows it per turn."),
    h("h3", {}, "This browser"),
    table(["", "", ""], [
      row("Device ID", h("code", {}, store.deviceId()), "random, made once; keys the saved chats"),
      row("Storage used", `${fmtBytes(usage.total)} in localStorage`, `chats ${fmtBytes(usage.chats)}, events ${fmtBytes(usage.events)}`),
      row("Origin storage", estimate ? `${fmtBytes(estimate.usage)} of ${fmtBytes(estimate.quota)}` : "unknown", "navigator.storage.estimate()"),
      row("User agent", profile.userAgent),
      row("Language", profile.language), row("Timezone", profile.timezone), row("Screen", profile.screen),
      row("Secure context", String(window.isSecureContext), window.isSecureContext ? "" : "clipboard and some APIs are limited on plain HTTP"),
      row("Online", String(navigator.onLine)),
    ], { class: "env", "aria-label": "This browser" }));
  for (const t of body.querySelectorAll("table.env thead")) t.remove();
}
