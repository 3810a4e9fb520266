// chatlist.js: the saved-chats sidebar of the Chat tab.
// Owns: listing the chats saved for this device ID (newest first), open / rename / delete, and
// export and import of all chats as one JSON file ({format: "corral-playground-chats", chats}).
// chat.js owns the open conversation; this module calls back into it through the handlers it is given.

import { store } from "./store.js";
import { $, confirmDialog, downloadJSON, fill, fmtDateTime, h, pickJSON, promptDialog, toast } from "./ui.js";

export const EXPORT_FORMAT = "corral-playground-chats";

let handlers = { open: () => {}, deleted: () => {}, current: () => null };

export function initChatList(h_) {
  handlers = h_;
  $("#chat-device").textContent = store.deviceId();
  $("#chat-export").addEventListener("click", exportChats);
  $("#chat-import").addEventListener("click", importChats);
  renderChatList();
}

export function renderChatList() {
  const list = $("#chat-sessions");
  const current = handlers.current();
  const chats = store.chats().sort((a, b) => (b.updated || 0) - (a.updated || 0));
  if (!chats.length) {
    fill(list, h("li", { class: "muted small" }, "No saved chats yet."));
    return;
  }
  fill(list, chats.map((chat) => h("li", { class: chat.id === current ? "active" : "", dataset: { id: chat.id } },
    h("button", { type: "button", class: "open", onclick: () => handlers.open(chat.id),
      "aria-current": chat.id === current ? "true" : null },
      h("span", { class: "title" }, chat.title || "Untitled"),
      h("span", { class: "muted small" }, `${chat.messages.length} messages · ${fmtDateTime(chat.updated || chat.created)}`)),
    h("button", { type: "button", class: "icon", title: "Rename", "aria-label": `Rename “${chat.title}”`,
      onclick: () => rename(chat.id) }, "✎"),
    h("button", { type: "button", class: "icon", title: "Delete", "aria-label": `Delete “${chat.title}”`,
      onclick: () => remove(chat.id) }, "✕"))));
}

async function rename(id) {
  const chat = store.chats().find((c) => c.id === id);
  if (!chat) return;
  const title = await promptDialog("Rename chat", "Title", chat.title);
  if (!title) return;
  chat.title = title;
  store.saveChat(chat);
  handlers.renamed?.(chat);
  renderChatList();
}

async function remove(id) {
  const chat = store.chats().find((c) => c.id === id);
  if (!chat || !(await confirmDialog("Delete chat", `Delete “${chat.title}” and its ${chat.messages.length} messages?`))) return;
  store.deleteChat(id);
  handlers.deleted(id);
  renderChatList();
  toast("Chat deleted");
}

export function exportData() {
  return { format: EXPORT_FORMAT, version: 1, deviceId: store.deviceId(), exportedAt: new Date().toISOString(), chats: store.chats() };
}

function exportChats() {
  downloadJSON(`corral-chats-${new Date().toISOString().slice(0, 10)}.json`, exportData());
}

async function importChats() {
  let data;
  try {
    data = await pickJSON();
  } catch (e) {
    toast(`Not a JSON file: ${e.message}`, "error");
    return;
  }
  const incoming = Array.isArray(data) ? data : data?.chats;
  if (!Array.isArray(incoming)) {
    toast("No chats in that file (expected an export from this page)", "error");
    return;
  }
  const chats = store.chats();
  const ids = new Set(chats.map((c) => c.id));
  let added = 0;
  for (const chat of incoming) {
    if (!chat || !Array.isArray(chat.messages)) continue;
    const copy = { ...chat, id: ids.has(chat.id) || !chat.id ? store.uuid() : chat.id, title: String(chat.title || "Imported chat") };
    copy.messages = copy.messages.filter((m) => m && typeof m.content === "string" && ["user", "assistant", "system"].includes(m.role));
    chats.unshift(copy);
    ids.add(copy.id);
    added++;
  }
  store.saveChats(chats);
  renderChatList();
  toast(`Imported ${added} chat${added === 1 ? "" : "s"}`);
}
