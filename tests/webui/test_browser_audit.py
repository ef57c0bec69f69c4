"""The audit log in real headless Chromium: changes made by clicking show up on its page.

No gateway is needed (the UI runs beside an unreachable one): the audit page reads the UI's
own audit.db. Its own file so that it merges cleanly beside test_browser.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from uihelpers import CONFIG, SECRETS, UNREACHABLE, ROOT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
from test_browser import ARGS, UIServer, login, page_errors, shot  # noqa: E402

WAIT_MS = 15_000


def test_changes_made_in_the_browser_show_on_the_audit_page(tmp_path, monkeypatch):
    config = tmp_path / "keys.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("ANTHROPIC_KEY_1", SECRETS[1])
    with UIServer(config, UNREACHABLE) as ui, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors = page_errors(page)
            login(page, ui)
            page.goto(ui.url + "/keys/")
            page.once("dialog", lambda d: d.accept())  # a confirm() before a change, if any
            page.click('tr[data-key="openai-1"] >> text=Disable', timeout=WAIT_MS)
            page.wait_for_selector("text=Key openai-1 disabled.", timeout=WAIT_MS)
            page.click('tr[data-key="local-1"] >> text=Enable', timeout=WAIT_MS)
            page.wait_for_selector("text=Key local-1 enabled.", timeout=WAIT_MS)

            page.click("nav >> text=Audit log")
            page.wait_for_url(ui.url + "/audit/")
            cell = page.wait_for_selector("td[data-label=Action] >> text=key disabled",
                                          timeout=WAIT_MS)
            assert "openai-1" in cell.evaluate("e => e.closest('tr').textContent")
            assert page.locator("td[data-label=Action]").count() == 2
            assert page.get_attribute('nav a[href="/audit/"]', "aria-current") == "page"
            shot(page, tmp_path, "audit", full_page=False)
            page.select_option("select[name=action]", "key.deleted")
            page.click("form.filters button.primary")
            page.wait_for_selector("text=No change matches these filters.", timeout=WAIT_MS)

            page.click("button[name=lang][value=zh]")
            page.wait_for_selector("h1 >> text=审计日志", timeout=WAIT_MS)
            content = page.content()
            for secret in SECRETS:
                assert secret not in content
            assert not errors, errors
        finally:
            browser.close()
    if os.environ.get("KEYMUX_UPDATE_SCREENSHOTS") == "1":
        assert (ROOT / "docs" / "screenshots" / "audit.png").is_file()
