// modelstab.js: the Models tab: what is installed, what is loaded, and model management.
// Owns: the installed list (size, family, quantization, modified) with Details (/api/show), Copy
// and Delete (with confirmation); the loaded list (/api/ps) with expiry and Unload (keep_alive 0);
// Pull with a live progress bar from the streamed status objects, and Cancel. Copy, delete and pull
// need an admin key: without one they are disabled and the tab says why.

import { catalog } from "./catalog.js";
import { call, conn, describeStatus, errorText, isAdmin, json, lines } from "./conn.js";
import { $, confirmDialog, fill, fmtBytes, fmtDateTime, h, promptDialog, relTime, table, toast } from "./ui.js";

let pulling = null; // AbortController of the pull in flight

export function initModels() {
  $("#models-refresh").addEventListener("click", refreshModels);
  $("#pull-form").addEventListener("submit", (e) => { e.preventDefault(); pull(); });
  $("#pull-cancel").addEventListener("click", () => pulling?.abort());
  catalog.onChange(renderInstalled);
}

export async function refreshModels() {
  renderScope();
  if (conn.state !== "connected") {
    for (const box of [$("#models-list"), $("#ps-list")]) fill(box, h("p", { class: "muted" }, "Not connected."));
    return;
  }
  try {
    await catalog.refresh();
  } catch (e) {
    fill($("#models-list"), h("p", { class: "error" }, e.message));
  }
  await refreshPs();
}

function renderScope() {
  const note = $("#models-scope");
  const admin = isAdmin();
  note.hidden = admin;
  if (!admin) {
    note.textContent = conn.state === "connected"
      ? `This key has ${conn.who?.scope || "user"} scope: listing, details and unloading work; pull, copy and delete need an admin key.`
      : "Not connected.";
  }
  $("#pull-start").disabled = !admin;
}

function renderInstalled(models) {
  renderScope();
  const admin = isAdmin();
  if (!models.length) {
    fill($("#models-list"), h("p", { class: "muted" }, conn.state === "connected" ? "No models installed." : "Not connected."));
    return;
  }
  fill($("#models-list"), table(["Name", "Size", "Family", "Quantization", "Modified", ""], models.map((m) => [
    h("td", {}, h("b", {}, m.name), h("div", { class: "muted small mono" }, m.digest.slice(0, 12))),
    fmtBytes(m.size), m.details?.family || "—", m.details?.quantization_level || "—",
    h("td", { title: m.modified_at }, relTime(m.modified_at)),
    h("td", { class: "actions" },
      h("button", { type: "button", class: "small", onclick: () => details(m.name) }, "Details"),
      h("button", { type: "button", class: "small", disabled: !admin, onclick: () => copyModel(m.name) }, "Copy"),
      h("button", { type: "button", class: "small danger", disabled: !admin, onclick: () => deleteModel(m.name) }, "Delete")),
  ]), { class: "models", "aria-label": "Installed models" }));
}

export async function refreshPs() {
  const box = $("#ps-list");
  try {
    const running = (await json("/api/ps")).models || [];
    if (!running.length) {
      fill(box, h("p", { class: "muted" }, "No model is loaded."));
      return;
    }
    fill(box, table(["Name", "Memory", "Context", "Unloads", ""], running.map((m) => [
      h("b", {}, m.name), fmtBytes(m.size), String(m.context_length ?? "—"),
      h("td", { title: m.expires_at }, relTime(m.expires_at)),
      h("td", {}, h("button", { type: "button", class: "small", onclick: () => unload(m.name) }, "Unload")),
    ]), { "aria-label": "Loaded models" }));
  } catch (e) {
    fill(box, h("p", { class: "error" }, e.message));
  }
}

