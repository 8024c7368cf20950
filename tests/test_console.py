"""The agent console (/console/) and the customer page (/chat/) in a real browser (Debian's Chromium driven by
Playwright) against the real gunicorn on MariaDB.

One browser per module; each test opens its own pages (browser contexts: separate sessionStorage, like
separate people). Tests marked `desk` need the agent-desk API (claim, transfer, status, queue): they run
when the server offers it and are skipped only while `GET /api/queue` answers 404.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jwtkit import JWT_SETTINGS, hs256
from playwright.sync_api import Browser, BrowserContext, Page, WebSocketRoute, expect, sync_playwright

from support import IN_CI, ROOT, Client, Server, fresh_id

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(180)]

WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "docs"


def chromium_path() -> str:
    """Debian's Chromium (CHROMIUM_PATH to override); its absence fails under CI=true instead of skipping."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "Chromium is not installed (apt-get install chromium; .ci/run does it)"
    if IN_CI:
        pytest.fail(message + " (CI=true: the browser tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def chat_server(server_factory: Callable[..., Server], mariadb_url: str) -> Server:
    return server_factory(database_url=mariadb_url)


@pytest.fixture(scope="module")
def agent_id(chat_server: Server) -> int:
    return chat_server.add_agent(fresh_id())


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a page in a fresh context; every page is checked for script errors and CSP reports at the end."""
    contexts: list[BrowserContext] = []
    problems: list[str] = []

    def open_page(url: str, viewport: dict[str, int] | None = None, setup: Callable[[Page], Any] | None = None) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"{url}: page error {exc}"))
        page.on("console", lambda msg: problems.append(f"{url}: {msg.text}")
                if msg.type == "error" and ("Content Security Policy" in msg.text or "Uncaught" in msg.text) else None)
        if setup is not None:
            setup(page)
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not problems, problems


def sign_in_agent(open_page: Callable[..., Page], server: Server, user_id: int, query: str = "",
                  viewport: dict[str, int] | None = None, setup: Callable[[Page], Any] | None = None) -> Page:
    page = open_page(f"{server.http_url}/console/{query}", viewport, setup)
    page.fill("#signin-user", str(user_id))
    page.press("#signin-user", "Enter")
    expect(page.locator("#workspace")).to_be_visible()
    return page


def open_customer(open_page: Callable[..., Page], server: Server, user_id: int, query: str = "",
                  setup: Callable[[Page], Any] | None = None) -> tuple[Page, int]:
    page = open_page(f"{server.http_url}/chat/{query}", setup=setup)
    page.fill("#start-user", str(user_id))
    page.click("#start-form button[type=submit]")
    expect(page.locator("#conversation")).to_be_visible()
    expect(page.locator("#chat-status")).not_to_be_empty()
    expect(page.locator("#composer-input")).to_be_enabled()  # the session is open
    return page, server.open_session(user_id)  # the customer's open session: the one the page opened


def send(page: Page, text: str) -> None:
    """Type into the message box and press Enter, as a person would."""
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def bodies(page: Page) -> list[str]:
    return page.locator(".log .msg .body").all_text_contents()


def shown_ids(page: Page) -> list[int]:
    return [int(i) for i in page.locator(".log .msg").evaluate_all("nodes => nodes.map(n => n.dataset.id)")]


def expect_bodies(page: Page, expected: list[str]) -> None:
    """The conversation shows exactly these messages (each once, in this order), and no send is pending."""
    expect(page.locator(".log .msg .body")).to_have_text(expected)
    expect(page.locator(".pending .msg")).to_have_count(0)
    ids = shown_ids(page)
    assert ids == sorted(set(ids)), ids


def open_in_console(page: Page, session_id: int) -> None:
    page.click(f'button.session[data-session-id="{session_id}"]')
    expect(page.locator("#conv-title")).to_contain_text(f"#{session_id}")
    expect(page.locator("#composer-input")).to_be_enabled()


def desk_offered(server: Server, agent: int) -> bool:
    status, _ = server.http("GET", "/api/queue", headers={"X-User-Id": str(agent)})
    return status != 404


@pytest.fixture
def desk_agent(chat_server: Server) -> int:
    """An agent of its own for a desk test: the module's agent took earlier tests' sessions (legacy joins), so
    its load may be at AGENT_CAPACITY and a claim would rightly be refused over_capacity."""
    return chat_server.add_agent(fresh_id())


@pytest.fixture
def desk(chat_server: Server, agent_id: int) -> None:
    if not desk_offered(chat_server, agent_id):
        pytest.skip("the server does not offer the agent-desk API yet (GET /api/queue answers 404)")


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Screenshots for the README: written to docs/ with UPDATE_SCREENSHOTS=1, else to the test's temp dir."""
    target = (SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path) / name
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


def test_customer_and_agent_chat_both_ways(pages, chat_server: Server, agent_id: int, tmp_path: Path) -> None:
    """A customer on /chat/ and an agent on /console/ talk both ways; the session moves to the agent's list."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "你好，我的订单还没有发货")
    expect_bodies(chat, ["你好，我的订单还没有发货"])

    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator("#trust-warning")).to_be_visible()
    item = console.locator(f'button.session[data-session-id="{session_id}"]')
    expect(item).to_be_visible()
    expect(item.locator(".badge")).to_have_text("1")  # one unread message
    open_in_console(console, session_id)
    expect_bodies(console, ["你好，我的订单还没有发货"])
    send(console, "您好，请提供订单号")
    expect_bodies(console, ["你好，我的订单还没有发货", "您好，请提供订单号"])
    expect_bodies(chat, ["你好，我的订单还没有发货", "您好，请提供订单号"])
    expect(chat.locator(".log .msg.theirs .who")).to_have_text([f"客服 #{agent_id}"])
    send(chat, "订单号 20261203-0042")
    expect_bodies(console, ["你好，我的订单还没有发货", "您好，请提供订单号", "订单号 20261203-0042"])
    expect(console.locator(f'#mine-list button[data-session-id="{session_id}"]')).to_be_visible()
    send(console, "查到了，今天下午发货")
    expect_bodies(chat, ["你好，我的订单还没有发货", "您好，请提供订单号", "订单号 20261203-0042",
                         "查到了，今天下午发货"])
    expect(chat.locator(".log .msg.mine .receipt").last).to_have_text("已读")  # the console read it
    assert console.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    screenshot(console, "console-agent.png", tmp_path)
    screenshot(chat, "console-customer.png", tmp_path)


def test_typing_and_read_receipts_show_on_both_pages(pages, chat_server: Server, agent_id: int) -> None:
    """The agent's typing and reads show on the customer page; a newer client's typing and reads on the console."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)

    console.locator("#composer-input").press_sequentially("正在查")
    expect(chat.locator(".typing")).to_have_text(f"客服 #{agent_id} 对方正在输入…")
    send(console, "请稍等")
    expect(chat.locator(".typing")).to_be_hidden()
    expect_bodies(chat, ["请稍等"])

    send(chat, "好的")
    expect_bodies(console, ["请稍等", "好的"])
    expect(chat.locator(".log .msg.mine .receipt")).to_have_text(["已读"])  # the console read the customer's message

    app = Client(chat_server.ws_url)  # the customer's newer app, which sends typing notices and reads
    try:
        app.auth(customer)
        app.send({"type": "typing", "session_id": session_id, "state": "start"})
        expect(console.locator(".typing")).to_have_text(f"客户 #{customer} 对方正在输入…")
        app.send({"type": "typing", "session_id": session_id, "state": "stop"})
        expect(console.locator(".typing")).to_be_hidden()
        expect(console.locator(".log .msg.mine .receipt")).to_have_text([""])
        agent_message = shown_ids(console)[0]
        app.send({"type": "read", "session_id": session_id, "message_id": agent_message})
        expect(console.locator(".log .msg.mine .receipt")).to_have_text(["已读"])
    finally:
        app.close()


def test_reload_and_server_restart_show_every_message_once_in_order(
        pages, chat_server: Server, agent_id: int) -> None:
    """The agent reloads mid-conversation and the server restarts: nothing lost, nothing twice, in order."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    expected: list[str] = []
    for i in range(3):
        send(chat, f"客户 {i}")
        expected.append(f"客户 {i}")
        expect_bodies(console, expected)
        send(console, f"坐席 {i}")
        expected.append(f"坐席 {i}")
        expect_bodies(chat, expected)

    console.reload()  # mid-conversation: signed in and back in the same conversation, history once
    expect(console.locator("#workspace")).to_be_visible()
    expect_bodies(console, expected)
    send(chat, "刷新时发的")
    expected.append("刷新时发的")
    expect_bodies(console, expected)

    chat_server.stop()
    expect(console.locator("#banner")).to_be_visible()
    expect(chat.locator("#banner")).to_be_visible()
    send(console, "断线时写的")  # waits, marked as sending, and goes out once the server is back
    expect(console.locator(".pending .msg .state-text")).to_have_text("发送中…")
    chat_server.start()
    expected.append("断线时写的")
    expect(console.locator("#banner")).to_be_hidden()
    expect(chat.locator("#banner")).to_be_hidden()
    expect_bodies(console, expected)
    expect_bodies(chat, expected)
    send(chat, "重启之后")
    expected.append("重启之后")
    expect_bodies(console, expected)
    expect_bodies(chat, expected)
    status, body = chat_server.http("GET", f"/api/sessions/{session_id}/messages?limit=500",
                                    headers={"X-User-Id": str(agent_id)})
    assert [m["content"] for m in body["messages"]] == expected
    assert shown_ids(console) == shown_ids(chat) == [m["id"] for m in body["messages"]]


def test_a_network_drop_replays_what_was_missed_once(pages, chat_server: Server, agent_id: int) -> None:
    """The console's connection drops and stays down while the customer writes: once it is back, the missed
    messages appear (replay from last_message_id), each once, in order; the agent's own unsent message goes out."""
    network = {"up": True}
    links: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def link(route: WebSocketRoute) -> None:
        if not network["up"]:
            route.close(code=4000, reason="network down")
            return
        links.append((route, route.connect_to_server()))

    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "断网前")
    console = sign_in_agent(pages, chat_server, agent_id,
                            setup=lambda page: page.route_web_socket(re.compile(".*"), link))
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    expect_bodies(console, ["断网前"])

    network["up"] = False
    for page_side, server_side in links:
        page_side.close(code=4000, reason="network down")
        server_side.close()
    expect(console.locator("#banner")).to_be_visible()
    expected = ["断网前"]
    for i in range(3):
        send(chat, f"断网时 {i}")
        expected.append(f"断网时 {i}")
    expect_bodies(chat, expected)
    send(console, "坐席断网时写的")
    expect(console.locator(".pending .msg .state-text")).to_have_text("发送中…")
    network["up"] = True
    expected.append("坐席断网时写的")
    expect(console.locator("#banner")).to_be_hidden()
    expect_bodies(console, expected)
    expect_bodies(chat, expected)


