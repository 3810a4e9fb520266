"""The playground page in a real browser: Debian's Chromium driven by Playwright against real servers.

One ``corral serve`` with an admin key (``root``) and a user key (``alice``)
and one browser serve the whole module; each test gets a fresh browser
context (so its own localStorage), usually with the admin key already saved.
Every test fails on any JavaScript error or ``console.error`` (a test that
expects the browser to log a refused request allows that one status), and
saves a screenshot of its tab into ``docs/screenshots/`` (the README shows
two of them; ``CORRAL_SCREENSHOTS`` redirects them).

Replies come from SmolLM2 with a few tokens each. The one place a reply is
crafted is the sanitiser test: ``page.route`` answers ``/api/chat`` with an
NDJSON stream carrying ``<img onerror>``, ``<script>`` and a ``javascript:``
link, which then go through the page's real rendering path.

Playwright's own browser download is never used (``executable_path``). The
helpers are in ``tests/playground_support.py``; the checks of the page's files
that need no browser are in ``tests/test_openapi.py``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from tests.conftest import SMOLLM, ServerProc, launch
from tests.playground_support import (
    ARGS,
    CHROMIUM,
    KEY_ITEM,
    SLOW,
    TIMELINE,
    WATCH_PROGRESS,
    WATCH_REPLY_LENGTHS,
    WATCH_RESPONSE_LINES,
    Console,
    Playground,
    Tab,
    admin_get,
    card,
    crafted_stream,
    last_reply_done,
    open_page,
    send_chat,
)
from tests.test_gateway_auth import bearer, new_key

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playground]:
    home = tmp_path_factory.mktemp("playground-home")
    admin, user = new_key(home, "root", admin=True), new_key(home, "alice")
    srv = launch(home)
    yield Playground(srv, admin, user)
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_tab(browser: Browser, pg: Playground) -> Iterator[Callable[..., Tab]]:
    """Open the page in a fresh context: ``key`` is saved in localStorage first (None: no key)."""
    opened: list[tuple[BrowserContext, Console]] = []

    def open_tab(key: str | None = "admin", *, width: int = 1280, height: int = 800, hash_: str = "chat") -> Tab:
        secret = {"admin": pg.admin, "user": pg.user}.get(key or "", key)
        context, tab = open_page(browser, pg, secret, width, height, hash_)
        opened.append((context, tab.console))
        return tab

    yield open_tab
    problems = [e for _, console in opened for e in console.unexpected()]
    for context, _ in opened:
        context.close()
    assert problems == [], "JavaScript errors in the page"


# ---- connection ------------------------------------------------------------------------------------


def test_key_entry_right_and_wrong(new_tab: Callable[..., Tab]) -> None:
    t = new_tab(None)
    t.console.allow.add(401)  # the browser logs each refused request; the page explains them
    page = t.page
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "refused")
    expect(page.locator("#conn-message")).to_contain_text("needs an API key")
    expect(page.locator("#conn-url")).to_have_value(t.pg.url)  # default: the page's own origin

    page.fill("#conn-key", "corral-not-a-real-key")
    page.click("#conn-connect")
    t.ready()
    expect(page.locator("#conn-message")).to_contain_text("refused this API key (invalid API key)")
    expect(page.locator("#conn-status")).to_have_text("not connected: key refused")
    t.open("models")
    expect(page.locator("#models-scope")).to_have_text("Not connected.")
    t.shot("connection-refused")

    page.fill("#conn-key", t.pg.user)
    page.press("#conn-key", "Enter")
    t.ready()
    expect(page.locator("#conn-status")).to_have_text("connected · user key “alice”")
    expect(page.locator("#conn-message")).to_be_hidden()
    expect(page.locator("#models-scope")).to_contain_text("pull, copy and delete need an admin key")
    expect(page.locator("#pull-start")).to_be_disabled()

    page.fill("#conn-key", t.pg.admin)
    page.click("#conn-connect")
    t.ready()
    expect(page.locator("#conn-status")).to_have_text("connected · admin key “root”")
    expect(page.locator("#pull-start")).to_be_enabled()
    assert json.loads(page.evaluate(f"localStorage.getItem({KEY_ITEM!r})")) == t.pg.admin
    page.reload()  # the key is kept
    t.connected()
    expect(page.locator("#conn-status")).to_contain_text("admin key")
    page.click("#conn-reveal")
    expect(page.locator("#conn-key")).to_have_attribute("type", "text")
    t.shot("connection")


# ---- chat ---------------------------------------------------------------------------------------------


def test_streamed_chat_turn_stop_regenerate_and_copy(new_tab: Callable[..., Tab]) -> None:
    t = new_tab()
    page = t.page
    # every rendered length of the reply while it streams, seen from inside the page
    page.evaluate(WATCH_REPLY_LENGTHS)
    with page.expect_request(lambda r: r.url.endswith("/api/chat")) as sent:
        send_chat(t, "Write a Python function that adds two numbers.", 24)
        expect(page.locator("#chat-stop")).to_be_visible()
    body = sent.value.post_data_json
    assert body["stream"] is True and body["keep_alive"] == "30m" and body["model"] == SMOLLM
    assert body["options"] == {"temperature": 0.7, "num_predict": 24}
    assert body["messages"][-1] == {"role": "user", "content": "Write a Python function that adds two numbers."}
    assert sent.value.headers["authorization"] == f"Bearer {t.pg.admin}"
    last_reply_done(t, 1)
    lengths = sorted(set(page.evaluate("window.__lengths")) - {0})
    assert len(lengths) >= 2, f"the reply did not arrive in pieces: {lengths}"
    reply = page.locator("#chat-log .msg-assistant .content").last.inner_text()
    assert reply.strip()
    meta = page.locator("#chat-log .msg-assistant .meta").last
    expect(meta).to_contain_text(f"Model: {SMOLLM}")
    expect(meta).to_contain_text("24 tokens")
    expect(page.locator("#chat-last")).to_have_text(re.compile(rf"Last request: Latency: [\d.]+ m?s · Model: {SMOLLM}"))
    t.shot("chat")

    page.locator("#chat-log .msg-assistant .msg-actions button", has_text="Copy").last.click()
    assert page.evaluate("navigator.clipboard.readText()") == page.evaluate(
        "JSON.parse(localStorage.getItem('corral.playground.chats.' + JSON.parse("
        "localStorage.getItem('corral.playground.deviceId'))))[0].messages[1].content"
    )

    page.fill("#chat-max-tokens", "4")
    page.locator("#chat-log button", has_text="Regenerate").click()
    last_reply_done(t, 1)  # the reply was replaced, not added
    expect(page.locator("#chat-log .msg")).to_have_count(2)
    expect(page.locator("#chat-log .msg-assistant .meta").last).to_contain_text("4 tokens")

    # Stop mid-stream: a long answer, stopped once its first words are on screen
    send_chat(t, "Tell me a very long story about a dragon.", 400)
    page.wait_for_function(
        """() => {
        const c = document.querySelector('#chat-log .msg-assistant.streaming .content');
        return c && !c.querySelector('.typing') && c.textContent.trim().length > 0;
    }""",
        timeout=SLOW,
    )
    started = time.monotonic()
    page.click("#chat-stop")
    last_reply_done(t, 2)
    assert time.monotonic() - started < 10
    expect(page.locator("#chat-log .msg-assistant .meta").last).to_contain_text("stopped")
    stopped = page.locator("#chat-log .msg-assistant .content").last.inner_text()
    assert stopped.strip(), "the words that arrived before Stop are kept"
    event = page.evaluate(
        "JSON.parse(localStorage.getItem('corral.playground.events.' + "
        "JSON.parse(localStorage.getItem('corral.playground.deviceId')))).at(-1)"
    )
    assert event["stopped"] is True and event["outputTokens"] is None and event["kind"] == "chat"
    # the server is free again at once: the aborted stream released its slot
    expect(page.locator("#chat-input")).to_be_focused()
    send_chat(t, "Hi", 2)
    last_reply_done(t, 3)


def test_reply_html_and_script_never_run(new_tab: Callable[..., Tab]) -> None:
    t = new_tab()
    page = t.page
    fetched: list[str] = []
    page.route("**/api/chat", crafted_stream)
    page.route("http://127.0.0.1:9/**", lambda route: (fetched.append(route.request.url), route.abort()))
    send_chat(t, "Show me some HTML", 64)
    last_reply_done(t, 1)
    reply = page.locator("#chat-log .msg-assistant .content").last
    page.wait_for_timeout(300)  # time for an onerror or onload to have fired
    assert page.evaluate("window.__pwned") is None
    for selector in ("img", "script", "svg", "[onerror]", "[onclick]", "[onload]", "[style]", "a[href^='javascript']"):
        assert reply.locator(selector).count() == 0, selector
    text = reply.inner_text()
    assert "<img src=x onerror=\"window.__pwned='img'\">" in text  # shown as text, never parsed
    assert "<script>window.__pwned='script'</script>" in text
    assert "[image: a tracking pixel]" in text and not fetched  # images are links, never loaded
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("li")).to_have_count(2)
    expect(reply.locator("a", has_text="a javascript link")).to_have_count(0)  # the link lost its href
    code = reply.locator("pre code.hljs")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")  # highlighted
    assert "<script>" in code.inner_text()
    page.locator("#chat-log .msg-assistant .msg-actions button", has_text="Copy").click()
    page.reload()  # a saved reply renders through the same path
    t.connected()
    last_reply_done(t, 1)
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#chat-log .msg-assistant .content img, #chat-log script").count() == 0
    t.shot("chat-sanitised")


def test_chat_is_saved_reloaded_renamed_exported_and_imported(new_tab: Callable[..., Tab], tmp_path: Path) -> None:
    t = new_tab()
    page = t.page
    send_chat(t, "Name a colour.", 4)
    last_reply_done(t, 1)
    reply = page.locator("#chat-log .msg-assistant .content").last.inner_text()
    assert reply.strip()
    device = page.evaluate("JSON.parse(localStorage.getItem('corral.playground.deviceId'))")
    expect(page.locator("#chat-device")).to_have_text(device)

    page.reload()
    t.connected()
    expect(page.locator("#chat-sessions li")).to_have_count(1)
    expect(page.locator("#chat-sessions .title")).to_have_text("Name a colour.")
    expect(page.locator("#chat-log .msg-user .content")).to_have_text("Name a colour.")
    assert page.locator("#chat-log .msg-assistant .content").inner_text() == reply

    page.click("#chat-sessions button[title=Rename]")
    page.fill("#dialog input", "Colours")
    page.press("#dialog input", "Enter")
    expect(page.locator("#chat-sessions .title")).to_have_text("Colours")
    t.shot("chat-saved")

    with page.expect_download() as download:
        page.click("#chat-export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["format"] == "corral-playground-chats" and exported["deviceId"] == device
    [chat] = exported["chats"]
    assert chat["title"] == "Colours" and chat["model"] == SMOLLM and chat["maxTokens"] == 4
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    # The export holds the reply's Markdown source; the page showed it rendered ("1. Red" shows as "Red").
    assert reply.split()[0] in chat["messages"][1]["content"] and chat["messages"][1]["meta"]["latencyMs"] > 0
    saved = tmp_path / "chats.json"
    saved.write_text(json.dumps(exported))

    page.click("#chat-sessions button[title=Delete]")
    expect(page.locator("#dialog")).to_contain_text("Delete “Colours”")
    page.click("#dialog button[value=ok]")
    expect(page.locator("#chat-sessions li")).to_have_text("No saved chats yet.")
    with page.expect_file_chooser() as chooser:
        page.click("#chat-import")
    chooser.value.set_files(str(saved))
    expect(page.locator("#chat-sessions .title")).to_have_text("Colours")
    page.click("#chat-sessions .open")
    assert page.locator("#chat-log .msg-assistant .content").inner_text() == reply


# ---- API reference --------------------------------------------------------------------------------------


def test_api_reference_lists_every_route_and_try_it_streams(new_tab: Callable[..., Tab]) -> None:
    t = new_tab(hash_="api")
    page = t.page
    doc = httpx.get(t.pg.url + "/api/openapi.json").json()
    listed = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if not (m == "head" and "get" in item)}
    expect(page.locator(".api-link")).to_have_count(len(listed))
    shown = {
        tuple(b.split(" ", 1)) for b in page.eval_on_selector_all(".api-link", "els => els.map(e => e.dataset.op)")
    }
    assert shown == listed

    page.fill("#api-filter", "tags")
    expect(page.locator(".api-link")).to_have_count(1)
    page.click(".api-link[data-op='GET /api/tags']")
    detail = page.locator("#api-detail")
    expect(detail.locator("h2")).to_have_text("List models")
    expect(detail.locator("table.params")).to_have_count(0)  # no parameters
    expect(detail.locator("table.schema")).to_contain_text("models[].size")
    expect(detail.locator("table.schema")).to_contain_text("Size on disk in bytes")
    expect(detail.locator("pre.curl")).to_have_text(
        f"curl -s \\\n  -H \"Authorization: Bearer YOUR_API_KEY\" \\\n  '{t.pg.url}/api/tags'"
    )
    detail.locator("form.tryit button[type=submit]").click()
    expect(detail.locator(".status-line")).to_contain_text("HTTP 200", timeout=30_000)
    expect(detail.locator(".status-line")).to_contain_text("total")
    expect(detail.locator(".response-body")).to_contain_text(f'"name": "{SMOLLM}"')
    expect(detail.locator(".timing")).to_contain_text("auth")  # Server-Timing and X-SDL-Proxy-Timing
    detail.locator("details.headers summary").click()
    expect(detail.locator("details.headers")).to_contain_text("x-request-id")

    page.fill("#api-filter", "")
    page.click(".api-link[data-op='POST /api/generate']")
    expect(detail.locator("h2")).to_have_text("Generate a completion")
    expect(detail.locator("table.params")).to_contain_text("options.num_predict")
    expect(detail.locator("table.params")).to_contain_text("keep_alive")
    expect(detail.locator("table.schema")).to_contain_text("corral_timing")
    body = {"model": SMOLLM, "prompt": "Count to ten:", "stream": True, "options": {"num_predict": 8, "temperature": 0}}
    detail.locator("textarea.body-editor").fill(json.dumps(body, indent=2))
    expect(detail.locator("pre.curl")).to_contain_text('"num_predict": 8')  # the cURL follows the form
    expect(detail.locator("pre.curl")).to_contain_text(f"'{t.pg.url}/api/generate'")
    page.evaluate(WATCH_RESPONSE_LINES)
    detail.locator("form.tryit button[type=submit]").click()
    expect(detail.locator(".status-line")).to_contain_text("total", timeout=SLOW)
    expect(detail.locator(".status-line")).to_contain_text(re.compile(r"HTTP 200.*first byte.* \d+ lines"))
    lines = [json.loads(x) for x in detail.locator(".response-body").inner_text().splitlines() if x.strip()]
    assert len(lines) >= 3 and lines[-1]["done"] is True and lines[-1]["eval_count"] == 8
    assert not any(x["done"] for x in lines[:-1])
    assert len(set(page.evaluate("window.__lines"))) >= 3, "the lines did not appear one by one"
    expect(detail.locator(".timing")).to_contain_text("generation")  # from the corral_timing marker
    detail.locator(".tryit-result").scroll_into_view_if_needed()
    t.shot("api")

    page.fill("#api-filter", "admin/requests")
    page.click(".api-link[data-op='GET /api/admin/requests']")
    expect(detail.locator(".param-inputs input[aria-label=limit]")).to_have_value("50")
    detail.locator(".param-inputs input[aria-label=limit]").fill("2")
    expect(detail.locator("pre.curl")).to_contain_text("limit=2")
    detail.locator("form.tryit button[type=submit]").click()
    expect(detail.locator(".response-body")).to_contain_text('"limit": 2', timeout=30_000)


# ---- models ------------------------------------------------------------------------------------------------


def test_pull_with_progress_from_a_second_server_then_copy_delete_and_unload(
    new_tab: Callable[..., Tab], start_server: Callable[..., ServerProc]
) -> None:
    registry = start_server()  # starter models, no keys: a registry anyone on loopback may pull from
    target = start_server({"CORRAL_STARTER_MODELS": "0"})  # empty, no keys
    t = new_tab()
    page = t.page
    # The connection bar points the page at another server (cross-origin: CORS allows loopback origins).
    page.fill("#conn-url", target.url)
    page.fill("#conn-key", "")
    page.click("#conn-connect")
    t.ready()
    expect(page.locator("#conn-status")).to_have_text("connected · open server, no key needed (admin)")
    t.open("models")
    expect(page.locator("#models-list")).to_have_text("No models installed.")
    page.evaluate(WATCH_PROGRESS)
    name = f"127.0.0.1:{registry.url.rsplit(':', 1)[1]}/library/{SMOLLM}"
    page.fill("#pull-name", name)
    page.check("#pull-insecure")
    page.click("#pull-start")
    expect(page.locator("#pull-progress")).to_have_attribute("data-done", "true", timeout=SLOW)
    expect(page.locator("#pull-status")).to_have_text(f"Pulled {name}")
    log = page.locator("#pull-log li").all_inner_texts()
    assert log[0] == "pulling manifest" and log[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s.startswith("pulling ") and s != "pulling manifest" for s in log)
    partial = [v for v, m in page.evaluate("window.__progress") if m > 1_000_000 and 0 < v < m]
    assert partial, "the bar never showed a pull part-way"
    expect(page.locator("#models-list")).to_contain_text(name)
    t.shot("models")

    page.locator("#models-list tr", has_text=name).locator("button", has_text="Details").click()
    expect(page.locator("#model-details")).to_contain_text("llama")
    expect(page.locator("#model-details")).to_contain_text("Q4_1")

    page.locator("#models-list tr", has_text=name).locator("button", has_text="Copy").click()
    page.fill("#dialog input", "pg-copy")
    page.click("#dialog button[value=ok]")
    expect(page.locator("#models-list")).to_contain_text("pg-copy:latest")
    page.locator("#models-list tr", has_text="pg-copy").locator("button", has_text="Delete").click()
    expect(page.locator("#dialog")).to_contain_text("Delete pg-copy:latest?")
    page.click("#dialog button[value=cancel]")  # cancelled: still there
    expect(page.locator("#models-list")).to_contain_text("pg-copy:latest")
    page.locator("#models-list tr", has_text="pg-copy").locator("button", has_text="Delete").click()
    page.click("#dialog button[value=ok]")
    expect(page.locator("#models-list")).not_to_contain_text("pg-copy")
    assert [m["name"] for m in httpx.get(target.url + "/api/tags").json()["models"]] == [name]

    # What is loaded now, and Unload, back on the keyed server
    httpx.post(
        t.pg.url + "/api/generate", json={"model": SMOLLM, "keep_alive": "30m"}, headers=bearer(t.pg.admin), timeout=120
    ).raise_for_status()
    page.fill("#conn-url", t.pg.url)
    page.fill("#conn-key", t.pg.admin)
    page.click("#conn-connect")
    t.connected()
    page.click("#models-refresh")
    loaded = page.locator("#ps-list tr", has_text=SMOLLM)
    expect(loaded).to_contain_text(re.compile(r"in (29|30)m"))
    loaded.locator("button", has_text="Unload").click()
    expect(page.locator("#ps-list")).to_have_text("No model is loaded.", timeout=30_000)
    assert admin_get(t.pg, "/api/ps")["models"] == []


# ---- analytics -----------------------------------------------------------------------------------------------


def test_analytics_after_a_few_turns_with_the_timeline_filled(new_tab: Callable[..., Tab]) -> None:
    t = new_tab()
    page = t.page
    before = admin_get(t.pg, "/api/admin/stats", since="1h")["beacons"]["by_event"]
    send_chat(t, "Say hi.", 4)
    last_reply_done(t, 1)
    send_chat(t, "Say bye.", 4)
    last_reply_done(t, 2)
    t.open("generate")
    page.fill("#gen-max-tokens", "6")
    page.fill("#gen-prompt", "The capital of France is")
    page.click("#gen-send")
    expect(page.locator("#gen-stats")).to_contain_text("6 output tokens", timeout=SLOW)
    expect(page.locator("#gen-output")).not_to_be_empty()
    t.shot("generate")

    t.open("analytics")
    events = page.locator("table.events > tbody > tr:not(.detail)")
    expect(events).to_have_count(3)
    assert page.locator("table.events thead th").all_inner_texts()[:12] == TIMELINE
    for i in range(3):
        cells = events.nth(i).locator("td").all_inner_texts()
        row = dict(zip(TIMELINE, cells, strict=False))
        assert row["OK"] == "✓" and row["HTTP"] == "200" and row["Model"] == SMOLLM and row["Error"] == ""
        for column in ("Proxy", "Stream↑", "Output", "Total", "Client I/O"):
            assert re.fullmatch(r"[\d.]+ m?s", row[column]), (column, row[column])
        assert int(row["In"]) > 0 and int(row["Out"]) in (4, 6)
    by_model = page.locator("table.by-model tbody tr")
    expect(by_model).to_have_count(1)
    cells = by_model.locator("td").all_inner_texts()
    assert cells[:3] == [SMOLLM, "3", "3"] and re.fullmatch(r"[\d.]+ m?s", cells[3]) and cells[5] == "14"
    expect(card(page, "HTTP status")).to_contain_text("200 × 3")
    expect(card(page, "Saved chat sessions")).to_contain_text("1 chats, 4 messages")
    expect(card(page, "Estimated playground storage")).to_contain_text("in localStorage")
    expect(card(page, "Recent errors")).to_contain_text("None.")
    expect(card(page, "Latency")).to_contain_text("Total (ms)")
    assert page.locator(".card canvas").count() >= 1  # the uPlot chart drew
    newest = events.first  # the generate turn
    newest.locator("button", has_text="Show input / output").click()
    detail = page.locator("table.events tr.detail").first
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("The capital of France is")
    expect(detail).to_contain_text("Server phases: auth")
    page.evaluate("window.scrollTo(0, 0)")
    t.shot("analytics", full_page=True)

    with page.expect_download() as download:
        page.click("#an-export")
    data = json.loads(Path(download.value.path()).read_text())
    assert data["format"] == "corral-playground-export" and len(data["events"]) == 3 and len(data["chats"]) == 1
    assert data["clientProfile"]["userAgent"] and data["deviceId"]
    assert {e["kind"] for e in data["events"]} == {"chat", "generate"}
    assert all(e["timeline"]["server"]["generation"] > 0 for e in data["events"])

    # every turn also went to the server as a beacon, with its clientProfile
    deadline = time.monotonic() + 10
    while True:
        after = admin_get(t.pg, "/api/admin/stats", since="1h")["beacons"]["by_event"]
        grew = {k: after.get(k, 0) - before.get(k, 0) for k in ("chat_turn", "generate_turn")}
        if grew == {"chat_turn": 2, "generate_turn": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert grew == {"chat_turn": 2, "generate_turn": 1}


def test_admin_sees_every_clients_requests_and_a_user_key_its_own(new_tab: Callable[..., Tab]) -> None:
    pg = new_tab().pg  # (only for the server; the views are opened below)
    for key in (pg.user, pg.admin):  # two clients' requests
        httpx.post(
            pg.url + "/api/generate",
            json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
            headers=bearer(key),
            timeout=120,
        ).raise_for_status()
    time.sleep(0.6)  # the request log is written off the request path
    t = new_tab(hash_="analytics")
    page = t.page
    page.select_option("#an-view", "server")
    expect(page.locator("#an-note")).to_contain_text("Every client's requests")
    rows = page.locator("table.events > tbody > tr:not(.detail)")
    expect(rows.first).to_be_visible(timeout=30_000)
    assert rows.count() <= 50
    expect(page.locator("table.by-model")).to_contain_text(SMOLLM)
    assert page.locator("table.by-model thead th").all_inner_texts() == [
        "Model",
        "Turns",
        "OK",
        "Avg latency",
        "p50",
        "p95",
        "Prompt Σ",
        "Reply Σ",
    ]
    server_turns = {r["model"]: r["turns"] for r in admin_get(pg, "/api/admin/stats", since="1h")["models"]}
    shown = page.locator("table.by-model tbody tr", has_text=SMOLLM).locator("td").nth(1).inner_text()
    assert int(shown.replace(",", "")) == server_turns[SMOLLM]
    expect(card(page, "Server usage")).to_contain_text("requests")
    alice = (
        page.locator("table.events > tbody > tr:not(.detail)", has_text=SMOLLM)
        .filter(has=page.locator("td", has_text="200"))
        .first
    )
    expect(alice).to_be_visible()
    with_model = rows.count()
    assert "—" not in rows.locator("td:nth-child(8)").all_inner_texts()  # only requests naming a model
    t.shot("analytics-server")
    keys = set()
    for i in range(rows.count()):
        rows.nth(i).locator("button", has_text="Show details").click()
    for text in page.locator("table.events tr.detail").all_inner_texts():
        keys.update(re.findall(r"Key\s+(\S+)", text))
    assert {"alice", "root"} <= keys, keys
    page.uncheck("#an-models-only")  # every request: /api/tags, /api/whoami, ...
    expect(page.locator("table.events > tbody > tr:not(.detail)")).not_to_have_count(with_model)
    assert "—" in rows.locator("td:nth-child(8)").all_inner_texts()

    with page.expect_request(lambda r: "since=15m" in r.url and "/api/admin/requests" in r.url):
        page.select_option("#an-range", "15m")
    expect(page.locator("#an-note")).to_contain_text("last 15 minutes")

    u = new_tab("user", hash_="analytics")
    u.page.select_option("#an-view", "server")
    expect(u.page.locator("#an-note")).to_contain_text("Only this key's requests")
    expect(u.page.locator("table.events > tbody > tr:not(.detail)").first).to_be_visible(timeout=30_000)
    user_rows = u.page.locator("table.events > tbody > tr:not(.detail)")
    for i in range(user_rows.count()):
        user_rows.nth(i).locator("button", has_text="Show details").click()
    user_keys = set()
    for text in u.page.locator("table.events tr.detail").all_inner_texts():
        user_keys.update(re.findall(r"Key\s+(\S+)", text))
    assert user_keys == {"alice"}


# ---- environment, embeddings, layout and keyboard --------------------------------------------------------------


def test_environment_probe(new_tab: Callable[..., Tab]) -> None:
    t = new_tab(hash_="environment")
    page = t.page
    expect(page.locator("#env-body")).to_contain_text("click Refresh")
    page.click("#env-refresh")
    server = page.locator("table[aria-label='Server probe']")
    expect(server).to_contain_text("0.12.6", timeout=30_000)
    expect(server.locator("tr", has_text="Models (/api/tags)")).to_contain_text(f"2: all-minilm:latest, {SMOLLM}")
    expect(server.locator("tr", has_text="Loaded (/api/ps)")).to_be_visible()
    expect(server.locator("tr", has_text="Round trip")).to_contain_text(re.compile(r"min [\d.]+ ms · median"))
    expect(server).to_contain_text("connected · admin key “root”")
    headers = page.locator("table[aria-label='Timing headers']")
    for name in ("Server-Timing", "X-SDL-Proxy-Timing"):
        row = headers.locator("tr", has_text=name)
        expect(row).to_contain_text("auth;dur=")
        expect(row).to_contain_text("same origin: every header is readable")
    browser_rows = page.locator("table[aria-label='This browser']")
    device = page.evaluate("JSON.parse(localStorage.getItem('corral.playground.deviceId'))")
    expect(browser_rows.locator("tr", has_text="Device ID")).to_contain_text(device)
    expect(browser_rows.locator("tr", has_text="User agent")).to_contain_text("Chrome")
    expect(browser_rows.locator("tr", has_text="Storage used")).to_contain_text("in localStorage")
    t.shot("environment")


def test_embeddings_compare_texts_by_cosine_similarity(new_tab: Callable[..., Tab]) -> None:
    t = new_tab(hash_="embeddings")
    page = t.page
    expect(page.locator("#emb-model")).to_have_value("all-minilm:latest")  # an embedding model is preferred
    expect(page.locator("#emb-texts textarea")).to_have_count(3)
    page.click("#emb-run")
    matrix = page.locator("table.matrix")
    expect(matrix).to_be_visible(timeout=60_000)
    sims = [[float(x) for x in row.locator("td").all_inner_texts()] for row in matrix.locator("tbody tr").all()]
    assert [sims[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert sims[0][1] > sims[0][2] and sims[0][1] > sims[1][2]  # the two fox sentences are the closest pair
    expect(page.locator("#emb-result")).to_contain_text("Most similar: T1 and T2")
    expect(page.locator("#emb-result")).to_contain_text("384 dimensions")
    t.shot("embeddings")


def test_phone_width_and_keyboard(new_tab: Callable[..., Tab]) -> None:
    t = new_tab(width=390, height=844)
    page = t.page
    for tab in ("chat", "generate", "embeddings", "models", "api", "analytics", "environment"):
        page.click(f"#tab-{tab}")
        expect(page.locator(f"#panel-{tab}")).to_be_visible()
        page.wait_for_timeout(300)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{tab}: the page scrolls sideways by {overflow}px at phone width"
    page.click("#tab-chat")
    t.shot("chat-phone")

    # keyboard only: tabs by arrow keys, a chat turn by Enter, Stop by Escape
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-generate")).to_be_focused()
    expect(page.locator("#panel-generate")).to_be_visible()
    page.keyboard.press("End")
    expect(page.locator("#tab-environment")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowRight")  # wraps around
    expect(page.locator("#tab-chat")).to_be_focused()
    page.keyboard.press("Home")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # Skip link, connection fields... keep tabbing until the message box
    for _ in range(20):
        if page.evaluate("document.activeElement.id") == "chat-input":
            break
        page.keyboard.press("Tab")
    expect(page.locator("#chat-input")).to_be_focused()
    page.fill("#chat-max-tokens", "300")
    page.focus("#chat-input")
    page.keyboard.type("Tell me a long story.")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-stop")).to_be_visible()
    page.wait_for_function(
        """() => {
        const c = document.querySelector('#chat-log .msg-assistant.streaming .content');
        return c && !c.querySelector('.typing');
    }""",
        timeout=SLOW,
    )
    page.keyboard.press("Escape")
    last_reply_done(t, 1)
    expect(page.locator("#chat-log .msg-assistant .meta")).to_contain_text("stopped")
