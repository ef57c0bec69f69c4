"""The UI in real headless Chromium, in front of a real gateway and the mock upstream.

Screenshots go to the test's tmp dir; with KEYMUX_UPDATE_SCREENSHOTS=1 also to
docs/screenshots/ (that is how the ones in docs/ui.md were made).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import openai
import pytest

from uihelpers import ADMIN_TOKEN, ROOT
from webui import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = ROOT / "docs" / "screenshots"

K1, K2, K3 = "sk-ui-mock-key-one-0001", "sk-ui-mock-key-two-0002", "sk-ui-mock-key-three-0003"
WAIT_MS = 15_000


def config_text(mock_url: str, state_dir: str | None = None) -> str:
    return f"""\
# keymux: the browser test's pool
version: 1
providers:
  mock:
    base_url: {mock_url}/v1
    models: ["gpt-*", "mock-*"]
    stream_usage: true
    price: {{input: 2.5, output: 10}}  # a self-hosted model's price, USD per 1M tokens
keys:
  - name: mock-1
    provider: mock
    key: {K1}
    rpm: 600
  - name: mock-2
    provider: mock
    key: {K2}
    weight: 2
routing:
  max_attempts: 3
  cooldown:
    rate_limited_s: 30
""" + (f"state_dir: {state_dir}\n" if state_dir else "")


class UIServer:
    """The Flask app on a werkzeug server in a thread, as ``keymux ui`` serves it."""

    def __init__(self, config: Path, gateway_url: str):
        from werkzeug.serving import make_server
        env = {**os.environ, "KEYMUX_ADMIN_TOKEN": ADMIN_TOKEN}
        app = create_app(config, gateway_url=gateway_url,
                         test_config={"KEYMUX_ENVIRON": env})
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def mock():
    from keypool.demo.mock_upstream import MockUpstream
    with MockUpstream() as m:
        yield m


@pytest.fixture(scope="module")
def stack(mock, tmp_path_factory):
    from e2e.harness import GatewayProcess
    work = tmp_path_factory.mktemp("ui-stack")
    with GatewayProcess(work, config_text(mock.base_url),
                        env={"KEYMUX_ADMIN_TOKEN": ADMIN_TOKEN},
                        confdir=work / "mitmproxy") as gw:
        with UIServer(gw.config, gw.url) as ui:
            yield gw, ui


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def shot(page, tmp: Path, name: str, full_page: bool = True) -> None:
    path = tmp / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000
    if os.environ.get("KEYMUX_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=full_page)


def login(page, ui) -> None:
    page.goto(ui.url + "/")
    page.wait_for_url("**/login?next=/")
    page.fill("input[name=secret]", ADMIN_TOKEN)
    page.click("button.primary")
    page.wait_for_url(ui.url + "/")


def page_errors(page) -> list[str]:
    """The page's script errors and console errors, collected as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


def row(page, name: str, state: str):
    return page.wait_for_selector(f'#keys-body tr[data-key="{name}"][data-state="{state}"]',
                                  timeout=WAIT_MS)


def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="any-client-key", max_retries=0, timeout=20)


def test_login_add_key_see_it_then_disable_it(stack, browser, mock, tmp_path):
    gw, ui = stack
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    login(page, ui)
    row(page, "mock-1", "ok")
    row(page, "mock-2", "ok")

    page.click("text=Keys")
    page.click("text=+ Add key")
    page.fill("input[name=name]", "mock-3")
    page.select_option("select[name=provider]", "mock")
    page.fill("input[name=key]", K3)
    page.fill("input[name=rpm]", "120")
    page.click("button.primary")
    page.wait_for_selector("text=Key mock-3 added.")
    assert K3 not in page.content()
    shot(page, tmp_path, "keys")

    page.click("nav >> text=Dashboard")
    row(page, "mock-3", "ok")  # the gateway reloaded the file; the dashboard polls
    for _ in range(6):
        client(gw).chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "hi"}])
    page.wait_for_function(
        "() => document.querySelector('#t-requests').textContent.replace(/\\D/g, '') >= 6",
        timeout=WAIT_MS)

    page.click("text=Keys")
    page.click('tr[data-key="mock-3"] >> text=Disable')
    page.wait_for_selector("text=Key mock-3 disabled.")
    page.click("nav >> text=Dashboard")
    row(page, "mock-3", "disabled")
    assert "enabled: false" in gw.config.read_text()
    for secret in (K1, K2, K3, ADMIN_TOKEN):
        assert secret not in page.content()
    assert not errors, errors
    page.close()


LONG_MODEL = "gpt-4o-2024-08-06-extended-context-preview-with-a-really-long-name"


def test_a_429_cools_one_model_the_key_stays_usable_and_reset_clears_it(stack, browser, mock, tmp_path):
    """At 1280 px a long model name wraps: the row's "Reset cooldown" stays on screen."""
    gw, ui = stack
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    login(page, ui)
    row(page, "mock-1", "ok")
    mock.set_behavior(K1, status=429, headers={"Retry-After": "30"})
    c = client(gw)
    for _ in range(4):  # round robin: within a few requests mock-1 is asked and answers 429
        c.chat.completions.create(model=LONG_MODEL, messages=[{"role": "user", "content": "hi"}])
        if mock.count(K1, 429):
            break
    assert mock.count(K1, 429) >= 1
    cooling = page.wait_for_selector('#keys-body tr[data-key="mock-1"][data-state="ok"]'
                                     '[data-cooling-models="1"]', timeout=WAIT_MS)
    text = cooling.query_selector("td.state .cooling-model").inner_text()
    assert f"cooling for {LONG_MODEL} · serving others" in text
    seconds = int(text.split("·")[-1].split("s left")[0].strip())
    assert 20 <= seconds <= 30
    usable = page.inner_text("#t-usable")
    ok_rows = len(page.query_selector_all('#keys-body tr[data-state="ok"]'))
    assert int(usable.split("/")[0]) == ok_rows  # mock-1 among the usable keys
    assert "1 cooling for some models" in page.inner_text("#t-partial")
    button = cooling.query_selector("td.actions button")
    box = button.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 1280, box
    wrap = page.eval_on_selector(".table-wrap", "w => [w.scrollWidth, w.clientWidth]")
    assert wrap[0] <= wrap[1], wrap  # no horizontal scroll hiding the actions
    mock.set_behavior(K1, status=None)
    button.click()
    page.wait_for_selector("text=Cooldown of mock-1 reset.", timeout=WAIT_MS)
    page.wait_for_selector('#keys-body tr[data-key="mock-1"][data-cooling-models="0"]', timeout=WAIT_MS)
    page.close()


