"""Rough edges of the UI (issue 9, item 7): error pages, ${VAR} warnings, the import preview
of a refused import, and a keys.yaml that does not parse."""
from __future__ import annotations

import re

from uihelpers import ADMIN_TOKEN, CONFIG, AuthActions, make_app

BROKEN = CONFIG.replace("  strategy: round_robin", "  strategy: [round_robin")  # line 32


def banners(page: str) -> list[str]:
    return [b.strip() for b in re.findall(r'class="banner[^"]*"[^>]*>([^<]*)<', page) if b.strip()]


def test_404_and_405_are_the_apps_own_page_with_the_nav(signed_in, client):
    page = client.get("/no/such/page").get_data(as_text=True)
    assert client.get("/no/such/page").status_code == 404
    assert '<nav class="nav"' in page and "There is no page at this address." in page
    assert "The requested URL was not found" not in page  # werkzeug's text
    r = client.get("/logout")
    assert r.status_code == 405
    assert '<nav class="nav"' in r.get_data(as_text=True)
    assert "does not accept this kind of request" in r.get_data(as_text=True)


def test_404_in_chinese(signed_in, client):
    client.set_cookie("lang", "zh")
    page = client.get("/no/such/page").get_data(as_text=True)
    assert "这个地址没有页面。" in page and "页面不存在" in page and "仪表盘" in page


def test_404_signed_out_shows_no_nav_and_json_stays_json(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404 and '<nav class="nav"' not in r.get_data(as_text=True)
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.is_json and r.json["error"] == "There is no page at this address."


def test_a_var_key_warns_once_and_ungarbled(signed_in, client):
    r = signed_in.post("/keys/new", {"name": "k9", "provider": "openai", "key": "${MY_KEY_VAR}",
                                     "enabled": "1"})
    assert r.status_code == 302
    for _ in range(2):  # right after the save (the flash), then from the file alone
        page = client.get("/keys/").get_data(as_text=True)
        warnings = [b for b in banners(page) if "is not set" in b]
        assert warnings == ["key &#39;k9&#39; skipped: ${MY_KEY_VAR} is not set"], warnings
        assert "${M…" not in page
    page = client.get("/").get_data(as_text=True)
    assert [b for b in banners(page) if "is not set" in b] == [
        "key &#39;k9&#39; skipped: ${MY_KEY_VAR} is not set"]


def test_a_refused_import_says_so_on_every_row(signed_in):
    text = "version: 1\nkeys:\n  - name: bad-1\n    provider: openai\n" \
           "    key: sk-some-imported-secret-000099\n    rpm: -5\n"
    page = signed_in.post("/transfer/import", {"text": text}).get_data(as_text=True)
    assert "Nothing will be imported: the whole import is refused" in page
    assert "expected a positive integer" in page
    assert "will be added" not in page and "refused" in page
    assert "/transfer/import/confirm" not in page  # no button to import


def test_a_broken_file_still_signs_in_with_the_token_and_shows_its_line(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(BROKEN)
    client = make_app(path).test_client()
    auth = AuthActions(client, path)
    login = client.get("/login").get_data(as_text=True)
    assert "admin password is unknown" not in login and "cannot be parsed" not in login
    assert auth.login(ADMIN_TOKEN).status_code == 302
    for page_path in ("/", "/keys/", "/clients/"):
        r = client.get(page_path)
        assert r.status_code == 200
        shown = " ".join(banners(r.get_data(as_text=True)))
        assert "keys.yaml:32: invalid YAML" in shown, page_path
        assert "no clients: section" not in shown  # not a claim about a file it cannot read


def test_a_broken_file_with_only_a_password_says_where_on_the_sign_in_page(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(BROKEN + 'admin:\n  password_hash: "scrypt:32768:8:1$abc$def"\n')
    client = make_app(path, admin_token=None).test_client()
    assert client.get("/keys/").status_code == 302  # locked, never open
    page = client.get("/login").get_data(as_text=True)
    assert "keys.yaml, line 32: invalid YAML" in page
    assert "admin.password_hash" in page and "KEYMUX_ADMIN_TOKEN" in page
    assert str(tmp_path) not in page  # the path is not for a signed-out visitor
    client.set_cookie("lang", "zh")
    assert "keys.yaml 第 32 行" in client.get("/login").get_data(as_text=True)
