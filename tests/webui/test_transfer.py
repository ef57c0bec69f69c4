"""Import (every format, preview first, secrets kept server-side) and export (placeholders)."""
import html
import json
import re

import pytest

from keypool.config import load_config
from uihelpers import ADMIN_TOKEN, CLIENT_TOKEN, ENV, KEY_ANTHROPIC, KEY_LOCAL, KEY_OPENAI
from webui import importexport  # noqa: E402
from webui.yamledit import Document  # noqa: E402


def keys_of(path, env=None):
    return {k.name: k for k in load_config(path, env={**ENV, **(env or {})}).keys}


def preview(auth, text, values=""):
    r = auth.client.post("/transfer/import", data={"csrf_token": auth.csrf(), "text": text,
                                                    "values": values})
    return r, html.unescape(r.get_data(as_text=True))


def confirm(auth, page):
    ident = re.search(r'name="ident" value="([^"]+)"', page)[1]
    return auth.client.post("/transfer/import/confirm", data={"csrf_token": auth.csrf(), "ident": ident})


ENV_LINES = """\
# from my old .env
OPENAI_API_KEY_1=sk-env-openai-one-111
export GEMINI_API_KEY_2="gm-env-gemini-two-222"
ANTHROPIC_API_KEY='sk-ant-env-333'
GROK_API_KEY=xai-env-444
GOOGLE_API_KEY=AIza-env-555
DEEPSEEK_API_KEY_7=sk-ds-666
GROQ_API_KEY=gsk-777
MISTRAL_API_KEY=ms-888
OPENROUTER_API_KEY=sk-or-999
XAI_API_KEY=xai-000
DATABASE_URL=postgres://nope
OPENAI_API_KEY_2=
"""


def test_env_lines_preview_then_import(signed_in, client, config_path):
    before = config_path.read_bytes()
    r, page = preview(signed_in, ENV_LINES)
    assert r.status_code == 200
    assert config_path.read_bytes() == before  # a preview writes nothing
    for secret in ("sk-env-openai-one-111", "gm-env-gemini-two-222", "sk-ant-env-333"):
        assert secret not in page
    assert "DATABASE_URL is not a provider key variable" in page and "OPENAI_API_KEY_2 is empty" in page
    assert "Import 10 keys" in page
    assert confirm(signed_in, page).status_code == 303
    keys = keys_of(config_path)
    assert keys["openai-2"].secret == "sk-env-openai-one-111"  # openai-1 exists: next free name
    assert keys["gemini-1"].secret == "gm-env-gemini-two-222"
    assert keys["gemini-2"].secret == "AIza-env-555"
    assert keys["anthropic-1"].secret == "sk-ant-env-333"
    assert {keys["xai-1"].secret, keys["xai-2"].secret} == {"xai-env-444", "xai-000"}
    assert {k.provider for k in keys.values()} >= {"deepseek", "groq", "mistral", "openrouter"}
    assert "# more keys go here" in config_path.read_text()


def test_a_preview_is_confirmed_only_once(signed_in, client):
    _, page = preview(signed_in, "OPENAI_API_KEY=sk-once-only-1234")
    assert confirm(signed_in, page).status_code == 303
    again = confirm(signed_in, page)
    assert again.status_code == 400 and "expired" in again.get_data(as_text=True)


@pytest.mark.parametrize("text", [
    json.dumps([{"provider": "openai", "key": "sk-llm-one-1234"},
                {"provider": "anthropic", "key": "sk-ant-llm-2345", "name": "claude-extra"},
                {"provider": "google", "key": "gm-llm-3456"}]),
    "LLM_KEYS=" + json.dumps([{"provider": "openai", "key": "sk-llm-one-1234"},
                              {"provider": "anthropic", "key": "sk-ant-llm-2345", "name": "claude-extra"},
                              {"provider": "gemini", "key": "gm-llm-3456"}]),
    "LLM_KEYS='" + json.dumps([{"provider": "openai", "key": "sk-llm-one-1234"},
                               {"provider": "anthropic", "key": "sk-ant-llm-2345", "name": "claude-extra"},
                               {"provider": "gemini", "key": "gm-llm-3456"}]) + "'",
])
def test_llm_keys(signed_in, config_path, text):
    _, page = preview(signed_in, text)
    assert "sk-llm-one-1234" not in page and "Import 3 keys" in page
    confirm(signed_in, page)
    keys = keys_of(config_path)
    assert keys["openai-2"].secret == "sk-llm-one-1234"
    assert keys["claude-extra"].provider == "anthropic"
    assert keys["gemini-1"].secret == "gm-llm-3456"


