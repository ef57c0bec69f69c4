"""The rough edges that are visual, in real headless Chromium (no gateway needed: the UI says
it cannot reach one). Screenshots as in test_browser.py (KEYMUX_UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import pytest

from test_browser import CHROMIUM, UIServer, browser, shot  # noqa: F401 (browser: a fixture)
from uihelpers import ADMIN_TOKEN, CONFIG, UNREACHABLE

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}


@pytest.fixture
def ui(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG.replace("${ANTHROPIC_KEY_1}", "${ANTHROPIC_KEY_UNSET}"))
    with UIServer(path, UNREACHABLE) as server:
        server.config = path
        yield server


def sign_in(page, ui, lang: str = "en") -> None:
    page.context.add_cookies([{"name": "lang", "value": lang, "url": ui.url}])
    page.goto(ui.url + "/login")
    page.fill("input[name=secret]", ADMIN_TOKEN)
    page.click("button.primary")
    page.wait_for_url(ui.url + "/")


@pytest.mark.parametrize("lang,text", [("en", "There is no page at this address."),
                                       ("zh", "这个地址没有页面。")])
def test_404_page_has_the_nav_in_both_languages(ui, browser, tmp_path, lang, text):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    sign_in(page, ui, lang)
    response = page.goto(ui.url + "/no/such/page")
    assert response.status == 404
    assert text in page.inner_text("main")
    assert page.locator("nav.nav a").count() >= 5
    assert page.locator("nav.nav a").first.is_visible()
    shot(page, tmp_path, f"error-404-{lang}")
    page.click("main a.button")  # back to the dashboard
    page.wait_for_url(ui.url + "/")
    page.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_nav_entry_is_reachable_on_a_phone(ui, browser, tmp_path, lang):
    page = browser.new_page(**PHONE)
    sign_in(page, ui, lang)
    page.goto(ui.url + "/keys/")
    links = page.locator("nav.nav a")
    width = page.evaluate("window.innerWidth")
    for i in range(links.count()):
        box = links.nth(i).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (i, box)
        # nothing masks or clips it: the nav neither scrolls nor fades
        hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('nav a')?.href",
                            [box["x"] + box["width"] - 3, box["y"] + box["height"] / 2])
        assert hit == links.nth(i).evaluate("a => a.href")
    assert page.evaluate("getComputedStyle(document.querySelector('nav.nav')).maskImage") in ("none", "")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    shot(page, tmp_path, f"keys-phone-{lang}", full_page=False)
    page.locator("nav.nav a[href$='/transfer/']").click()  # the one that hid behind the fade
    page.wait_for_url(ui.url + "/transfer/")
    page.close()


def test_a_var_key_warns_once_in_the_browser(ui, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    sign_in(page, ui)
    page.goto(ui.url + "/keys/")
    warnings = page.locator(".banner.warning", has_text="is not set")
    assert warnings.count() == 1
    assert "${ANTHROPIC_KEY_UNSET}" in warnings.inner_text()
    assert "…" not in warnings.inner_text()
    page.close()


def test_a_broken_keys_yaml_shows_its_line_after_a_token_sign_in(ui, browser, tmp_path):
    ui.config.write_text(ui.config.read_text().replace("  strategy: round_robin",
                                                       "  strategy: [round_robin"))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    sign_in(page, ui)
    error = page.locator(".banner.error:not([hidden])", has_text="does not validate")
    assert "keys.yaml:32: invalid YAML" in error.inner_text()
    shot(page, tmp_path, "dashboard-broken-config")
    page.close()
