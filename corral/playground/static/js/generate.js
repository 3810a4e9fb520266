// generate.js: the Generate tab: one prompt to /api/generate, streamed, with Stop.
// Owns: its form (model, temperature, max tokens, system, raw, Markdown or plain output), the live
// output, and the statistics line (latency, tokens, tokens per second). Recording and the beacon
// are inference.js's.

import { catalog } from "./catalog.js";
import { runTurn } from "./inference.js";
import { renderInto } from "./markdown.js";
import { $, fmtMs, fmtNum, toast } from "./ui.js";

let controller = null;

export function initGenerate() {
  const model = $("#gen-model");
  catalog.picker(model, "text", "generate");
  $("#gen-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("#gen-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $("#gen-stop").addEventListener("click", () => controller?.abort());
}

async function run() {
  if (controller) return;
  const model = $("#gen-model").value;
  const prompt = $("#gen-prompt").value;
  if (!model) { toast("No model: pull one in the Models tab", "error"); return; }
  if (!prompt.trim()) { toast("Write a prompt first", "error"); return; }
  const out = $("#gen-output");
  const markdown = $("#gen-markdown").checked;
  const show = (text) => {
    if (markdown) renderInto(out, text);
    else out.textContent = text;
  };
  out.classList.toggle("plain", !markdown);
  out.replaceChildren();
  $("#gen-stats").textContent = "Generating…";
  $("#gen-send").hidden = true;
  $("#gen-stop").hidden = false;
  controller = new AbortController();
  const system = $("#gen-system").value.trim();
  const body = {
    model, prompt, raw: $("#gen-raw").checked,
    options: { temperature: Number($("#gen-temperature").value), num_predict: Math.max(1, Number($("#gen-max-tokens").value) || 128) },
  };
  if (system) body.system = system;
  let frame = 0;
  let latest = "";
  const result = await runTurn("generate", body, {
    input: prompt,
    signal: controller.signal,
    onPiece: (text) => {
      latest = text;
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; show(latest); });
    },
  });
  cancelAnimationFrame(frame);
  controller = null;
  show(result.text);
  $("#gen-send").hidden = false;
  $("#gen-stop").hidden = true;
  const t = result.event.timeline;
  const d = result.done;
  const parts = [`Latency: ${fmtMs(t.total)}`, `Model: ${model}`, `first token ${fmtMs(t.streamUp)}`];
  if (d) {
    parts.push(`${fmtNum(d.prompt_eval_count)} prompt + ${fmtNum(d.eval_count)} output tokens`);
    if (d.eval_duration) parts.push(`${(d.eval_count / (d.eval_duration / 1e9)).toFixed(1)} tokens/s`);
  }
  if (result.stopped) parts.push("stopped");
  if (result.error) { parts.push(`error: ${result.error}`); toast(result.error, "error"); }
  $("#gen-stats").textContent = parts.join(" · ");
}
