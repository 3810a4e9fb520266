// main.js: the page's entry point.
// Owns: the connection bar (server URL, API key, Show/Hide, Connect; the status pill and the banner
// that explains a refused key or an unreachable server), the tabs (ARIA tabs: arrow keys, Home/End,
// the URL hash remembers the open one), and starting each tab's module, loading a tab's data the
// first time it is opened and again after every (re)connection.

import { initAnalytics, renderAnalytics } from "./analytics.js";
import { initApiRef, loadApiRef } from "./apiref.js";
import { catalog } from "./catalog.js";
import { initChat } from "./chat.js";
import { conn, connect, loadSettings, onConnChange, saveSettings, statusText } from "./conn.js";
import { initEmbeddings } from "./embeddings.js";
import { initEnvironment } from "./environment.js";
import { initGenerate } from "./generate.js";
import { initModels, refreshModels } from "./modelstab.js";
import { $, $$, toast } from "./ui.js";

const TABS = ["chat", "generate", "embeddings", "models", "api", "analytics", "environment"];
const loaded = new Set(); // tabs whose data was loaded since the last connection

const onOpen = {
  models: refreshModels,
  api: loadApiRef,
  analytics: renderAnalytics,
};

function selectTab(name, focus = false) {
  if (!TABS.includes(name)) name = "chat";
  for (const t of TABS) {
    const tab = $(`#tab-${t}`);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${t}`).hidden = !on;
  }
  if (focus) $(`#tab-${name}`).focus();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  // The API reference needs no connection (the document is open); the rest wait for one.
  if (onOpen[name] && !loaded.has(name) && (name === "api" || conn.state !== "checking")) {
    loaded.add(name);
    onOpen[name]();
  } else if (name === "analytics") {
    renderAnalytics();
  }
}

function initTabs() {
  const list = $(".tabs");
  for (const t of TABS) $(`#tab-${t}`).addEventListener("click", () => selectTab(t));
  list.addEventListener("keydown", (e) => {
    const i = TABS.indexOf(document.activeElement?.id?.replace("tab-", ""));
    if (i < 0) return;
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    selectTab(TABS[(next + TABS.length) % TABS.length], true);
  });
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
}

function initConnectionBar() {
  const url = $("#conn-url");
  const key = $("#conn-key");
  url.value = conn.url;
  key.value = conn.key;
  $("#conn-reveal").addEventListener("click", (e) => {
    const show = key.type === "password";
    key.type = show ? "text" : "password";
    e.currentTarget.textContent = show ? "Hide" : "Show";
    e.currentTarget.setAttribute("aria-pressed", String(show));
  });
  $("#conn-form").addEventListener("submit", (e) => {
    e.preventDefault();
    try {
      if (url.value.trim()) new URL(url.value.trim());
    } catch {
      toast("The server URL is not a URL (http://host:port)", "error");
      url.focus();
      return;
    }
    saveSettings(url.value, key.value);
    url.value = conn.url;
    reconnect();
  });
  onConnChange(renderStatus);
}

function renderStatus() {
  const pill = $("#conn-status");
  pill.dataset.state = conn.state;
  pill.textContent = statusText();
  const banner = $("#conn-message");
  banner.hidden = !conn.message;
  banner.textContent = conn.message;
  banner.dataset.kind = conn.state === "refused" ? "key" : "network";
}

/** Connect, then load the model list and the open tab; <html data-ready> says when that is done. */
async function reconnect() {
  document.documentElement.dataset.ready = "false";
  await connect();
  loaded.clear();
  if (conn.state === "connected") {
    await catalog.refresh().catch((e) => toast(e.message, "error"));
  } else {
    catalog.clear();
  }
  selectTab(location.hash.slice(1) || "chat");
  document.documentElement.dataset.ready = "true";
}

function start() {
  loadSettings();
  initConnectionBar();
  initTabs();
  initChat();
  initGenerate();
  initEmbeddings();
  initModels();
  initApiRef();
  initAnalytics();
  initEnvironment();
  selectTab(location.hash.slice(1) || "chat");
  reconnect();
  $$(".tabs [role=tab]").forEach((t) => t.removeAttribute("disabled"));
}

start();
