"""The audit log: one row per change (who, when, what), never a secret; page, export, failures."""
from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time

import pytest

from uihelpers import ADMIN_TOKEN, SECRETS, AuthActions, make_app
from webui.auditlog import AuditFilter, AuditLog

NEW_KEY = "sk-audit-new-key-secret-9001"
EDITED_KEY = "sk-audit-edited-key-secret-9002"
IMPORTED_KEY = "sk-audit-imported-key-secret-9003"
TOKEN_RE = re.compile(r'id="new-token" class="mono" value="([^"]+)"')


def audit_db(config_path):
    return config_path.parent / "state" / "audit.db"


def rows(config_path) -> list[dict]:
    db = audit_db(config_path)
    if not db.is_file():
        return []
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]


@pytest.fixture
def live(config_path, stub):
    """Signed in to a UI whose gateway (the stub) answers a cooldown reset."""
    client = make_app(config_path, stub.url).test_client()
    auth = AuthActions(client, config_path)
    assert auth.login().status_code == 302
    return auth


def import_text(auth, text: str):
    page = auth.client.post("/transfer/import", data={"csrf_token": auth.csrf(), "text": text})
    ident = re.search(r'name="ident" value="([^"]+)"', page.get_data(as_text=True))[1]
    return auth.client.post("/transfer/import/confirm",
                            data={"csrf_token": auth.csrf(), "ident": ident})


def test_every_action_writes_one_row_with_who_when_what_and_no_secret(live, config_path):
    auth, issued = live, []
    session_label = re.search(r"<code>([0-9a-f]{10})</code>",
                              auth.client.get("/sessions").get_data(as_text=True))[1]

    def step(action, target, call, status=(200, 302, 303)):
        before, t0 = len(rows(config_path)), time.time()
        r = call()
        assert r.status_code in status, (action, r.status_code)
        found = rows(config_path)
        assert len(found) == before + 1, (action, found[before:])
        row = found[-1]
        assert (row["action"], row["target"]) == (action, target)
        assert row["session"] == session_label and row["address"] == "127.0.0.1"
        assert t0 - 1 <= row["ts"] <= time.time() + 1
        return r, row

    _, row = step("key.added", "new-1", lambda: auth.post("/keys/new", {
        "name": "new-1", "provider": "openai", "key": NEW_KEY, "enabled": "1"}))
    assert "openai" in row["detail"] and "…9001" in row["detail"]
    _, row = step("key.edited", "new-1", lambda: auth.post("/keys/new-1/edit", {
        "name": "new-1", "provider": "openai", "key": EDITED_KEY, "rpm": "50", "enabled": "1"}))
    assert "rpm: – → 50" in row["detail"] and "key replaced" in row["detail"]
    _, row = step("key.renamed", "new-2", lambda: auth.post("/keys/new-1/edit", {
        "name": "new-2", "provider": "openai", "rpm": "50", "enabled": "1"}))
    assert "new-1 → new-2" in row["detail"]
    step("key.disabled", "new-2", lambda: auth.post("/keys/new-2/toggle", {"enable": "0"}))
    step("key.enabled", "new-2", lambda: auth.post("/keys/new-2/toggle", {"enable": "1"}))
    step("key.deleted", "new-2", lambda: auth.post("/keys/new-2/delete"))

    r, row = step("client.added", "bot", lambda: auth.post("/clients/new", {"name": "bot"}))
    issued.append(TOKEN_RE.search(r.get_data(as_text=True))[1])
    assert "issued" in row["detail"]
    _, row = step("client.edited", "bot", lambda: auth.post("/clients/bot/edit", {"rpm": "7"}))
    assert "rpm: – → 7" in row["detail"]
    r, _ = step("client.token_rotated", "bot", lambda: auth.post("/clients/bot/rotate"))
    issued.append(TOKEN_RE.search(r.get_data(as_text=True))[1])
    step("client.deleted", "bot", lambda: auth.post("/clients/bot/delete"))

    _, row = step("import", "", lambda: import_text(auth, f"OPENAI_API_KEY_9={IMPORTED_KEY}\n"))
    assert row["detail"].startswith("1 keys")
    step("export", "", lambda: auth.client.get("/transfer/export"))
    step("export", "", lambda: auth.client.get("/transfer/export.yaml?download=1"))
    _, row = step("export.secrets", "", lambda: auth.client.post("/transfer/export", data={
        "csrf_token": auth.csrf(), "confirm": "yes", "secret": ADMIN_TOKEN}))
    assert "plain text" in row["detail"]
    step("cooldown.reset", "openai-1", lambda: auth.client.post(
        "/api/keys/openai-1/reset", headers={"X-CSRF-Token": auth.csrf()}))
    step("sessions.ended", "", lambda: auth.post("/logout/everywhere"))

    secrets = (*SECRETS, NEW_KEY, EDITED_KEY, IMPORTED_KEY, *issued)
    everything = json.dumps(rows(config_path))
    raw = b"".join(p.read_bytes() for p in audit_db(config_path).parent.glob("audit.db*"))
    for secret in secrets:
        assert secret not in everything and secret.encode() not in raw, secret