def test_a_send_whose_answer_is_lost_fails_and_is_retried_with_the_same_client_msg_id(
        pages, chat_server: Server, agent_id: int) -> None:
    """The server stores a send but its answer is lost: the page shows it failed; Retry resends the same
    client_msg_id and the page shows the one stored message (the server answers the repeat as a duplicate)."""
    sent: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []

    def lossy(route: WebSocketRoute) -> None:
        """Between the page and the server: forward everything but the first answer to our message."""
        server = route.connect_to_server()

        def upstream(text: str | bytes) -> None:
            frame = json.loads(text)
            if frame.get("type") == "send_message":
                sent.append(frame)
            server.send(text)

        def downstream(text: str | bytes) -> None:
            frame = json.loads(text)
            if frame.get("type") == "new_message" and frame["message"]["content"] == "会丢的回答" and not dropped:
                dropped.append(frame)
                return
            route.send(text)

        route.on_message(upstream)
        server.on_message(downstream)

    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer,
                                     setup=lambda page: page.route_web_socket(re.compile(".*"), lossy))
    send(chat, "会丢的回答")
    failed = chat.locator(".pending .msg[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed.locator(".state-text")).to_have_text("发送失败")
    failed.locator(".retry").click()
    expect_bodies(chat, ["会丢的回答"])
    assert len(sent) == 2 and sent[0]["client_msg_id"] == sent[1]["client_msg_id"], sent
    _, history = chat_server.http("GET", f"/api/sessions/{session_id}/messages", headers={"X-User-Id": str(customer)})
    stored = [(m["content"], m["client_msg_id"]) for m in history["messages"]]
    assert stored == [("会丢的回答", sent[0]["client_msg_id"])]
    assert shown_ids(chat) == [dropped[0]["message"]["id"]]


def test_scroll_back_loads_earlier_history_page_by_page(pages, chat_server: Server, agent_id: int) -> None:
    """A long history opens at its newest page; scrolling back loads the earlier ones (before_id), each once."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    contents = [f"历史 {i:03d}" for i in range(120)]
    for text in contents:
        status, _ = chat_server.http("POST", f"/api/sessions/{session_id}/messages", {"content": text},
                                     headers={"X-User-Id": str(customer)})
        assert status == 201
    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    expect(console.locator(".log .msg")).to_have_count(50)
    assert bodies(console) == contents[-50:]
    console.click(".earlier")
    expect(console.locator(".log .msg")).to_have_count(100)
    console.locator(".scroller").evaluate("node => { node.scrollTop = 0; node.dispatchEvent(new Event('scroll')); }")
    expect(console.locator(".log .msg")).to_have_count(120)
    expect(console.locator(".earlier")).to_be_hidden()
    assert bodies(console) == contents


XSS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>", '"><svg onload=window.__xss=3>']


def test_markup_in_messages_renders_as_text(pages, chat_server: Server, agent_id: int) -> None:
    """Messages with HTML are shown as their text on both pages; nothing in them runs or becomes an element."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    for text in XSS:
        send(chat, text)
    expect_bodies(console, XSS)
    expect_bodies(chat, XSS)
    for page in (chat, console):
        assert page.locator(".log img, .log script, .log svg").count() == 0
        assert page.evaluate("window.__xss") is None


def test_a_customer_id_cannot_open_the_agent_views(pages, chat_server: Server, agent_id: int) -> None:
    """A customer signing in to the console is refused, also with a forged saved identity; the API agrees."""
    customer = fresh_id()
    chat_server.open_session(customer)
    page = pages(f"{chat_server.http_url}/console/")
    page.fill("#signin-user", str(customer))
    page.press("#signin-user", "Enter")
    expect(page.locator("#signin-error")).to_have_text("该用户不是客服坐席，不能使用坐席工作台。")
    expect(page.locator("#workspace")).to_be_hidden()
    page.evaluate(f"sessionStorage.setItem('console.auth', JSON.stringify({{userId: '{customer}'}}))")
    page.reload()
    expect(page.locator("#signin-error")).to_have_text("该用户不是客服坐席，不能使用坐席工作台。")
    expect(page.locator("#workspace")).to_be_hidden()
    assert page.locator(".session").count() == 0
    status, body = chat_server.http("GET", "/web/whoami", headers={"X-User-Id": str(customer)})
    assert (status, body["is_agent"]) == (200, False)
    _, listed = chat_server.http("GET", "/api/sessions?status=all", headers={"X-User-Id": str(customer)})
    assert {s["user_id"] for s in listed["sessions"]} == {customer}  # the API itself shows a customer only theirs


def test_interface_is_chinese_by_default_and_english_with_lang_en(pages, chat_server: Server, agent_id: int) -> None:
    """Chinese by default; ?lang=en switches every label, and the language link switches back."""
    page = pages(f"{chat_server.http_url}/console/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#signin-form button[type=submit]")).to_have_text("登录")
    page = sign_in_agent(pages, chat_server, agent_id, "?lang=en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#queue-title")).to_contain_text("Queue")
    expect(page.locator("#trust-warning")).to_contain_text("identities are not verified")
    expect(page.locator("#lang-link")).to_have_text("中文")
    chat = pages(f"{chat_server.http_url}/chat/?lang=en")
    expect(chat.locator("#start-form button[type=submit]")).to_have_text("Start chatting")


