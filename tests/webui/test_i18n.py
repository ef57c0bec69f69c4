"""Every UI string has a Chinese translation; the language follows the cookie, then the browser."""
import ast
import re
from pathlib import Path

import jinja2
from jinja2 import nodes

from webui import i18n  # noqa: E402
from webui.messages_zh import ZH  # noqa: E402

PKG = Path(i18n.__file__).resolve().parent


def template_messages() -> set[str]:
    env = jinja2.Environment()
    found = set()
    for path in (PKG / "templates").rglob("*.html"):
        tree = env.parse(path.read_text())
        for call in tree.find_all(nodes.Call):
            if isinstance(call.node, nodes.Name) and call.node.name == "_" and call.args \
                    and isinstance(call.args[0], nodes.Const):
                found.add(call.args[0].value)
    return found


def python_messages() -> set[str]:
    found = set()
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("t", "N_") \
                    and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
    return found


def all_messages() -> set[str]:
    return template_messages() | python_messages() | set(i18n.JS_STRINGS)


def test_every_message_is_translated():
    messages = all_messages()
    assert len(messages) > 150
    missing = sorted(m for m in messages if m not in ZH)
    assert not missing, f"no Chinese for: {missing}"


def test_translations_keep_their_placeholders():
    for message in all_messages():
        wanted = sorted(re.findall(r"%\(\w+\)s", message))
        assert sorted(re.findall(r"%\(\w+\)s", ZH[message])) == wanted, message
        assert ("${VAR}" in message) <= ("${VAR}" in ZH[message]), message


def test_no_unused_translations():
    assert sorted(set(ZH) - all_messages()) == []


def test_language_from_cookie_then_accept_language(signed_in, client):
    assert "仪表盘" in client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    assert 'lang="en"' in client.get("/", headers={"Accept-Language": "de-DE"}).get_data(as_text=True)
    r = client.post("/language", data={"csrf_token": signed_in.csrf(), "lang": "zh", "next": "/keys/"})
    assert r.status_code == 302 and r.headers["Location"] == "/keys/"
    page = client.get("/keys/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'lang="zh-CN"' in page and "添加密钥" in page
    assert "尚未配置" not in client.get("/api/stats").get_data(as_text=True)  # data is not translated
    client.post("/language", data={"csrf_token": signed_in.csrf(), "lang": "en"})
    assert "Add key" in client.get("/keys/").get_data(as_text=True)


def test_javascript_strings_are_in_every_page(signed_in, client):
    client.set_cookie("lang", "zh")
    page = client.get("/").get_data(as_text=True)
    assert '"Reset cooldown": "' + ZH["Reset cooldown"].encode("unicode_escape").decode() in page \
        or ZH["Reset cooldown"] in page


def test_everything_is_served_from_the_package_no_cdn():
    """The UI works offline: no page or script loads anything from another origin."""
    for path in list((PKG / "templates").rglob("*.html")) + list((PKG / "static").glob("*.js")) \
            + list((PKG / "static").glob("*.css")):
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"""(fetch|import)\s*\(\s*["'](https?:)?//""", text), path
        assert "@import" not in text, path
    assert (PKG / "static" / "vendor" / "chart.umd.min.js").stat().st_size > 100_000
    assert (PKG / "static" / "vendor" / "chart.js-LICENSE.md").exists()