async function details(name) {
  const box = $("#model-details");
  fill($("#details-title"), `Details: ${name}`);
  fill(box, h("p", { class: "muted" }, "Loading…"));
  try {
    const info = await json("/api/show", { method: "POST", body: { model: name } });
    const d = info.details || {};
    const mi = info.model_info || {};
    const arch = mi["general.architecture"];
    const facts = [
      ["Family", d.family], ["Parameters", d.parameter_size], ["Quantization", d.quantization_level], ["Format", d.format],
      ["Capabilities", (info.capabilities || []).join(", ")], ["Context length", arch ? mi[`${arch}.context_length`] : null],
      ["Embedding length", arch ? mi[`${arch}.embedding_length`] : null], ["Modified", info.modified_at ? fmtDateTime(info.modified_at) : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    fill(box,
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      info.parameters ? h("details", {}, h("summary", {}, "Parameters"), h("pre", {}, info.parameters)) : null,
      info.system ? h("details", {}, h("summary", {}, "System prompt"), h("pre", {}, info.system)) : null,
      info.template ? h("details", {}, h("summary", {}, "Template"), h("pre", {}, info.template)) : null,
      h("details", {}, h("summary", {}, "Modelfile"), h("pre", {}, info.modelfile || "")),
      info.license ? h("details", {}, h("summary", {}, "License"), h("pre", {}, info.license)) : null);
  } catch (e) {
    fill(box, h("p", { class: "error" }, e.message));
  }
}

async function copyModel(source) {
  const destination = await promptDialog(`Copy ${source}`, "New name", `${source.split(":")[0]}-copy`, "Copy");
  if (!destination) return;
  try {
    await json("/api/copy", { method: "POST", body: { source, destination } });
    toast(`Copied ${source} to ${destination}`);
    await refreshModels();
  } catch (e) {
    toast(e.message, "error");
  }
}

async function deleteModel(name) {
  if (!(await confirmDialog("Delete model", `Delete ${name}? Its blobs are removed unless another model uses them.`))) return;
  try {
    await json("/api/delete", { method: "DELETE", body: { model: name } });
    toast(`Deleted ${name}`);
    await refreshModels();
  } catch (e) {
    toast(e.message, "error");
  }
}

async function unload(name) {
  try {
    await json("/api/generate", { method: "POST", body: { model: name, keep_alive: 0 } });
    toast(`Unloaded ${name}`);
  } catch (e) {
    toast(e.message, "error");
  }
  await refreshPs();
}

async function pull() {
  if (pulling) return;
  const name = $("#pull-name").value.trim();
  if (!name) { toast("Name a model to pull", "error"); return; }
  const bar = $("#pull-progress");
  const status = $("#pull-status");
  const log = $("#pull-log");
  $("#pull-box").hidden = false;
  bar.value = 0;
  bar.max = 1;
  bar.removeAttribute("data-done");
  fill(log);
  fill(status, `Pulling ${name}…`);
  $("#pull-start").hidden = true;
  $("#pull-cancel").hidden = false;
  pulling = new AbortController();
  let last = "";
  let outcome = "";
  try {
    const { res } = await call("/api/pull", { method: "POST", body: { model: name, insecure: $("#pull-insecure").checked, stream: true },
      signal: pulling.signal });
    if (!res.ok) {
      const text = await res.text();
      let parsed = null;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      throw new Error(describeStatus(res.status, errorText(parsed, text)));
    }
    for await (const line of lines(res)) {
      if (!line.trim()) continue;
      const ev = JSON.parse(line);
      if (ev.error) throw new Error(ev.error);
      if (ev.total) {
        bar.max = ev.total;
        bar.value = ev.completed || 0;
        fill(status, `${ev.status}: ${fmtBytes(ev.completed || 0)} of ${fmtBytes(ev.total)} (${Math.floor(100 * (ev.completed || 0) / ev.total)}%)`);
      } else {
        fill(status, ev.status);
      }
      if (ev.status !== last) {
        log.append(h("li", {}, ev.status));
        last = ev.status;
      }
      if (ev.status === "success") outcome = "success";
    }
    if (outcome === "success") {
      bar.max = 1;
      bar.value = 1;
      bar.dataset.done = "true";
      fill(status, `Pulled ${name}`);
      toast(`Pulled ${name}`);
    } else {
      throw new Error("the stream ended before success");
    }
  } catch (e) {
    fill(status, h("span", { class: "error" }, e.name === "AbortError" ? "Pull cancelled" : `Pull failed: ${e.message}`));
  } finally {
    pulling = null;
    $("#pull-start").hidden = false;
    $("#pull-cancel").hidden = true;
  }
  await refreshModels();
}