def test_refused_changes_write_no_row(signed_in, config_path):
    signed_in.post("/keys/new", {"name": "x", "provider": "openai"})           # no key: 400
    signed_in.post("/keys/openai-1/toggle", {"enable": "0", "version": "stale"})  # 409
    signed_in.client.post("/transfer/export", data={"csrf_token": signed_in.csrf(),
                                                    "confirm": "yes", "secret": "wrong"})
    assert rows(config_path) == []


def test_page_filters_and_export(signed_in, client, config_path):
    signed_in.post("/keys/openai-1/toggle", {"enable": "0"})
    signed_in.post("/keys/openai-1/toggle", {"enable": "1"})
    signed_in.post("/keys/local-1/delete")
    page = client.get("/audit/").get_data(as_text=True)
    assert 'href="/audit/"' in page and "3 changes" in page and "key disabled" in page
    assert "1 change" in client.get("/audit/?action=key.deleted").get_data(as_text=True)
    assert "local-1" in client.get("/audit/?q=local").get_data(as_text=True)
    assert "No change matches" in client.get("/audit/?from=2000-01-01T00:00&to=2000-01-02T00:00") \
        .get_data(as_text=True)
    client.set_cookie("lang", "zh")
    assert "审计日志" in client.get("/audit/").get_data(as_text=True)

    r = client.get("/audit/export.csv?action=key.deleted")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [(t["action"], t["target"]) for t in table] == [("key.deleted", "local-1")]
    assert table[0]["time"].endswith("+00:00") and table[0]["session"]
    lines = client.get("/audit/export.jsonl").get_data(as_text=True).splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["key.deleted", "key.enabled",
                                                             "key.disabled"]
    assert client.get("/audit/export.xml").status_code == 404


def test_a_failed_audit_write_is_logged_and_shown(signed_in, client, config_path, caplog):
    audit_db(config_path).mkdir(parents=True)  # a directory where the database should be
    r = signed_in.post("/keys/openai-1/toggle", {"enable": "0"})
    assert r.status_code == 303  # the change itself happened
    assert "enabled: false" in config_path.read_text()
    assert "audit log: cannot record key.disabled openai-1" in caplog.text
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "the audit log could not record it" in page
    assert "The audit log could not record a change" in client.get("/audit/").get_data(as_text=True)


def test_open_ui_records_open_as_the_session(tmp_path, config_path):
    client = make_app(config_path, admin_token=None).test_client()
    auth = AuthActions(client, config_path)
    auth.post("/keys/local-1/delete")
    assert [(r["action"], r["session"]) for r in rows(config_path)] == [("key.deleted", "open")]


def test_retention_prunes_old_rows(tmp_path):
    now = [1_000_000.0]
    log = AuditLog(tmp_path / "audit.db", clock=lambda: now[0])
    log.write("key.deleted", "old", "", "s", "a", retention_days=1)
    now[0] += 2 * 86400
    log.write("key.deleted", "new", "", "s", "a", retention_days=1)
    found, total = log.rows(AuditFilter())
    assert total == 1 and found[0]["target"] == "new"
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
