"""Helpers for tests/test_playground.py: the browser's settings, a page's console, one open tab, and
the actions and waits the tests share (sending a chat turn, waiting for its reply, a crafted reply stream).
The fixtures themselves (server, browser, tabs) are in that module."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, expect

from tests.conftest import ROOT, SMOLLM, ServerProc
from tests.test_gateway_auth import bearer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("CORRAL_SCREENSHOTS") or ROOT / "docs" / "screenshots")
STATIC = ROOT / "corral" / "playground" / "static"
SLOW = 180_000  # ms: a reply on a busy 2-core box
KEY_ITEM = "corral.playground.apiKey"


@dataclass
class Playground:
    srv: ServerProc
    admin: str
    user: str

    @property
    def url(self) -> str:
        return self.srv.url


@dataclass
class Console:
    """Every console error and uncaught exception of a page; ``allow`` names HTTP statuses a test expects
    the browser to log as a failed resource (a refused key is a 401 the page handles)."""

    errors: list[str] = field(default_factory=list)
    allow: set[int] = field(default_factory=set)

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console.error: {msg.text} ({msg.location.get('url')})")

    def unexpected(self) -> list[str]:
        pattern = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
        return [e for e in self.errors if not ((m := pattern.search(e)) and int(m.group(1)) in self.allow)]


@dataclass
class Tab:
    page: Page
    console: Console
    pg: Playground

    def shot(self, name: str, *, full_page: bool = False) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)

    def open(self, tab: str) -> None:
        self.page.click(f"#tab-{tab}")
        expect(self.page.locator(f"#panel-{tab}")).to_be_visible()

    def ready(self) -> None:
        """The last (re)connection is done: model list and open tab loaded."""
        expect(self.page.locator("html")).to_have_attribute("data-ready", "true", timeout=30_000)

    def connected(self) -> None:
        expect(self.page.locator("#conn-status")).to_have_attribute("data-state", "connected", timeout=30_000)
        self.ready()


def send_chat(t: Tab, text: str, max_tokens: int) -> None:
    t.page.fill("#chat-max-tokens", str(max_tokens))
    t.page.fill("#chat-input", text)
    t.page.press("#chat-input", "Enter")


def last_reply_done(t: Tab, count: int) -> None:
    """Wait until the conversation shows ``count`` finished replies (each gets its latency line)."""
    expect(t.page.locator("#chat-log .msg-assistant .meta")).to_have_count(count, timeout=SLOW)
    expect(t.page.locator("#chat-send")).to_be_visible()


def card(page: Page, title: str) -> Any:
    """The Analytics card whose heading starts with ``title``."""
    return page.locator(".card").filter(has=page.locator("h3", has_text=title))


def admin_get(pg: Playground, path: str, **params: Any) -> Any:
    return httpx.get(pg.url + path, params=params, headers=bearer(pg.admin), timeout=30).json()


CRAFTED = [
    "Here is **bold** text, a list:\n\n- one\n- two\n\n",
    "An image tag: <img src=x onerror=\"window.__pwned='img'\"> and ",
    "a script: <script>window.__pwned='script'</script>\n\n",
    '<a href="#" onclick="window.__pwned=\'click\'">a link with a handler</a>, ',
    "[a javascript link](javascript:window.__pwned='link'), ![a tracking pixel](http://127.0.0.1:9/pixel.png) ",
    "and <svg onload=\"window.__pwned='svg'\"></svg>.\n\n",
    "```python\ndef add(a, b):\n    return a + b  # <script>window.__pwned='code'</script>\n```\n",
]


def crafted_stream(route: Route) -> None:
    lines = [
        {
            "model": SMOLLM,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        for piece in CRAFTED
    ]
    lines.append(
        {
            "model": SMOLLM,
            "created_at": "2026-01-01T00:00:01Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 9,
            "eval_count": len(CRAFTED),
            "corral_timing": {"auth": 0.1, "queue": 0.2, "ttft": 40.0, "generation": 120.0, "total": 170.0},
        }
    )
    route.fulfill(
        status=200,
        content_type="application/x-ndjson",
        body="".join(json.dumps(x) + "\n" for x in lines),
        headers={
            "Server-Timing": "auth;dur=0.1, queue;dur=0.2, ttft;dur=40.0",
            "X-SDL-Proxy-Timing": "auth;dur=0.1, queue;dur=0.2, ttft;dur=40.0",
        },
    )


TIMELINE = ["Time", "OK", "HTTP", "Proxy", "Stream↑", "Output", "Total", "Model", "In", "Out", "Client I/O", "Error"]


def open_page(
    browser: Browser, pg: Playground, secret: str | None, width: int, height: int, hash_: str
) -> tuple[BrowserContext, Tab]:
    """A fresh context (own localStorage, ``secret`` saved there first) with the page open on ``#hash_``."""
    context = browser.new_context(
        viewport={"width": width, "height": height},
        accept_downloads=True,
        permissions=["clipboard-read", "clipboard-write"],
    )
    if secret:
        context.add_init_script(
            f"if (!localStorage.getItem({KEY_ITEM!r})) "
            f"localStorage.setItem({KEY_ITEM!r}, {json.dumps(json.dumps(secret))});"
        )
    console = Console()
    page = context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", lambda exc: console.errors.append(f"pageerror: {exc}"))
    page.goto(f"{pg.url}/playground/#{hash_}")
    tab = Tab(page, console, pg)
    if secret:
        tab.connected()
    return context, tab


# In-page observers: what the page showed while something streamed, read back after it ended.
WATCH_REPLY_LENGTHS = """() => {
    window.__lengths = [];
    new MutationObserver(() => {
        const c = document.querySelector('#chat-log .msg-assistant.streaming .content');
        if (c && !c.querySelector('.typing')) window.__lengths.push(c.textContent.length);
    }).observe(document.querySelector('#chat-log'), {subtree: true, childList: true, characterData: true});
}"""
WATCH_RESPONSE_LINES = """() => {
    window.__lines = [];
    const body = () => document.querySelector('#api-detail .response-body');
    new MutationObserver(() => { const b = body(); if (b) window.__lines.push(b.textContent.split('\\n').length); })
        .observe(document.querySelector('#api-detail'), {subtree: true, childList: true, characterData: true});
}"""
WATCH_PROGRESS = """() => {
    window.__progress = [];
    const bar = document.querySelector('#pull-progress');
    new MutationObserver(() => window.__progress.push([bar.value, bar.max])).observe(bar, {attributes: true});
}"""