def test_console_works_at_phone_width_and_by_keyboard(pages, chat_server: Server, agent_id: int) -> None:
    """On a phone the list and the conversation take turns; a session opens and a reply goes out by keyboard."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "手机上能用吗")
    console = sign_in_agent(pages, chat_server, agent_id, viewport=PHONE)
    item = console.locator(f'button.session[data-session-id="{session_id}"]')
    expect(item).to_be_visible()
    expect(console.locator("#conversation")).to_be_hidden()
    item.focus()
    with console.expect_response(lambda r: "/api/sessions?status=active" in r.url):
        pass  # the lists refresh under the keyboard user: the focus stays on the same session
    focused = console.evaluate("document.activeElement.dataset.sessionId")
    assert focused == str(session_id)
    console.keyboard.press("Enter")
    expect(console.locator("#conversation")).to_be_visible()
    expect(console.locator(".lists")).to_be_hidden()
    expect_bodies(console, ["手机上能用吗"])
    console.locator("#composer-input").focus()
    console.keyboard.type("可以")
    console.keyboard.press("Enter")
    expect_bodies(chat, ["手机上能用吗", "可以"])
    width = console.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width  # nothing sticks out sideways
    console.click("#back")
    expect(console.locator(".lists")).to_be_visible()


def test_agent_closes_the_session_and_the_customer_sees_it(pages, chat_server: Server, agent_id: int) -> None:
    """Close from the console: both pages become read-only; the customer can start a new conversation."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "没问题了")
    console = sign_in_agent(pages, chat_server, agent_id)
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    console.click("#close")
    expect(console.locator("#composer-input")).to_be_disabled()
    expect(chat.locator(".closed-note")).to_be_visible()
    expect(chat.locator("#composer-input")).to_be_disabled()
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_have_count(0)
    chat.click("#again")
    expect(chat.locator("#composer-input")).to_be_enabled()
    expect(chat.locator(".log .msg")).to_have_count(0)
    assert chat_server.open_session(customer) != session_id


