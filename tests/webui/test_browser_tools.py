"""The keys page tools in real headless Chromium, before a real gateway and the mock upstream:
Test (through the gateway), bulk actions, a key's health, usage by client."""
from __future__ import annotations

import pytest

from test_browser import K1, K2, WAIT_MS, browser, client, login, mock, shot, stack  # noqa: F401
from uihelpers import ADMIN_TOKEN


def test_test_a_key_bulk_disable_health_and_usage(stack, browser, mock, tmp_path):  # noqa: F811
    gw, ui = stack
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: d.accept())
    login(page, ui)

    mock.set_behavior(K1, status=401)
    page.goto(ui.url + "/keys/")
    page.click('tr[data-key="mock-1"] >> button:text-is("Test")')
    page.wait_for_selector("text=Key mock-1 failed the test: HTTP 401", timeout=WAIT_MS)
    assert "its state is now dead" in page.content()
    mock.set_behavior(K1, status=None)
    page.click('tr[data-key="mock-1"] >> button:text-is("Test")')
    page.wait_for_selector("text=Key mock-1 works: HTTP 200", timeout=WAIT_MS)
    shot(page, tmp_path, "keys-tools")

    client(gw).chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    page.check('input[name=names][value="mock-1"]')
    page.check('input[name=names][value="mock-2"]')
    page.select_option("#bulk-action", "disable")
    page.click('#bulk button:text-is("Apply")')
    page.wait_for_selector("text=Disabled 2 keys: mock-1, mock-2.", timeout=WAIT_MS)
    assert gw.config.read_text().count("enabled: false") == 2
    page.check('input[name=names][value="mock-1"]')
    page.check('input[name=names][value="mock-2"]')
    page.select_option("#bulk-action", "enable")
    page.click('#bulk button:text-is("Apply")')
    page.wait_for_selector("text=Enabled 2 keys: mock-1, mock-2.", timeout=WAIT_MS)

    page.click('tr[data-key="mock-1"] >> a:text-is("mock-1")')
    page.wait_for_selector("text=Health of mock-1")
    assert len(page.query_selector_all(".health-strip .cell")) == 144
    shot(page, tmp_path, "key-health")
    page.click("nav >> text=Usage")
    page.wait_for_selector("#usage-table")
    shot(page, tmp_path, "usage")
    for secret in (K1, K2, ADMIN_TOKEN):
        assert secret not in page.content()
    assert not errors, errors
    page.close()
