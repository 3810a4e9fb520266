// store.js: everything the page keeps in this browser (localStorage, under "corral.playground.").
// Owns: the device ID (a random UUID made once), settings, the saved chats (one list per device ID),
// the local analytics event log (newest last, capped), and what they weigh. Nothing here is sent
// anywhere; telemetry.js decides what goes to the server.

const PREFIX = "corral.playground.";
const MAX_EVENTS = 500;

function read(name, fallback) {
  try {
    const raw = localStorage.getItem(PREFIX + name);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function write(name, value) {
  try {
    localStorage.setItem(PREFIX + name, JSON.stringify(value));
    return true;
  } catch (e) {
    console.warn("localStorage is full or disabled:", e.message);
    return false;
  }
}

function uuid() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export const store = {
  get: (name) => read(name, null),
  set: (name, value) => write(name, value),
  uuid,

  deviceId() {
    let id = read("deviceId", null);
    if (!id) {
      id = uuid();
      write("deviceId", id);
    }
    return id;
  },

  // ---- chats: [{id, title, created, updated, model, system, temperature, maxTokens, messages: [...]}]
  chats() {
    return read(`chats.${this.deviceId()}`, []);
  },
  saveChats(chats) {
    return write(`chats.${this.deviceId()}`, chats);
  },
  saveChat(chat) {
    const chats = this.chats();
    const i = chats.findIndex((c) => c.id === chat.id);
    chat.updated = Date.now();
    if (i >= 0) chats[i] = chat; else chats.unshift(chat);
    return this.saveChats(chats);
  },
  deleteChat(id) {
    this.saveChats(this.chats().filter((c) => c.id !== id));
  },

  // ---- analytics events (see telemetry.js for their shape)
  events() {
    return read(`events.${this.deviceId()}`, []);
  },
  addEvent(event) {
    const events = this.events();
    events.push(event);
    while (events.length > MAX_EVENTS) events.shift();
    if (!write(`events.${this.deviceId()}`, events)) {
      // Storage full: drop the older half and try once more.
      write(`events.${this.deviceId()}`, events.slice(events.length >> 1));
    }
  },
  clearEvents() {
    write(`events.${this.deviceId()}`, []);
  },

  /** Bytes this page keeps in localStorage (UTF-16: two bytes a character), by kind. */
  usage() {
    const out = { chats: 0, events: 0, settings: 0, total: 0 };
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (!key.startsWith(PREFIX)) continue;
      const size = (key.length + (localStorage.getItem(key) || "").length) * 2;
      const kind = key.startsWith(PREFIX + "chats.") ? "chats" : key.startsWith(PREFIX + "events.") ? "events" : "settings";
      out[kind] += size;
      out.total += size;
    }
    return out;
  },
};
