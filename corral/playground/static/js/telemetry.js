// telemetry.js: what one chat or generate turn cost, recorded here and sent to the server as a beacon.
// Owns: the turn timer (client-side marks: request sent, headers, first token, last byte), the
// timeline a turn ends with (merged from the client's marks, the Server-Timing / X-SDL-Proxy-Timing
// headers and the corral_timing stream marker), the local event log entry, the clientProfile, and
// the beacon to POST /api/playground/analytics (sent with the same key as every API call).

import { call, conn } from "./conn.js";
import { store } from "./store.js";

const TEXT_CAP = 4000;

export function clientProfile() {
  return {
    userAgent: navigator.userAgent,
    screen: `${screen.width}x${screen.height}@${window.devicePixelRatio || 1}`,
    timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    language: navigator.language,
  };
}

/** Start timing a turn: call .headers(callResult) when the response starts, .chunk() per streamed item. */
export function startTurn(kind, model, input) {
  return {
    kind, model, input, ts: Date.now(), t0: performance.now(),
    tHeaders: null, tFirst: null, tLast: null, status: 0, serverTiming: null, proxyTiming: null,
    headers(result) {
      this.t0 = result.t0;
      this.tHeaders = result.tHeaders;
      this.status = result.res.status;
      this.serverTiming = result.serverTiming;
      this.proxyTiming = result.proxyTiming;
    },
    chunk() {
      const now = performance.now();
      if (this.tFirst === null) this.tFirst = now;
      this.tLast = now;
    },
  };
}

const sum = (...xs) => (xs.some((x) => typeof x === "number") ? xs.reduce((a, x) => a + (typeof x === "number" ? x : 0), 0) : null);

/**
 * The timeline columns of the event log, in milliseconds:
 *   proxy     the gateway's share before the model ran: auth + queue (X-SDL-Proxy-Timing header);
 *   streamUp  client time until the first streamed token arrived (Stream↑);
 *   output    generation time (the marker's "generation"; else the client's first-to-last token);
 *   total     the whole turn as the browser saw it;
 *   clientIo  total minus the server's own total: network and browser time (Client I/O).
 */
export function timeline(turn, marker) {
  const end = turn.tLast ?? turn.tHeaders ?? performance.now();
  const total = end - turn.t0;
  const header = turn.proxyTiming || turn.serverTiming || {};
  const m = marker || {};
  const serverTotal = m.total ?? null;
  return {
    proxy: sum(header.auth, header.queue) ?? sum(m.auth, m.queue),
    streamUp: turn.tFirst !== null ? turn.tFirst - turn.t0 : null,
    output: m.generation ?? (turn.tFirst !== null ? turn.tLast - turn.tFirst : null),
    total,
    clientIo: serverTotal !== null ? Math.max(0, total - serverTotal) : null,
    server: { ...header, ...m },
  };
}

/**
 * Finish a turn: store its event locally and send the beacon. `done` is the final stream object (or
 * null); `outcome` is {ok, error, stopped, output}. Returns the stored event.
 */
export function finishTurn(turn, done, outcome) {
  const marker = done?.corral_timing || null;
  const times = timeline(turn, marker);
  const event = {
    id: store.uuid(),
    ts: turn.ts,
    kind: turn.kind,
    model: turn.model,
    ok: Boolean(outcome.ok),
    stopped: Boolean(outcome.stopped),
    status: turn.status,
    error: outcome.error || null,
    promptTokens: done?.prompt_eval_count ?? null,
    outputTokens: done?.eval_count ?? null,
    timeline: times,
    headers: { serverTiming: Boolean(turn.serverTiming), proxyTiming: Boolean(turn.proxyTiming), marker: Boolean(marker) },
    input: String(turn.input || "").slice(0, TEXT_CAP),
    output: String(outcome.output || "").slice(0, TEXT_CAP),
    serverUrl: conn.url,
  };
  store.addEvent(event);
  sendBeacon(event);
  return event;
}

function sendBeacon(event) {
  const t = event.timeline;
  const timings = {};
  for (const [name, value] of Object.entries({ proxy: t.proxy, stream_up: t.streamUp, output: t.output, total: t.total,
    client_io: t.clientIo, ...Object.fromEntries(Object.entries(t.server).map(([k, v]) => [`server_${k}`, v])) })) {
    if (typeof value === "number" && Number.isFinite(value)) timings[name] = Math.round(value * 10) / 10;
  }
  const body = {
    event: `${event.kind}_turn`,
    model: event.model,
    status: event.status || undefined,
    error: event.error || undefined,
    timings,
    stopped: event.stopped,
    prompt_tokens: event.promptTokens ?? undefined,
    output_tokens: event.outputTokens ?? undefined,
    deviceId: store.deviceId(),
    clientProfile: clientProfile(),
  };
  // keepalive: the beacon survives the page being closed right after a turn.
  call("/api/playground/analytics", { method: "POST", body, keepalive: true })
    .then(({ res }) => { if (!res.ok && res.status !== 404) console.warn(`analytics beacon refused: HTTP ${res.status}`); })
    .catch(() => {});
}