def test_an_inline_script_injected_into_the_page_is_blocked_by_its_policy(
        browser: Browser, chat_server: Server) -> None:
    """Even markup that got into the page could not run a script: the CSP allows only the service's files."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{chat_server.http_url}/chat/")
    blocked = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener('securitypolicyviolation', e => resolve(e.violatedDirective), {once: true});
        const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.body.append(s);
        setTimeout(() => resolve(window.__inline ? 'ran' : 'none'), 2000);
    })""")
    context.close()
    assert blocked.startswith("script-src"), blocked


def test_jwt_tokens_handed_in_the_fragment_sign_in_and_never_reach_the_server_log(
        pages, server_factory: Callable[..., Server], mariadb_url: str) -> None:
    """AUTH_MODE=jwt: tokens in the URL fragment sign both pages in, leave the address bar, and are in no log line."""
    server = server_factory(database_url=mariadb_url, **JWT_SETTINGS)
    agent, customer = fresh_id(), fresh_id()
    agent_token, customer_token = hs256(agent, role="agent"), hs256(customer)
    chat = pages(f"{server.http_url}/chat/#token={customer_token}")
    expect(chat.locator("#conversation")).to_be_visible()
    expect(chat.locator("#trust-warning")).to_be_hidden()
    assert chat.url == f"{server.http_url}/chat/"
    expect(chat.locator("#composer-input")).to_be_enabled()
    send(chat, "令牌登录的客户")
    expect_bodies(chat, ["令牌登录的客户"])
    status, listed = server.http("GET", "/api/sessions", headers={"Authorization": f"Bearer {customer_token}"})
    session_id = listed["sessions"][0]["id"]

    console = pages(f"{server.http_url}/console/#token={agent_token}")
    expect(console.locator("#workspace")).to_be_visible()
    assert console.url == f"{server.http_url}/console/"
    expect(console.locator("#me-label")).to_have_text(f"坐席 #{agent}")
    expect(console.locator(f'button.session[data-session-id="{session_id}"]')).to_be_visible()
    open_in_console(console, session_id)
    send(console, "令牌登录的坐席")
    expect_bodies(chat, ["令牌登录的客户", "令牌登录的坐席"])
    console.reload()  # the token stays in the tab (sessionStorage), not in the address
    expect_bodies(console, ["令牌登录的客户", "令牌登录的坐席"])

    pasted = pages(f"{server.http_url}/console/?lang=en")  # or pasted into the sign-in form
    pasted.fill("#signin-token", agent_token)
    pasted.click("#signin-form button[type=submit]")
    expect(pasted.locator("#workspace")).to_be_visible()
    expect(pasted.locator("#me-label")).to_have_text(f"Agent #{agent}")

    refused = pages(f"{server.http_url}/console/#token={customer_token}")  # a customer's token: no agent views
    expect(refused.locator("#signin-error")).to_have_text("该用户不是客服坐席，不能使用坐席工作台。")
    expect(refused.locator("#workspace")).to_be_hidden()

    log = server.log_path.read_text(errors="replace")  # the whole log, not its tail
    assert "GET /console/ HTTP/1.1" in log and "GET /chat/ HTTP/1.1" in log
    for token in (agent_token, customer_token):
        assert token not in log and token.split(".")[2] not in log


