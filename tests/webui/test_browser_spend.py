"""Spend on the dashboard in real headless Chromium: totals, the tables by key and client, a
key held back by its budget, and the 30-day chart drawn from the state store. The gateway is
the stub (its stats' ``spend`` read from the same store), so the figures are known.

With KEYMUX_UPDATE_SCREENSHOTS=1 the spend panel goes to docs/screenshots/dashboard-spend.png.
"""
from __future__ import annotations

import os
import time

import pytest

import ui_seed
from test_browser import CHROMIUM, DOCS, UIServer, browser, login, page_errors  # noqa: F401 (browser: a fixture)
from ui_stub_gateway import StubGateway
from uihelpers import CONFIG, KEY_ANTHROPIC
from webui import spend  # noqa: E402
from webui.store import Store  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
WAIT_MS = 15_000
KEYS = [("openai-1", "openai"), ("claude-1", "anthropic")]


def stats_from(db, now: float) -> dict:
    """The gateway's stats for the seeded store: its spend, and claude-1 at its budget."""
    section = spend.from_store(Store(db), spend.Periods(), now)
    for block in ("today", "this_month"):
        section[block].update(by_provider={}, by_model={})
    keys = [{"name": name, "provider": provider, "state": "ok", "requests": 40, "successes": 39,
             "failures": 1, "held_back": []} for name, provider in KEYS]
    keys[1]["held_back"] = [{"reason": "budget", "detail": "monthly_usd", "model": "",
                             "seconds_left": 9 * 86400.0}]
    return {"uptime_s": 100.0, "totals": {}, "keys": keys, "spend": section}


def test_the_dashboard_shows_spend_and_draws_the_chart(browser, tmp_path):
    now = time.time()
    config = tmp_path / "keys.yaml"
    config.write_text(CONFIG.replace("${ANTHROPIC_KEY_1}", KEY_ANTHROPIC))  # every key loaded
    db = tmp_path / "state" / "keymux.db"
    ui_seed.synthetic_spend(db, now, KEYS)
    with StubGateway(stats_from(db, now)) as stub, UIServer(config, stub.url) as ui:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = page_errors(page)
        login(page, ui)

        today = stub.stats["spend"]["today"]["total"]
        page.wait_for_function("document.getElementById('s-today').textContent.startsWith('$')",
                               timeout=WAIT_MS)
        assert page.inner_text("#s-today") == spend.money(today["usd"])
        if today["unknown"]:
            assert f"unknown-priced requests: {today['unknown']}" in page.inner_text("#s-today-unknown")
        keys = page.locator("#spend-keys tbody tr")
        assert keys.count() == 2 and keys.first.get_attribute("data-name") == "claude-1"  # most spent
        clients = page.locator("#spend-clients tbody tr")
        assert clients.count() == 3
        assert "no client" in page.inner_text('#spend-clients tr[data-name="-"]')
        held = page.wait_for_selector('#keys-body tr[data-key="claude-1"][data-budget="held"]',
                                      timeout=WAIT_MS)
        assert "held back: budget reached · 9 d left" in held.inner_text()
        assert page.inner_text('#keys-body tr[data-key="openai-1"] td.spend').startswith("$")
        wrap = page.eval_on_selector("#keys-table", "t => [t.parentElement.scrollWidth,"
                                                     " t.parentElement.clientWidth]")
        assert wrap[0] <= wrap[1], wrap  # the Spend column does not push the actions off

        bars = """() => { const ch = window.Chart && Chart.getChart('chart-spend');
            if (!ch) return 0; let n = 0;
            ch.data.datasets.forEach((d, i) => n += ch.getDatasetMeta(i).data.filter(
              b => b.height > 0).length); return n; }"""
        page.wait_for_function(bars, timeout=WAIT_MS)
        chart = page.evaluate("() => { const ch = Chart.getChart('chart-spend');"
                              " return [ch.data.labels.length, ch.data.datasets.map(d => d.label)]; }")
        assert chart[0] == 30 and sorted(chart[1]) == ["anthropic", "openai"]
        page.click('[data-spend-by="key"]')
        page.wait_for_function("() => Chart.getChart('chart-spend').data.datasets"
                               ".some(d => d.label === 'claude-1')", timeout=WAIT_MS)
        page.click('[data-spend-by="provider"]')
        page.wait_for_function("() => Chart.getChart('chart-spend').data.datasets"
                               ".some(d => d.label === 'openai')", timeout=WAIT_MS)
        page.wait_for_timeout(200)
        panel = page.locator("#spend")
        path = tmp_path / "dashboard-spend.png"
        panel.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        if os.environ.get("KEYMUX_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            panel.screenshot(path=str(DOCS / "dashboard-spend.png"))
        assert not errors, errors
        page.close()
