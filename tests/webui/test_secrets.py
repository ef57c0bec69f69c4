"""No configured secret in any page, API answer, error or log line (bar the two on purpose)."""
import logging
import re
import time

import pytest

from uihelpers import (ADMIN_TOKEN, AuthActions, CLIENT_TOKEN, KEY_ANTHROPIC, KEY_LOCAL,
                       KEY_OPENAI, SECRETS, make_app)
import ui_seed

GETS = ["/", "/api/stats", "/api/history?key=openai-1&key=claude-1", "/api/history?range=day",
        "/requests/", "/requests/?status=error&range=7d", "/keys/", "/keys/new",
        "/keys/openai-1/edit", "/keys/claude-1/edit", "/keys/local-1/edit", "/clients/",
        "/clients/app/edit", "/transfer/", "/transfer/export", "/transfer/export.yaml",
        "/transfer/export.yaml?download=1", "/login", "/nope", "/keys/nope/edit"]


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} leaks {secret[:8]}…"


@pytest.fixture
def leak_log(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_no_secret_anywhere(config_path, stub, leak_log):
    stub.stats = {"uptime_s": 1, "keys": [{"name": "openai-1", "provider": "openai", "key": "sk-…0001",
                                           "state": "ok", "requests": 1, "successes": 1}]}
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.synthetic_day(db, time.time(), [("openai-1", "openai"), ("claude-1", "anthropic")])
    client = make_app(config_path, stub.url).test_client()
    auth = AuthActions(client, config_path)
    for path in GETS:  # signed out: redirects and 401s
        assert_clean(client.get(path).get_data(as_text=True), path)
    assert_clean(auth.login("wrong-" + ADMIN_TOKEN).get_data(as_text=True), "failed login")
    auth.login()
    for path in GETS:
        r = client.get(path)
        assert r.status_code in (200, 404), path
        assert_clean(r.get_data(as_text=True), path)
        assert_clean(str(r.headers), path + " headers")
    # error paths that are handed a secret
    answers = [
        auth.post("/keys/new", {"name": "bad name", "provider": "openai", "key": "sk-typed-secret-123"}),
        auth.post("/keys/new", {"name": "dup", "provider": "nosuch", "key": KEY_OPENAI}),
        auth.post("/keys/openai-1/edit", {"name": "claude-1", "provider": "openai", "key": KEY_LOCAL}),
        client.post("/keys/new", data={"csrf_token": auth.csrf(), "version": "stale", "name": "a",
                                       "provider": "openai", "key": KEY_ANTHROPIC}),
        client.post("/transfer/import", data={"csrf_token": auth.csrf(),
                                              "text": f"OPENAI_API_KEY={KEY_OPENAI}\nXAI_API_KEY={KEY_LOCAL}"}),
        client.post("/transfer/import", data={"csrf_token": auth.csrf(), "text": f"{{{KEY_OPENAI}"}),
        client.post("/api/keys/openai-1/reset", headers={"X-CSRF-Token": auth.csrf()}),
        client.post("/clients/new", data={"csrf_token": auth.csrf(), "version": auth.version(),
                                          "name": "app"}),
    ]
    for r in answers:
        assert_clean(r.get_data(as_text=True), r.request.path)
        assert "sk-typed-secret-123" not in r.get_data(as_text=True)
    logged = "\n".join(rec.getMessage() for rec in leak_log.records)
    assert_clean(logged, "the log")
    assert "contained a configured secret" not in logged  # the scrubber never had to act


def test_the_scrubber_masks_a_leak_and_says_so(config_path, leak_log):
    app = make_app(config_path)

    @app.get("/leaky")
    def leaky():
        return f"oops {KEY_OPENAI}"
    client = app.test_client()
    AuthActions(client, config_path).login()
    body = client.get("/leaky").get_data(as_text=True)
    assert KEY_OPENAI not in body and "sk-…0001" in body
    assert "contained a configured secret" in leak_log.text


def test_revealed_only_where_asked(config_path):
    client = make_app(config_path).test_client()
    auth = AuthActions(client, config_path)
    auth.login()
    created = auth.post("/clients/new", {"name": "fresh"}).get_data(as_text=True)
    token = re.search(r'value="(kmx-[^"]+)"', created)[1]
    assert CLIENT_TOKEN not in created  # only the new one
    assert token not in client.get("/clients/").get_data(as_text=True)