# -- the agent desk (claim, transfer, status, queue): run once the server offers it --------------------------------


@pytest.mark.desk
def test_agent_claims_a_waiting_customer_from_the_queue(pages, chat_server: Server, desk_agent: int, desk) -> None:
    """The queue lists the waiting customer with a waiting time; Claim moves it to "my sessions"."""
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "有人吗")
    console = sign_in_agent(pages, chat_server, desk_agent)
    queued = console.locator(f'#queue-list button[data-session-id="{session_id}"]')
    expect(queued).to_be_visible()
    expect(queued.locator(".waiting")).to_have_text(re.compile(r"等待 \d+:\d\d"))
    queued.click()
    expect(console.locator("#claim")).to_be_visible()
    console.click("#claim")
    expect(console.locator(f'#mine-list button[data-session-id="{session_id}"]')).to_be_visible()
    expect(console.locator(f'#queue-list button[data-session-id="{session_id}"]')).to_have_count(0)
    expect(console.locator("#notice")).to_have_text(f"已接入会话 #{session_id}")
    expect(chat.locator("#chat-status")).to_have_text(f"客服 #{desk_agent} 为您服务")
    send(console, "您好，我来处理")
    expect_bodies(chat, ["有人吗", "您好，我来处理"])


@pytest.mark.desk
def test_transfer_moves_the_conversation_to_the_second_agents_console(
        pages, chat_server: Server, desk_agent: int, desk) -> None:
    """A transfer takes the session from the first agent's list to the second's, with its history."""
    second = chat_server.add_agent(fresh_id())
    customer = fresh_id()
    chat, session_id = open_customer(pages, chat_server, customer)
    send(chat, "我要退货")
    first_console = sign_in_agent(pages, chat_server, desk_agent)
    second_console = sign_in_agent(pages, chat_server, second)
    first_console.click(f'#queue-list button[data-session-id="{session_id}"]')
    first_console.click("#claim")
    expect(first_console.locator(f'#mine-list button[data-session-id="{session_id}"]')).to_be_visible()
    send(first_console, "我帮您转给售后")
    expect_bodies(chat, ["我要退货", "我帮您转给售后"])
    first_console.focus("#transfer-select")
    expect(first_console.locator(f'#transfer-select option[value="{second}"]')).to_be_enabled()
    first_console.select_option("#transfer-select", str(second))
    first_console.click("#transfer")
    expect(first_console.locator(f'#mine-list button[data-session-id="{session_id}"]')).to_have_count(0)
    expect(first_console.locator("#notice")).to_have_text(f"会话 #{session_id} 已转接给坐席 #{second}")
    mine = second_console.locator(f'#mine-list button[data-session-id="{session_id}"]')
    expect(mine).to_be_visible()
    expect(second_console.locator("#notice")).to_have_text(f"会话 #{session_id} 已从坐席 #{desk_agent} 转接给你")
    mine.click()
    expect_bodies(second_console, ["我要退货", "我帮您转给售后"])
    send(second_console, "售后为您服务")
    expect_bodies(chat, ["我要退货", "我帮您转给售后", "售后为您服务"])
    expect(chat.locator("#chat-status")).to_have_text(f"客服 #{second} 为您服务")


