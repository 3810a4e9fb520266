// chat.js: the Chat tab's conversation.
// Owns: the open chat (messages, model, system prompt, temperature, max tokens), sending a turn and
// rendering the streamed reply as sanitised Markdown (markdown.js) as it arrives, Stop, Regenerate,
// Copy, the latency/model line under the reply, and saving the chat after every turn (store.js).
// The saved-chats sidebar is chatlist.js.

import { catalog } from "./catalog.js";
import { initChatList, renderChatList } from "./chatlist.js";
import { conn } from "./conn.js";
import { runTurn } from "./inference.js";
import { renderInto } from "./markdown.js";
import { store } from "./store.js";
import { $, copyText, fill, fmtMs, fmtNum, h, toast } from "./ui.js";

let chat = null; // the open chat; null until the first message of a new one
let controller = null; // AbortController of the turn in flight

const el = {};

export function initChat() {
  Object.assign(el, {
    log: $("#chat-log"), form: $("#chat-form"), input: $("#chat-input"), send: $("#chat-send"), stop: $("#chat-stop"),
    model: $("#chat-model"), temperature: $("#chat-temperature"), maxTokens: $("#chat-max-tokens"),
    system: $("#chat-system"), last: $("#chat-last"),
  });
  catalog.picker(el.model, "text", "chat");
  el.form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  el.stop.addEventListener("click", stop);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && controller) stop(); });
  $("#chat-new").addEventListener("click", () => { if (!controller) openChat(null); el.input.focus(); });
  initChatList({
    open: (id) => { if (!controller) openChat(id); },
    deleted: (id) => { if (chat?.id === id) openChat(null); },
    renamed: (c) => { if (chat?.id === c.id) chat.title = c.title; },
    current: () => chat?.id ?? null,
  });
  const last = store.get("openChat");
  openChat(last && store.chats().some((c) => c.id === last) ? last : null);
}

function openChat(id) {
  chat = id ? store.chats().find((c) => c.id === id) || null : null;
  store.set("openChat", chat?.id ?? null);
  if (chat) {
    if (chat.model) {
      if (![...el.model.options].some((o) => o.value === chat.model)) el.model.append(h("option", { value: chat.model }, chat.model));
      el.model.value = chat.model;
    }
    el.system.value = chat.system || "";
    el.temperature.value = chat.temperature ?? 0.7;
    el.maxTokens.value = chat.maxTokens ?? 256;
  }
  renderLog();
  renderChatList();
  const lastReply = chat?.messages.filter((m) => m.role === "assistant").at(-1);
  showLast(lastReply?.meta);
}

function settings() {
  return {
    model: el.model.value,
    system: el.system.value.trim(),
    temperature: Number(el.temperature.value),
    maxTokens: Math.max(1, Math.round(Number(el.maxTokens.value) || 256)),
  };
}

function renderLog() {
  if (!chat || !chat.messages.length) {
    fill(el.log, h("div", { class: "empty muted" },
      h("p", {}, "Start a conversation: pick a model, type a message, press Enter."),
      h("p", { class: "small" }, "Replies are rendered as Markdown, sanitised: nothing a model writes can run in this page.")));
    return;
  }
  fill(el.log, chat.messages.map((m, i) => messageView(m, i)));
  el.log.scrollTop = el.log.scrollHeight;
}

function messageView(m, i) {
  const body = h("div", { class: "content" });
  if (m.role === "assistant") renderInto(body, m.content);
  else body.textContent = m.content;
  const isLast = i === chat.messages.length - 1;
  const actions = h("div", { class: "msg-actions" },
    h("button", { type: "button", class: "small", onclick: () => copyText(m.content) }, "Copy"),
    m.role === "assistant" && isLast ? h("button", { type: "button", class: "small", onclick: regenerate }, "Regenerate") : null);
  return h("article", { class: `msg msg-${m.role}`, dataset: { index: i } },
    h("div", { class: "who" }, m.role === "user" ? "You" : m.meta?.model || "Assistant"),
    body, m.meta ? metaLine(m.meta) : null, actions);
}

function metaLine(meta) {
  const parts = [`Latency: ${fmtMs(meta.latencyMs)}`, `Model: ${meta.model}`];
  if (meta.outputTokens !== null && meta.outputTokens !== undefined) parts.push(`${fmtNum(meta.outputTokens)} tokens`);
  if (meta.stopped) parts.push("stopped");
  return h("div", { class: `meta small${meta.error ? " error" : ""}` }, meta.error ? `Error: ${meta.error}` : parts.join(" · "));
}

function showLast(meta) {
  fill(el.last, meta ? `Last request: Latency: ${fmtMs(meta.latencyMs)} · Model: ${meta.model}${meta.stopped ? " · stopped" : ""}`
    : "Last request: Latency: — · Model: —");
}

function busy(on) {
  el.send.hidden = on;
  el.stop.hidden = !on;
  el.input.disabled = false;
  if (!on) el.input.focus();
}

async function send() {
  if (controller) return;
  const text = el.input.value.trim();
  if (!text) return;
  const s = settings();
  if (!s.model) {
    toast(conn.state === "connected" ? "No model to chat with: pull one in the Models tab" : "Not connected", "error");
    return;
  }
  if (!chat) {
    chat = { id: store.uuid(), title: text.slice(0, 48), created: Date.now(), updated: Date.now(), messages: [] };
  }
  Object.assign(chat, s);
  chat.messages.push({ role: "user", content: text, ts: Date.now() });
  el.input.value = "";
  store.saveChat(chat);
  store.set("openChat", chat.id);
  renderChatList();
  await reply();
}

function regenerate() {
  if (controller || !chat) return;
  if (chat.messages.at(-1)?.role === "assistant") chat.messages.pop();
  Object.assign(chat, settings());
  reply();
}

function stop() {
  controller?.abort();
}

async function reply() {
  const s = settings();
  const history = chat.messages.map((m) => ({ role: m.role, content: m.content }));
  const messages = s.system ? [{ role: "system", content: s.system }, ...history] : history;
  const pending = { role: "assistant", content: "", ts: Date.now() };
  chat.messages.push(pending);
  renderLog();
  const view = el.log.lastElementChild;
  const content = view.querySelector(".content");
  view.classList.add("streaming");
  content.replaceChildren(h("span", { class: "typing muted" }, "…"));
  controller = new AbortController();
  busy(true);
  let frame = 0;
  let latest = "";
  const result = await runTurn("chat", {
    model: s.model, messages, options: { temperature: s.temperature, num_predict: s.maxTokens },
  }, {
    input: history.at(-1)?.content ?? "",
    signal: controller.signal,
    onPiece: (text) => {
      latest = text;
      if (!frame) {
        frame = requestAnimationFrame(() => {
          frame = 0;
          renderInto(content, latest);
          el.log.scrollTop = el.log.scrollHeight;
        });
      }
    },
  });
  cancelAnimationFrame(frame);
  controller = null;
  pending.content = result.text;
  pending.meta = {
    latencyMs: result.event.timeline.total, model: s.model, stopped: result.stopped, error: result.error,
    outputTokens: result.done?.eval_count ?? null, promptTokens: result.done?.prompt_eval_count ?? null,
  };
  if (!result.text && result.error) pending.content = "";
  store.saveChat(chat);
  renderLog();
  renderChatList();
  showLast(pending.meta);
  busy(false);
  if (result.error) toast(result.error, "error");
}

/** Is a turn streaming now? (the header's connection changes wait for it) */
export const chatBusy = () => controller !== null;
