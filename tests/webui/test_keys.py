"""Keys: add, edit, enable/disable, delete; validation by the gateway's own code; the file
keeps its comments; a file changed by hand is never overwritten."""
import html
import os
import re

import pytest

from keypool.config import load_config
from uihelpers import CONFIG, ENV, KEY_ANTHROPIC, KEY_LOCAL, KEY_OPENAI


def keys_of(path, env=None):
    return {k.name: k for k in load_config(path, env={**ENV, **(env or {})}).keys}


def comment_lines(text):
    return [line for line in text.splitlines() if "#" in line]


def test_list_shows_masks_and_references_never_secrets(signed_in, client):
    page = client.get("/keys/").get_data(as_text=True)
    assert "openai-1" in page and "claude-1" in page and "local-1" in page
    assert "sk-…0001" in page and "${ANTHROPIC_KEY_1}" in page
    for secret in (KEY_OPENAI, KEY_ANTHROPIC, KEY_LOCAL):
        assert secret not in page


def test_add_a_key(signed_in, client, config_path):
    r = signed_in.post("/keys/new", {"name": "openai-2", "provider": "openai",
                                     "key": "sk-brand-new-secret-99", "enabled": "1", "rpm": "60",
                                     "models": "gpt-4o*, gpt-4.1*", "weight": "2"})
    assert r.status_code == 302
    k = keys_of(config_path)["openai-2"]
    assert (k.secret, k.rpm, k.models, k.weight, k.enabled) == (
        "sk-brand-new-secret-99", 60, ("gpt-4o*", "gpt-4.1*"), 2, True)
    text = config_path.read_text()
    assert comment_lines(text) == comment_lines(CONFIG)
    page = client.get("/keys/").get_data(as_text=True)
    assert "Key openai-2 added." in page and "sk-brand-new-secret-99" not in page


def test_add_a_key_that_references_a_variable(signed_in, client, config_path):
    r = signed_in.post("/keys/new", {"name": "gem-1", "provider": "gemini",
                                     "key": "${GEMINI_KEY_1}", "enabled": "1"})
    assert r.status_code == 302
    assert "key: ${GEMINI_KEY_1}" in config_path.read_text()
    page = client.get("/keys/").get_data(as_text=True)
    assert "GEMINI_KEY_1 is not set" in page or "${GEMINI_KEY_1}" in page  # the gateway's warning
    assert keys_of(config_path, {"GEMINI_KEY_1": "g-secret-123456"})["gem-1"].secret == "g-secret-123456"


def test_a_literal_dollar_is_escaped(signed_in, config_path):
    signed_in.post("/keys/new", {"name": "odd-1", "provider": "openai", "key": "sk-a$b${c-123456",
                                 "enabled": "1"})
    assert keys_of(config_path)["odd-1"].secret == "sk-a$b${c-123456"


@pytest.mark.parametrize("form, message", [
    ({"name": "bad name!", "provider": "openai", "key": "sk-1234567890"}, "is not a valid name"),
    ({"name": "x-1", "provider": "nosuch", "key": "sk-1234567890"}, "unknown provider 'nosuch'"),
    ({"name": "openai-1", "provider": "openai", "key": "sk-1234567890"}, "duplicate key name 'openai-1'"),
    ({"name": "x-1", "provider": "openai", "key": ""}, "The key is required"),
    ({"name": "x-1", "provider": "openai", "key": "sk-1234567890", "rpm": "many"}, "must be a whole number"),
    ({"name": "x-1", "provider": "openai", "key": "sk-1234567890", "weight": "-1"}, "weight"),
])
def test_invalid_key_is_refused_and_the_file_unchanged(signed_in, config_path, form, message):
    before = config_path.read_bytes()
    r = signed_in.post("/keys/new", {"enabled": "1", **form})
    page = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 400 and message in page
    assert config_path.read_bytes() == before
    assert "sk-1234567890" not in page  # the typed secret is not sent back
    if form["name"] == "x-1":
        assert 'value="x-1"' in page  # the rest of what was typed is


