"""Usage by client: requests, tokens and errors per client over the last day or week."""
import time

import ui_seed
from webui import usage


def test_table_orders_configured_then_removed_then_no_client():
    used = {"app": {"requests": 4, "ok": 3, "client_errors": 1, "server_errors": 0,
                    "tokens_in": 10, "tokens_out": 20, "avg_latency_s": 0.5, "last_ts": 5.0},
            "old": {"requests": 2, "ok": 0, "client_errors": 0, "server_errors": 2,
                    "tokens_in": 0, "tokens_out": 0, "avg_latency_s": 0.1, "last_ts": 4.0},
            None: {"requests": 1, "ok": 0, "client_errors": 1, "server_errors": 0,
                   "tokens_in": 0, "tokens_out": 0, "avg_latency_s": None, "last_ts": 3.0}}
    rows = usage.table(["idle", "app"], used)
    assert [(r["name"], r["configured"], r["requests"], r["errors"], r["success_rate"])
            for r in rows] == [("idle", True, 0, 0, None), ("app", True, 4, 1, 75.0),
                               ("old", False, 2, 2, 0.0), (None, False, 1, 1, 0.0)]


def test_the_usage_page(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.create(db)
    now = time.time()
    ui_seed.add_request(db, now - 60, "openai-1", 200, client="app", tokens=(100, 50))
    ui_seed.add_request(db, now - 120, "openai-1", 429, client="app", tokens=(0, 0))
    ui_seed.add_request(db, now - 3 * 86400, "openai-1", 200, client="app", tokens=(1000, 1))
    ui_seed.add_request(db, now - 30, None, 401, client=None, tokens=(0, 0))
    ui_seed.add_request(db, now - 30, "openai-1", 502, client="gone", tokens=(0, 0))
    day = client.get("/usage/").get_data(as_text=True)
    assert "Usage by client" in day and 'href="/usage/"' in day
    row = day.split('data-client="app"')[1].split("</tr>")[0]
    assert ">2<" in row and "50.0%" in row and ">100<" in row and ">50<" in row
    assert 'href="/requests/?client=app&amp;range=24h"' in row
    assert "removed" in day.split('data-client="gone"')[1].split("</tr>")[0]
    assert "no client (open gateway, or no valid token)" in day
    week = client.get("/usage/?range=7d").get_data(as_text=True)
    assert ">1100<" in week.split('data-client="app"')[1].split("</tr>")[0]
    assert client.get("/usage/?range=bogus").status_code == 200


def test_the_usage_page_without_a_store(signed_in, client):
    page = client.get("/usage/").get_data(as_text=True)
    assert 'data-client="app"' in page  # the configured client, with zeros


def test_the_usage_page_needs_a_login(client):
    assert client.get("/usage/").status_code in (302, 401)