def test_duplicates_and_unknown_providers_are_skipped(signed_in, config_path):
    text = json.dumps([{"provider": "openai", "key": KEY_OPENAI},
                       {"provider": "openai", "key": "sk-fresh-0001", "name": "claude-1"},
                       {"provider": "nosuch", "key": "sk-fresh-0002"},
                       {"provider": "openai"},
                       {"provider": "openai", "key": "sk-fresh-0003"},
                       {"provider": "openai", "key": "sk-fresh-0003"}])
    _, page = preview(signed_in, text)
    assert "already in the pool" in page and "already used" in page
    assert "unknown provider" in page and "needs a provider and a key" in page
    assert "Import 1 key" in page and KEY_OPENAI not in page
    confirm(signed_in, page)
    assert keys_of(config_path)["openai-2"].secret == "sk-fresh-0003"


def test_export_then_import_the_yaml_and_json_export(signed_in, client, tmp_path):
    exported = client.get("/transfer/export.yaml").get_data(as_text=True)
    # a second, empty installation imports it, with the values of its placeholders
    from uihelpers import make_app, AuthActions
    other = tmp_path / "other"
    other.mkdir()
    path = other / "keys.yaml"
    path.write_text("version: 1\nkeys: []\n")
    auth = AuthActions(make_app(path).test_client(), path)
    auth.login()
    values = "KEYMUX_KEY_OPENAI_1=sk-carried-over-0001\n"
    for text in (exported, json.dumps({"keys": [{"name": "j-1", "provider": "openai",
                                                 "key": "${SOME_VAR}"}]})):
        _, page = preview(auth, text, values)
        assert "Import" in page, page
        confirm(auth, page)
    keys = {k.name: k for k in load_config(path, env={"ANTHROPIC_KEY_1": "a" * 12,
                                                      "KEYMUX_KEY_LOCAL_1": "l" * 12,
                                                      "SOME_VAR": "s" * 12}).keys}
    assert keys["openai-1"].secret == "sk-carried-over-0001"  # filled in from the values
    assert keys["claude-1"].secret == "a" * 12                  # still a ${VAR}
    assert keys["local-1"].provider == "local" and keys["j-1"].secret == "s" * 12
    text = path.read_text()
    assert "${KEYMUX_KEY_LOCAL_1}" in text and "local:" in text  # the custom provider came along


@pytest.mark.parametrize("text, message", [("", "nothing to import"), ("{not json", "invalid JSON"),
                                           ("just: [a, mapping]", "an export needs a 'keys:' list"),
                                           ("LLM_KEYS={}", "must be a JSON array")])
def test_unreadable_import(signed_in, text, message):
    r, page = preview(signed_in, text)
    assert r.status_code == 400 and message in page


def test_export_uses_placeholders_by_default(signed_in, client):
    text = client.get("/transfer/export.yaml").get_data(as_text=True)
    assert "key: ${KEYMUX_KEY_OPENAI_1}" in text and "key: ${KEYMUX_KEY_LOCAL_1}" in text
    assert "key: ${ANTHROPIC_KEY_1}" in text and "token: ${KEYMUX_TOKEN_APP}" in text
    assert "# the main OpenAI key" in text  # the file's comments come along
    page = client.get("/transfer/export").get_data(as_text=True)
    for secret in (KEY_OPENAI, KEY_ANTHROPIC, KEY_LOCAL, CLIENT_TOKEN):
        assert secret not in text and secret not in page
    download = client.get("/transfer/export.yaml?download=1")
    assert "attachment" in download.headers["Content-Disposition"]