def test_numbers_times_and_the_first_minute_of_latency(stack, browser, mock):
    """Client success beside attempt success; local times with UTC on hover, the request
    log too; the latency chart draws a minute that has no neighbours."""
    gw, ui = stack
    c = client(gw)
    for _ in range(3):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    login(page, ui)
    page.wait_for_function("document.getElementById('t-client-success').textContent.endsWith('%')",
                           timeout=WAIT_MS)
    assert "client requests" in page.inner_text("#t-client-requests")
    assert page.get_attribute("#updated", "title").endswith(" UTC")
    # the rows reach the store within a flush; the chart then has this minute's latency
    # drawn: a minute with latency that is a dot, or the end of a line to its neighbour
    radius = """() => { const ch = window.Chart && Chart.getChart('chart-latency');
        if (!ch) return 0; let drawn = 0;
        ch.data.datasets.forEach((d, i) => d.data.forEach((p, j) => {
          if (p.y == null) return;
          const near = (d.data[j - 1] || {}).y != null || (d.data[j + 1] || {}).y != null;
          if (near || ch.getDatasetMeta(i).data[j].options.radius > 0) drawn += 1; }));
        return drawn; }"""
    deadline = time.monotonic() + 20
    while page.evaluate(radius) == 0 and time.monotonic() < deadline:
        page.click('[data-range="hour"]')  # reloads the history
        page.wait_for_timeout(500)
    assert page.evaluate(radius) > 0
    page.click("nav >> text=Request log")
    first = page.wait_for_selector("time[data-local]", timeout=WAIT_MS)
    assert first.get_attribute("title").endswith(" UTC") and "UTC" not in first.inner_text()
    page.close()


def test_screenshots_for_the_docs(stack, browser, mock, tmp_path):
    """Light, dark and phone dashboards, the request log: a UI over a day of made-up history."""
    import ui_seed
    gw, _ = stack
    state = tmp_path / "state"
    ui_seed.synthetic_day(state / "keymux.db", time.time(),
                          [("mock-1", "mock"), ("mock-2", "mock"), ("mock-3", "mock")])
    ui_seed.synthetic_spend(state / "keymux.db", time.time(),  # a month for the spend chart
                            [("mock-1", "mock"), ("mock-2", "mock"), ("mock-3", "mock")])
    docs_config = tmp_path / "keys.yaml"
    docs_config.write_text(gw.config.read_text().replace("routing:", f"state_dir: {state}\nrouting:"))
    mock.set_behavior(K2, status=429, headers={"Retry-After": "25"})
    for _ in range(3):
        try:
            client(gw).chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "hi"}])
        except openai.RateLimitError:
            pass  # every key cooling: fine for a picture
    mock.set_behavior(K2, status=None)
    with UIServer(docs_config, gw.url) as ui:
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        login(page, ui)
        page.wait_for_selector('#keys-body tr[data-key="mock-3"]')
        # three usage charts and the spend chart
        page.wait_for_function("() => document.querySelectorAll('canvas').length === 4 && window.Chart"
                               " && Object.keys(window.Chart.instances).length === 4", timeout=WAIT_MS)
        page.wait_for_timeout(300)
        shot(page, tmp_path, "dashboard-light")
        page.click("#theme-toggle")
        page.wait_for_timeout(500)
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        shot(page, tmp_path, "dashboard-dark")
        page.reload()  # the choice is remembered
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        page.click("#theme-toggle")
        page.goto(ui.url + "/requests/")
        retried = page.locator("tbody", has=page.locator("td[data-label=Attempts] .muted", has_text="→"))
        retried.first.locator("button[data-expand]").click()
        retried.first.scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, tmp_path, "request-log", full_page=False)
        page.context.add_cookies([{"name": "lang", "value": "zh", "url": ui.url}])
        page.goto(ui.url + "/")
        page.wait_for_function("() => window.Chart && Object.keys(window.Chart.instances).length === 4",
                               timeout=WAIT_MS)
        page.wait_for_timeout(300)
        assert "仪表盘" in page.inner_text("nav")
        shot(page, tmp_path, "dashboard-zh")
        page.close()

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                 is_mobile=True, has_touch=True)
        login(phone, ui)
        phone.wait_for_selector('#keys-body tr[data-key="mock-1"]')
        phone.wait_for_timeout(500)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the phone page scrolls sideways ({width}px)"
        shot(phone, tmp_path, "dashboard-phone", full_page=False)
        phone.goto(ui.url + "/keys/")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.context.add_cookies([{"name": "lang", "value": "zh", "url": ui.url}])
        phone.goto(ui.url + "/")
        phone.wait_for_selector('#keys-body tr[data-key="mock-1"]')
        phone.wait_for_timeout(500)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        shot(phone, tmp_path, "dashboard-phone-zh", full_page=False)
        phone.close()
