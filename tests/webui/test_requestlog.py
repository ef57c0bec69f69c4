"""The request log: gateway refusals, the key filter over every attempt, search, export."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import time

import ui_seed
from uihelpers import CLIENT_TOKEN, KEY_OPENAI

from webui.store import LogFilter, Store


def refusal(db, ts, status, code, message, *, client=None, model=None, path="/v1/chat/completions"):
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO requests (ts, client, model, status, attempts, error_code, error,"
                     " path) VALUES (?,?,?,?,?,?,?,?)",
                     (ts, client, model, status, "[]", code, message, path))


def seed(config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.create(db)
    ui_seed.add_request(db, now - 50, "openai-1", 200, client="app", model="gpt-4o")
    # claude-1 failed first, openai-1 answered: a filter by claude-1 must find it
    ui_seed.add_request(db, now - 40, "openai-1", 200, client="app", model="gpt-4o-mini", attempts=[
        {"key": "claude-1", "status": 401, "error": None, "latency_s": 0.1},
        {"key": "openai-1", "status": 200, "error": None, "latency_s": 0.3}])
    ui_seed.add_request(db, now - 30, None, 502, client="app", model="gpt-4o", attempts=[
        {"key": "claude-1", "status": None, "error": "connection reset_by peer", "latency_s": 1.0}])
    refusal(db, now - 20, 401, "invalid_client_token", "missing or invalid client token")
    refusal(db, now - 10, 403, "model_not_allowed", "client 'app' may not use model 'o1-pro'",
            client="app", model="=cmd|' /C calc'!A0")
    return db


def text(client, url):
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code)
    return r.get_data(as_text=True)


def test_refusals_show_in_the_4xx_filter_with_reason_and_client(signed_in, client, config_path):
    seed(config_path)
    page = text(client, "/requests/?status=4xx")
    assert "2 requests" in page
    assert "invalid_client_token" in page and "missing or invalid client token" in page
    assert "model_not_allowed" in page and "may not use model" in page
    assert "2 requests" in text(client, "/requests/?status=refused")
    assert "1 request" in text(client, "/requests/?status=refused&client=app")


def test_key_filter_matches_any_attempt(signed_in, client, config_path):
    seed(config_path)
    assert "2 requests" in text(client, "/requests/?key=claude-1")
    assert "2 requests" in text(client, "/requests/?key=openai-1")
    store = Store(config_path.parent / "state" / "keymux.db")
    assert store.requests(LogFilter(key="claude-1"), 1)[1] == 2


def test_free_text_search(signed_in, client, config_path):
    seed(config_path)
    assert "1 request" in text(client, "/requests/?q=invalid_client")   # error code
    assert "1 request" in text(client, "/requests/?q=MAY+NOT+USE")       # message, any case
    assert "1 request" in text(client, "/requests/?q=reset_by")           # an attempt's error
    assert "1 request" in text(client, "/requests/?q=gpt-4o-mini")        # model
    assert "4 requests" in text(client, "/requests/?q=app")               # client (and message)
    assert "0 requests" in text(client, "/requests/?q=%25")               # % is literal
    assert "0 requests" in text(client, "/requests/?q=reset%5Fbx")        # so is _


def test_export_csv_and_jsonl_of_the_filtered_rows(signed_in, client, config_path):
    seed(config_path)
    r = client.get("/requests/export.csv?status=4xx")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["status"] for row in rows] == ["403", "401"]  # newest first
    assert rows[1]["error_code"] == "invalid_client_token" and rows[1]["path"] == "/v1/chat/completions"
    assert rows[0]["model"].startswith("'=")  # no formula runs in a spreadsheet
    assert "request_body" not in rows[0]     # logging.bodies is off
    r = client.get("/requests/export.jsonl?key=claude-1")
    assert r.mimetype == "application/x-ndjson"
    items = [json.loads(line) for line in r.get_data(as_text=True).splitlines()]
    assert len(items) == 2 and items[1]["attempts"][0]["key"] == "claude-1"
    assert items[0]["time"].endswith("+00:00") and items[0]["status"] == 502
    assert client.get("/requests/export.xml").status_code == 404


def test_export_holds_no_secret(signed_in, client, config_path):
    db = seed(config_path)
    ui_seed.add_request(db, time.time() - 5, None, 502, attempts=[
        {"key": "openai-1", "status": None, "error": f"echoed {KEY_OPENAI}", "latency_s": 1.0}])
    for fmt in ("csv", "jsonl"):
        body = client.get(f"/requests/export.{fmt}").get_data(as_text=True)
        assert KEY_OPENAI not in body and CLIENT_TOKEN not in body
        assert "echoed" in body


def test_export_pages_through_many_rows(tmp_path):
    db = tmp_path / "keymux.db"
    ui_seed.create(db)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO requests (ts, status, attempts) VALUES (?, 200, '[]')",
                         [(1000.0 + i // 3,) for i in range(2500)])  # equal times across chunks
    ids = [r["id"] for r in Store(db).export_rows(LogFilter())]
    assert len(ids) == len(set(ids)) == 2500
    assert len(list(Store(db).export_rows(LogFilter(), limit=1200))) == 1200


def test_an_older_database_reads_without_the_new_columns(tmp_path):
    db = tmp_path / "keymux.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, ts REAL NOT NULL, client TEXT,"
                     " key TEXT, provider TEXT, model TEXT, status INTEGER NOT NULL, attempts TEXT"
                     " NOT NULL, latency_s REAL, ttfb_s REAL, tokens_in INTEGER DEFAULT 0,"
                     " tokens_out INTEGER DEFAULT 0, stream INTEGER DEFAULT 0,"
                     " request_body TEXT, response_body TEXT)")
        conn.execute("INSERT INTO requests (ts, key, model, status, attempts) VALUES"
                     " (1.0, 'a', 'gpt-4o', 200, 'not json')")
    rows, total = Store(db).requests(LogFilter(q="gpt", key="a"), 1)
    assert total == 1 and rows[0]["error_code"] is None and rows[0]["attempts"] == []


def test_the_cost_column_shows_usd_and_unknown(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.create(db)
    ui_seed.add_request(db, now - 20, "openai-1", 200, client="app", model="gpt-4o")
    ui_seed.add_request(db, now - 10, "openai-1", 200, client="app", model="gpt-4o")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE requests SET cost_usd = 0.00125 WHERE ts = ?", (now - 10,))
    page = text(client, "/requests/")
    assert "Cost" in page and "$0.00125" in page
    assert 'title="unknown price"' in page  # the row without a price: "–", never $0
