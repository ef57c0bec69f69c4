"""Request-log rows for what the gateway refused itself, and the schema migration."""
import json
import sqlite3

from keypool.clock import FakeClock
from keypool.gateway import Gateway
from keypool.refusals import RefusalLimit, path_class
from keypool.store import Recorder, SQLiteStore
from keypool.store.sqlite import REQUEST_FIELDS

from .helpers import client, config, key

TOKEN = "tok-app-123456"
SECRET = "sk-openai-real-secret-9999"


def gw(**kw):
    clients = [client("app", TOKEN, models=("gpt-4o*",))]
    return Gateway(config(keys=[key("o1", secret=SECRET)], clients=clients), FakeClock(), **kw)


def post(g, body, path="/v1/chat/completions", token=TOKEN):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    return g.handle("POST", path, h, body if isinstance(body, bytes) else json.dumps(body).encode())


def rows(g):
    return g.recorder.drain([]).requests


def test_401_row_has_code_reason_and_no_token():
    g = gw()
    assert post(g, {"model": "gpt-4o"}, token="tok-wrong-secret-77").status == 401
    (row,) = rows(g)
    assert row["status"] == 401 and row["error_code"] == "invalid_client_token"
    assert row["error"] == "missing or invalid client token"
    assert row["client"] is None and row["model"] is None and row["key"] is None
    assert row["path"] == "/v1/chat/completions" and row["attempts"] == []
    assert "tok-wrong-secret-77" not in json.dumps(row) and TOKEN not in json.dumps(row)


def test_403_row_names_client_and_model():
    g = gw()
    assert post(g, {"model": "claude-x", "messages": []}).status in (403, 404)
    (row,) = rows(g)
    assert row["client"] == "app" and row["model"] == "claude-x"
    assert row["error_code"] in ("model_not_allowed", "unknown_model")
    assert TOKEN not in json.dumps(row)


def test_400_and_a_client_over_its_rpm():
    import dataclasses
    g = Gateway(config(keys=[key("o1", secret=SECRET)],
                       clients=[dataclasses.replace(client("app", TOKEN), rpm=1)]), FakeClock())
    assert post(g, b"{not json").status == 400
    post(g, {"model": "gpt-4o", "messages": []})
    assert post(g, {"model": "gpt-4o", "messages": []}).status == 429
    (bad_json, limited) = rows(g)
    assert bad_json["client"] == "app" and bad_json["error_code"] and bad_json["status"] == 400
    assert limited["error_code"] == "client_rate_limited" and limited["client"] == "app"
    assert limited["model"] == "gpt-4o" and limited["provider"] == "openai"


def test_reserved_and_non_api_paths_get_no_row():
    g = gw()
    for path in ("/health", "/metrics", "/_keymux/keys", "/nothing", "/v1/../health"):
        g.handle("GET", path, {}, None)
    assert rows(g) == []


def test_admitted_requests_get_no_refusal_row():
    g = gw()
    plan = post(g, {"model": "gpt-4o", "messages": []})
    assert not hasattr(plan, "status")  # a Plan: the request goes upstream
    assert rows(g) == []


def test_screen_refusal_of_an_api_path_is_logged():
    g = gw()
    huge = [(b"content-length", str(10**12).encode())]
    assert g.screen("POST", "/v1/chat/completions", "", huge).status == 413
    assert g.screen("POST", "/health", "", huge).status == 413
    (row,) = rows(g)
    assert row["status"] == 413 and row["path"] == "/v1/chat/completions"


def test_gateway_answer_after_admission_keeps_its_code():
    g = gw()
    g.pool.cool_down(g.pool.by_name["o1"], "", 100, "auth")
    ticket = g.admit("POST", "/v1/chat/completions",
                     {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
                     json.dumps({"model": "gpt-4o", "messages": []}).encode())
    from keypool.pool import NoKeyAvailable
    try:
        g.pick(ticket)
        raise AssertionError("a dead key was picked")
    except NoKeyAvailable as e:
        answer = g.refuse(ticket, e)
    g.complete(ticket, answer.status, answer=answer)
    (row,) = rows(g)
    assert row["status"] == answer.status and row["client"] == "app"
    assert row["error_code"] == answer.headers["x-keymux-error"] and row["error"]


def test_a_flood_of_401s_is_bounded_and_counted():
    clock = FakeClock(wall_start=1000.0)
    g = Gateway(config(keys=[key("o1", secret=SECRET)], clients=[client("app", TOKEN)]), clock)
    for _ in range(500):
        post(g, {"model": "gpt-4o"}, token=None)
    assert len(rows(g)) == g.refusal_limit.per_second
    assert g.refusal_limit.dropped == 500 - g.refusal_limit.per_second
    assert g.metrics.refusals_dropped._value.get() == g.refusal_limit.dropped
    clock.advance(1.0)
    post(g, {"model": "gpt-4o"}, token=None)
    assert len(rows(g)) == 1  # a new second, a new allowance


def test_refusal_limit_windows():
    lim = RefusalLimit(per_second=2)
    assert [lim.allow(5.1), lim.allow(5.5), lim.allow(5.9), lim.allow(6.0)] == [True, True, False, True]
    assert lim.dropped == 1


def test_path_class_is_a_bounded_set():
    assert path_class("/v1/messages?beta=true") == "/v1/messages"
    assert path_class("/v1/models/gpt-4o") == "/v1/models/{id}"
    assert path_class("/v1/" + "x" * 5000) == "/v1/*"


def test_refusal_rows_are_written(tmp_path):
    g = gw()
    post(g, {"model": "gpt-4o"}, token="nope-nope-nope")
    store = SQLiteStore(tmp_path / "keymux.db")
    store.write(g.recorder.drain([]))
    (row,) = store.export()["requests"]
    assert row["status"] == 401 and row["error_code"] == "invalid_client_token"
    assert row["path"] == "/v1/chat/completions" and row["attempts"] == "[]"


OLD_SCHEMA = """
CREATE TABLE requests (id INTEGER PRIMARY KEY, ts REAL NOT NULL, client TEXT, key TEXT,
 provider TEXT, model TEXT, status INTEGER NOT NULL, attempts TEXT NOT NULL, latency_s REAL,
 ttfb_s REAL, tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,
 stream INTEGER NOT NULL DEFAULT 0, request_body TEXT, response_body TEXT);
INSERT INTO requests (ts, status, attempts, key) VALUES (1.0, 200, '[]', 'a');
"""


def test_an_older_database_gains_the_new_columns(tmp_path):
    path = tmp_path / "keymux.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    store = SQLiteStore(path)  # migrates at open
    rec = Recorder()
    rec.request({"ts": 2.0, "status": 401, "attempts": [], "error_code": "invalid_client_token",
                 "error": "missing", "path": "/v1/*"})
    store.write(rec.drain([]))
    old, new = store.export()["requests"]
    assert set(REQUEST_FIELDS) <= set(old)
    assert old["key"] == "a" and old["error_code"] is None
    assert new["error_code"] == "invalid_client_token" and new["path"] == "/v1/*"
    store.close()
    SQLiteStore(path).close()  # a second open finds nothing to add