def test_export_with_secrets_needs_confirmation(signed_in, client):
    refused = client.post("/transfer/export", data={"csrf_token": signed_in.csrf()})
    assert refused.status_code == 400 and KEY_OPENAI not in refused.get_data(as_text=True)
    wrong = client.post("/transfer/export", data={"csrf_token": signed_in.csrf(), "confirm": "yes",
                                                  "secret": "not-the-token"})
    assert wrong.status_code == 403 and KEY_OPENAI not in wrong.get_data(as_text=True)
    unasked = client.post("/transfer/export", data={"csrf_token": signed_in.csrf(), "confirm": "yes"})
    assert unasked.status_code == 403 and KEY_OPENAI not in unasked.get_data(as_text=True)
    r = client.post("/transfer/export", data={"csrf_token": signed_in.csrf(), "confirm": "yes",
                                              "secret": ADMIN_TOKEN})
    page = r.get_data(as_text=True)
    assert f"KEYMUX_KEY_OPENAI_1={KEY_OPENAI}" in page
    assert f"ANTHROPIC_KEY_1={KEY_ANTHROPIC}" in page
    assert f"KEYMUX_TOKEN_APP={CLIENT_TOKEN}" in page
    assert r.headers["Cache-Control"] == "no-store"


def test_export_and_dotenv_round_trip_through_the_gateway_loader(config_path, tmp_path):
    text, pairs = importexport.export(config_path.read_text(), ENV)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keys.yaml").write_text(text)
    (out / ".env").write_text(importexport.dotenv_block(pairs + [("ODD", 'a"b$c d')]))
    cfg = load_config(out / "keys.yaml", env={})
    assert {k.name: k.secret for k in cfg.keys} == {"openai-1": KEY_OPENAI, "claude-1": KEY_ANTHROPIC,
                                                    "local-1": KEY_LOCAL}
    assert cfg.clients[0].token == CLIENT_TOKEN


def test_names_are_unique_and_placeholders_too():
    taken = {"openai-1", "openai-2"}
    assert importexport.unique_name("openai", taken) == "openai-3"
    used = set()
    assert importexport.placeholder("KEYMUX_KEY", "a-1", used) == "KEYMUX_KEY_A_1"
    assert importexport.placeholder("KEYMUX_KEY", "a_1", used) == "KEYMUX_KEY_A_1_2"
    parsed = importexport.parse("OPENAI_API_KEY=sk-aaaaaaaa\nOPENAI_API_KEY_3=sk-bbbbbbbb")
    planned = importexport.plan(parsed, Document("keys: []\n"), ["openai"], {})
    assert [c.name for c in planned.keys] == ["openai-1", "openai-2"]


def test_llm_keys_among_other_env_lines():
    text = 'OPENAI_API_KEY=sk-first-00000001\nLLM_KEYS=[{"provider": "groq", "key": "gsk-0000002"}]\n'
    parsed = importexport.parse('LLM_KEYS=[{"provider": "groq", "key": "gsk-0000002"}]\n' + text)
    assert [c.provider for c in parsed.keys] == ["groq", "openai", "groq"]
    assert str(parsed.keys[2].origin) == "line 3, item 1"
    with pytest.raises(importexport.ImportFormatError):
        importexport.parse("[" * 100_000)


def test_export_turns_a_literal_proxy_password_into_a_placeholder(tmp_path):
    text = ("version: 1\nproviders:\n  local:\n    base_url: http://127.0.0.1:9/v1\n"
            "    proxy: http://me:pr0xy-pass@proxy:3128\n  other:\n    base_url: http://h/v1\n"
            "    proxy: http://me:${PASS}@proxy:3128\nkeys: []\n")
    out, pairs = importexport.export(text, {})
    assert "pr0xy-pass" not in out and "${KEYMUX_PROXY_LOCAL}" in out and "${PASS}@proxy" in out
    assert pairs == [("KEYMUX_PROXY_LOCAL", "http://me:pr0xy-pass@proxy:3128")]
    (tmp_path / "keys.yaml").write_text(out)
    (tmp_path / ".env").write_text(importexport.dotenv_block(pairs + [("PASS", "x")]))
    assert load_config(tmp_path / "keys.yaml", env={}).providers["local"].proxy.endswith("@proxy:3128")