def test_edit_with_an_empty_key_keeps_the_secret(signed_in, client, config_path):
    page = client.get("/keys/openai-1/edit").get_data(as_text=True)
    assert KEY_OPENAI not in page and 'value="100"' in page
    r = signed_in.post("/keys/openai-1/edit", {"name": "openai-1", "provider": "openai", "key": "",
                                               "enabled": "1", "rpm": "250", "models": ""})
    assert r.status_code == 302
    k = keys_of(config_path)["openai-1"]
    assert k.secret == KEY_OPENAI and k.rpm == 250
    text = config_path.read_text()
    assert "rpm: 250                    # per-key limit" in text
    assert comment_lines(text) == [c.replace("100", "250") for c in comment_lines(CONFIG)]


def test_edit_replaces_the_secret_and_renames(signed_in, config_path):
    r = signed_in.post("/keys/openai-1/edit", {"name": "openai-main", "provider": "openai",
                                               "key": "sk-rotated-secret-777", "enabled": "1", "rpm": "100"})
    assert r.status_code == 302
    keys = keys_of(config_path)
    assert "openai-1" not in keys and keys["openai-main"].secret == "sk-rotated-secret-777"


def test_edit_to_a_duplicate_name_is_refused(signed_in, config_path):
    before = config_path.read_bytes()
    r = signed_in.post("/keys/openai-1/edit", {"name": "claude-1", "provider": "openai", "enabled": "1"})
    assert r.status_code == 400 and "duplicate key name" in html.unescape(r.get_data(as_text=True))
    assert config_path.read_bytes() == before


def test_disable_and_enable(signed_in, client, config_path):
    assert signed_in.post("/keys/openai-1/toggle", {"enable": "0"}).status_code == 303
    assert keys_of(config_path)["openai-1"].enabled is False
    assert signed_in.post("/keys/local-1/toggle", {"enable": "1"}).status_code == 303
    assert keys_of(config_path)["local-1"].enabled is True
    assert re.search(r"\n    enabled: true +# parked\n", config_path.read_text())


def test_delete(signed_in, config_path):
    assert signed_in.post("/keys/claude-1/delete").status_code == 303
    assert set(keys_of(config_path)) == {"openai-1", "local-1"}
    text = config_path.read_text()
    for comment in ("# more keys go here", "# the main OpenAI key", "# parked", "# the default"):
        assert comment in text


def test_unknown_key_is_404_and_delete_of_unknown_is_refused(signed_in, client, config_path):
    assert client.get("/keys/nope/edit").status_code == 404
    before = config_path.read_bytes()
    r = signed_in.post("/keys/nope/delete")
    assert r.status_code == 400 and config_path.read_bytes() == before


def test_a_hand_edit_between_load_and_save_is_not_overwritten(signed_in, client, config_path):
    form = {"csrf_token": signed_in.csrf(), "version": signed_in.version(), "name": "late-1",
            "provider": "openai", "key": "sk-late-secret-0000", "enabled": "1"}
    hand_edited = config_path.read_text().replace("strategy: round_robin", "strategy: least_busy")
    config_path.write_text(hand_edited)  # someone edits the file while the form is open
    for path, data in (("/keys/new", form), ("/keys/openai-1/toggle", {**form, "enable": "0"}),
                       ("/keys/openai-1/delete", form), ("/keys/openai-1/edit", {**form, "name": "openai-1"})):
        r = client.post(path, data=data)
        assert r.status_code == 409, path
        assert "changed on disk" in r.get_data(as_text=True)
        assert config_path.read_text() == hand_edited
    # the refused form still carries the old version: saving it again is refused again
    page = client.post("/keys/new", data=form).get_data(as_text=True)
    assert f'name="version" value="{form["version"]}"' in page


def test_the_file_mode_is_kept(signed_in, config_path):
    os.chmod(config_path, 0o640)
    signed_in.post("/keys/openai-1/toggle", {"enable": "0"})
    assert oct(config_path.stat().st_mode & 0o777) == oct(0o640)


def test_the_gateway_reading_the_new_file_sees_the_edit(signed_in, config_path):
    """What the UI writes is exactly what load_config (the gateway's loader) accepts."""
    signed_in.post("/keys/new", {"name": "groq-1", "provider": "groq", "key": "gsk-123456789012",
                                 "enabled": "1", "tpm": "5000", "max_in_flight": "3"})
    k = keys_of(config_path)["groq-1"]
    assert (k.provider, k.tpm, k.max_in_flight) == ("groq", 5000, 3)
