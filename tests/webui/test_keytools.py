"""Keys page tools: "test this key" through a (stub) gateway, bulk enable/disable/delete."""
import pytest

from keypool.config import load_config
from uihelpers import ADMIN_TOKEN, ENV, KEY_ANTHROPIC, KEY_OPENAI, AuthActions, make_app


def keys_of(path):
    return {k.name: k for k in load_config(path, env=ENV).keys}


@pytest.fixture
def gw_auth(config_path, stub):
    client = make_app(config_path, stub.url).test_client()
    auth = AuthActions(client, config_path)
    assert auth.login().status_code == 302
    return auth


def page(auth):
    return auth.client.get("/keys/").get_data(as_text=True)


def test_the_keys_page_has_a_test_button_and_bulk_checkboxes(signed_in):
    text = page(signed_in)
    assert 'action="/keys/openai-1/test"' in text
    assert 'name="names" value="claude-1" form="bulk"' in text and 'id="bulk"' in text


def test_a_working_key(gw_auth, stub):
    r = gw_auth.post("/keys/openai-1/test")
    assert r.status_code == 303 and r.headers["location"].endswith("/keys/#key-openai-1")
    assert ("POST", "/_keymux/keys/openai-1/test", f"Bearer {ADMIN_TOKEN}") in stub.seen
    assert "Key openai-1 works: HTTP 200 in 42 ms." in page(gw_auth)


def test_a_failing_key_shows_status_state_and_a_masked_error(gw_auth, stub):
    stub.test_body = {"ok": False, "status": 401, "outcome": "auth", "latency_ms": 7,
                      "state": "dead", "error": f"Incorrect API key provided: {KEY_OPENAI}"}
    gw_auth.post("/keys/openai-1/test")
    text = page(gw_auth)
    assert "Key openai-1 failed the test: HTTP 401 in 7 ms; its state is now dead." in text
    assert "Incorrect API key provided" in text and KEY_OPENAI not in text


def test_no_answer_names_the_reason(gw_auth, stub):
    stub.test_body = {"ok": False, "status": None, "outcome": "server", "latency_ms": 20000,
                      "state": "cooling", "error": "timeout"}
    gw_auth.post("/keys/openai-1/test")
    assert "failed the test: timeout in 20000 ms; its state is now cooling." in page(gw_auth)


@pytest.mark.parametrize("status, body, shown", [
    (404, {"error": {"code": "key_not_found"}}, "The gateway does not know a key named openai-1."),
    (404, {"error": {"code": "unknown_path"}}, "This gateway cannot test keys yet"),
    (401, {"error": {"code": "admin_token_required"}}, "The gateway refused the admin token."),
    (500, {}, "The gateway answered 500."),
])
def test_gateway_refusals(gw_auth, stub, status, body, shown):
    stub.test_status, stub.test_body = status, body
    gw_auth.post("/keys/openai-1/test")
    assert shown in page(gw_auth)


def test_an_unreachable_gateway(signed_in):
    assert signed_in.post("/keys/openai-1/test").status_code == 303
    assert "cannot reach the gateway" in page(signed_in)


def test_test_needs_csrf(gw_auth, stub):
    assert gw_auth.client.post("/keys/openai-1/test").status_code in (400, 403)
    assert not any(p.endswith("/test") for _, p, _ in stub.seen)


def test_bulk_disable_enable_delete_in_one_write_each(signed_in, config_path):
    r = signed_in.post("/keys/bulk", {"action": "disable", "names": ["openai-1", "claude-1"]})
    assert r.status_code == 303
    keys = keys_of(config_path)
    assert not keys["openai-1"].enabled and not keys["claude-1"].enabled
    assert "Disabled 2 keys: openai-1, claude-1." in page(signed_in)
    signed_in.post("/keys/bulk", {"action": "enable", "names": ["openai-1", "local-1"]})
    keys = keys_of(config_path)
    assert keys["openai-1"].enabled and keys["local-1"].enabled and not keys["claude-1"].enabled
    signed_in.post("/keys/bulk", {"action": "delete", "names": ["openai-1", "local-1"]})
    assert set(keys_of(config_path)) == {"claude-1"}
    text = config_path.read_text()
    assert "${ANTHROPIC_KEY_1}" in text and KEY_ANTHROPIC not in text


def test_bulk_is_all_or_nothing(signed_in, config_path):
    before = config_path.read_text()
    r = signed_in.post("/keys/bulk", {"action": "delete", "names": ["openai-1", "no-such-key"]})
    assert r.status_code in (400, 404) and config_path.read_text() == before


def test_bulk_on_a_changed_file_is_a_409(signed_in, config_path):
    csrf, old = signed_in.csrf(), signed_in.version()
    config_path.write_text(config_path.read_text() + "\n# edited by hand\n")
    r = signed_in.client.post("/keys/bulk", data={"csrf_token": csrf, "version": old,
                                                   "action": "disable", "names": ["openai-1"]})
    assert r.status_code == 409 and keys_of(config_path)["openai-1"].enabled
    assert "# edited by hand" in config_path.read_text()


@pytest.mark.parametrize("data", [{"action": "explode", "names": ["openai-1"]},
                                  {"action": "disable"}])
def test_bulk_refuses_a_bad_form(signed_in, config_path, data):
    before = config_path.read_text()
    assert signed_in.post("/keys/bulk", data).status_code == 400
    assert config_path.read_text() == before


def audit_rows(config_path):
    import sqlite3
    db = config_path.parent / "state" / "audit.db"
    if not db.is_file():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT action, target, detail FROM audit ORDER BY id").fetchall()


def test_tests_and_bulk_actions_are_audited_without_secrets(gw_auth, stub, config_path):
    stub.test_body = {"ok": False, "status": 401, "outcome": "auth", "latency_ms": 7,
                      "state": "dead", "error": f"bad key {KEY_OPENAI}"}
    gw_auth.post("/keys/openai-1/test")
    gw_auth.post("/keys/bulk", {"action": "disable", "names": ["openai-1", "claude-1"]})
    stub.test_status = 500
    gw_auth.post("/keys/claude-1/test")  # the gateway did nothing: no row
    assert audit_rows(config_path) == [
        ("key.tested", "openai-1", "401 · auth · state dead"),
        ("key.disabled", "openai-1", "bulk"), ("key.disabled", "claude-1", "bulk")]


def test_a_refused_bulk_action_is_not_audited(signed_in, config_path):
    signed_in.post("/keys/bulk", {"action": "delete", "names": ["openai-1", "no-such-key"]})
    assert audit_rows(config_path) == []