@pytest.mark.desk
def test_status_selector_sets_the_agents_status(pages, chat_server: Server, desk_agent: int, desk) -> None:
    """Away and back online from the selector; GET /api/agents agrees each time."""
    console = sign_in_agent(pages, chat_server, desk_agent)
    expect(console.locator("#status-select")).to_be_visible()

    def status_of() -> Any:
        _, body = chat_server.http("GET", "/api/agents", headers={"X-User-Id": str(desk_agent)})
        return next(a["status"] for a in body["agents"] if a["user_id"] == desk_agent)

    for status in ("away", "online"):
        console.select_option("#status-select", status)
        expect(console.locator("#status-select")).to_have_value(status)
        assert wait_until(lambda s=status: status_of() == s), status


@pytest.mark.desk
def test_customer_page_shows_its_queue_position_when_routing_is_auto(
        pages, server_factory: Callable[..., Server], mariadb_database: str) -> None:
    """ROUTING=auto with no agent online: each waiting customer sees their place in the queue."""
    server = server_factory(database_url=mariadb_database, ROUTING="auto")
    probe_agent = server.add_agent(fresh_id())
    if not desk_offered(server, probe_agent):
        pytest.skip("the server does not offer the agent-desk API yet (GET /api/queue answers 404)")
    first, _ = open_customer(pages, server, fresh_id())
    second, _ = open_customer(pages, server, fresh_id())
    expect(first.locator("#chat-status")).to_have_text("排队中，下一位就是您")
    expect(second.locator("#chat-status")).to_have_text("排队中，您前面还有 1 位")


def wait_until(predicate: Callable[[], bool], seconds: float = WAIT_MS / 1000) -> bool:
    """Poll an HTTP answer until it holds (there is no event to wait on over HTTP)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()
