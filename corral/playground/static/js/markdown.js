// markdown.js: model output -> safe DOM. Model output is untrusted: nothing in a reply may run.
// Owns: the one rendering path for replies (marked for Markdown, highlight.js for code blocks,
// DOMPurify last, returning a DOM fragment, never an HTML string handed to innerHTML).
// Three walls: raw HTML in a reply is rendered as visible text (never parsed), images become links
// (a reply cannot make the browser fetch a URL: no tracking pixels, no data exfiltration), and
// DOMPurify removes whatever is left that could run or restyle the page (scripts, handlers, style,
// forms, javascript: links). The page's Content-Security-Policy (no inline script) is the fourth.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";
import hljs from "../vendor/highlight/core.min.js";
import bash from "../vendor/highlight/languages/bash.min.js";
import c from "../vendor/highlight/languages/c.min.js";
import cpp from "../vendor/highlight/languages/cpp.min.js";
import css from "../vendor/highlight/languages/css.min.js";
import diff from "../vendor/highlight/languages/diff.min.js";
import go from "../vendor/highlight/languages/go.min.js";
import java from "../vendor/highlight/languages/java.min.js";
import javascript from "../vendor/highlight/languages/javascript.min.js";
import json from "../vendor/highlight/languages/json.min.js";
import markdown from "../vendor/highlight/languages/markdown.min.js";
import python from "../vendor/highlight/languages/python.min.js";
import rust from "../vendor/highlight/languages/rust.min.js";
import shell from "../vendor/highlight/languages/shell.min.js";
import sql from "../vendor/highlight/languages/sql.min.js";
import typescript from "../vendor/highlight/languages/typescript.min.js";
import xml from "../vendor/highlight/languages/xml.min.js";
import yaml from "../vendor/highlight/languages/yaml.min.js";
import { copyText, h } from "./ui.js";

const LANGUAGES = { bash, c, cpp, css, diff, go, java, javascript, json, markdown, python, rust, shell, sql, typescript, xml, yaml };
for (const [name, lang] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, lang);
const AUTO = ["python", "javascript", "typescript", "bash", "json", "go", "rust", "java", "cpp", "sql"];

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
const SAFE_URL = /^(https?:|mailto:|#)/i;

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text); // raw HTML from the model is shown as text
    },
    image({ href, text }) {
      const label = `[image: ${text || href}]`;
      return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">${escapeHtml(label)}</a>` : escapeHtml(label);
    },
    link({ href, tokens }) {
      const inner = this.parser.parseInline(tokens);
      return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">${inner}</a>` : inner;
    },
    code({ text, lang }) {
      const name = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      let body;
      let shown = name;
      try {
        if (name && hljs.getLanguage(name)) body = hljs.highlight(text, { language: name, ignoreIllegals: true }).value;
        else if (text.length < 20000) {
          const auto = hljs.highlightAuto(text, AUTO);
          body = auto.value;
          shown = name || auto.language || "";
        }
      } catch {
        body = undefined;
      }
      return `<pre data-lang="${escapeHtml(shown)}"><code class="hljs">${body ?? escapeHtml(text)}</code></pre>`;
    },
  },
});

const PURIFY = {
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "video", "audio", "source", "link", "meta", "base"],
  FORBID_ATTR: ["style", "id", "name", "srcset", "action", "formaction"],
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ["data-lang"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (!SAFE_URL.test(node.getAttribute("href") || "")) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** Markdown text -> a sanitised DocumentFragment. */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ""), { async: false });
  return DOMPurify.sanitize(html, PURIFY);
}

/** Render `text` into `el`, with a Copy button on each code block. */
export function renderInto(el, text) {
  const fragment = renderMarkdown(text);
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    pre.prepend(h("div", { class: "code-head" },
      h("span", {}, pre.dataset.lang || "text"),
      h("button", { type: "button", class: "small", onclick: () => copyText(code ? code.textContent : pre.textContent) }, "Copy")));
  }
  el.replaceChildren(fragment);
}
