// conn.js: the connection to a Corral (or Ollama) server, and every HTTP call the page makes.
// Owns: the server URL and API key (localStorage, sent as "Authorization: Bearer"), the connection
// state shown in the header (connected / not connected / key refused, and the key's scope from
// /api/whoami), call() with client-side timing and the server's timing headers, readable error
// messages for each API family's error shape, and line readers for NDJSON and SSE streams.

import { store } from "./store.js";

const URL_KEY = "serverUrl";
const KEY_KEY = "apiKey";

const listeners = new Set();

export const conn = {
  url: "",
  key: "",
  /** "checking" | "connected" | "unreachable" | "refused" */
  state: "checking",
  /** {key, scope, auth} from /api/whoami, or null */
  who: null,
  version: null,
  message: "",
};

export function loadSettings() {
  conn.url = normaliseUrl(store.get(URL_KEY) || location.origin);
  conn.key = store.get(KEY_KEY) || "";
}

export function saveSettings(url, key) {
  conn.url = normaliseUrl(url || location.origin);
  conn.key = (key || "").trim();
  store.set(URL_KEY, conn.url === location.origin ? "" : conn.url);
  store.set(KEY_KEY, conn.key);
}

function normaliseUrl(url) {
  return String(url).trim().replace(/\/+$/, "");
}

export function onConnChange(fn) { listeners.add(fn); }

function emit() { for (const fn of listeners) fn(conn); }

export const isAdmin = () => conn.state === "connected" && conn.who?.scope === "admin";
export const isConnected = () => conn.state === "connected";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** The message inside any of the server's error shapes (Ollama, OpenAI, Anthropic, registry). */
export function errorText(body, fallback) {
  if (!body || typeof body !== "object") return fallback;
  if (typeof body.error === "string") return body.error;
  if (body.error && typeof body.error.message === "string") return body.error.message;
  if (Array.isArray(body.errors) && body.errors[0]?.message) return body.errors[0].message;
  return fallback;
}

export function authHeaders() {
  return conn.key ? { Authorization: `Bearer ${conn.key}` } : {};
}

/** "auth;dur=0.1, queue;dur=0.3" -> {auth: 0.1, queue: 0.3} (null when the header is absent). */
export function parseServerTiming(value) {
  if (!value) return null;
  const out = {};
  for (const part of value.split(",")) {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && dur) out[name.trim()] = Number(dur.slice(4));
  }
  return out;
}

/**
 * One HTTP call to the server. Returns {res, t0, tHeaders, serverTiming, proxyTiming}; the body is left
 * to the caller. Throws ApiError on a network failure (status 0) with a message that says what to check.
 */
export async function call(path, { method = "GET", body, signal, headers = {}, raw = false, keepalive = false } = {}) {
  const init = { method, signal, keepalive, headers: { ...authHeaders(), ...headers } };
  if (body !== undefined) {
    init.body = raw ? body : JSON.stringify(body);
    if (!raw) init.headers["Content-Type"] = "application/json";
  }
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(conn.url + path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, unreachableText(), null);
  }
  return {
    res, t0, tHeaders: performance.now(),
    serverTiming: parseServerTiming(res.headers.get("Server-Timing")),
    proxyTiming: parseServerTiming(res.headers.get("X-SDL-Proxy-Timing")),
  };
}

function unreachableText() {
  const cross = conn.url !== location.origin;
  return `Cannot reach ${conn.url}: is the server running${cross ? ", and does it allow this page's origin " +
    `(${location.origin}) through CORS (corral serve --origins)` : ""}?`;
}

/** call() then the JSON body; a status >= 400 becomes an ApiError with the server's own message. */
export async function json(path, options = {}) {
  const { res } = await call(path, options);
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!res.ok) throw new ApiError(res.status, describeStatus(res.status, errorText(body, text || res.statusText)), body);
  return body;
}

/** A sentence for an HTTP error, with what to do about a key problem. */
export function describeStatus(status, message) {
  if (status === 401) {
    return conn.key ? `The server refused this API key (${message}). Check the key, or ask an operator for one ` +
      "(corral keys create NAME)." : `This server needs an API key (${message}). Enter it above.`;
  }
  if (status === 403) return `Not allowed with this key: ${message}`;
  if (status === 429) return `Rate limited: ${message}`;
  return `HTTP ${status}: ${message}`;
}

/** Yield each line of a streamed body as it arrives (NDJSON: one JSON object per line). */
export async function* lines(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        yield buf.slice(0, i).replace(/\r$/, "");
        buf = buf.slice(i + 1);
      }
    }
    buf += decoder.decode();
    if (buf) yield buf;
  } finally {
    reader.releaseLock();
  }
}

/** Yield each server-sent event as {event, data} (data lines joined). */
export async function* sseEvents(res) {
  let event = "message";
  let data = [];
  for await (const line of lines(res)) {
    if (line === "") {
      if (data.length) yield { event, data: data.join("\n") };
      event = "message";
      data = [];
    } else if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length) yield { event, data: data.join("\n") };
}

/** Probe the server and the key: /api/version (no key needed), then /api/whoami (the key's scope). */
export async function connect() {
  conn.state = "checking";
  conn.message = "";
  emit();
  try {
    conn.version = (await json("/api/version")).version;
  } catch (e) {
    conn.state = "unreachable";
    conn.who = null;
    conn.message = e.message;
    emit();
    return;
  }
  try {
    conn.who = await json("/api/whoami");
    conn.state = "connected";
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      conn.state = "refused";
      conn.who = null;
      conn.message = e.message;
    } else if (e.status === 404) {
      // Not a Corral (plain Ollama has no /api/whoami): connected, scope unknown.
      conn.state = "connected";
      conn.who = { key: null, scope: "admin", auth: false, unknown: true };
    } else {
      conn.state = "unreachable";
      conn.message = e.message;
    }
  }
  emit();
}

/** Words for the header's status pill. */
export function statusText() {
  switch (conn.state) {
    case "checking": return "connecting…";
    case "refused": return "not connected: key refused";
    case "unreachable": return "not connected";
    default: {
      const who = conn.who;
      if (!who || who.unknown) return "connected (not a Corral server: scope unknown)";
      if (!who.auth) return "connected · open server, no key needed (admin)";
      return `connected · ${who.scope} key “${who.key}”`;
    }
  }
}
