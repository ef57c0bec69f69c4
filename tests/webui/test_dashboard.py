"""Dashboard JSON (live stats joined with the file and the store), reset, history, request log."""
import time

import pytest

import ui_seed
from uihelpers import ADMIN_TOKEN, make_app
from webui import live  # noqa: E402
from webui.store import LogFilter, Store, percentile  # noqa: E402

LIVE = {"uptime_s": 12.5, "totals": {}, "keys": [
    {"name": "openai-1", "provider": "openai", "key": "sk-…0001", "state": "cooling",
     "cooldown_s": 27.4, "weight": 1, "in_flight": 2, "requests": 10, "successes": 8,
     "failures": 2, "avg_latency_s": 0.42, "tokens_in": 100, "tokens_out": 200,
     "failures_by_class": {"rate_limited": 2}, "rpm_used": 7, "rpm_limit": 100,
     "tpm_used": 300, "tpm_limit": None, "today": {"requests": 10, "tokens_in": 100, "tokens_out": 200}},
    {"name": "claude-1", "provider": "anthropic", "key": "sk-…0002", "state": "ok",
     "cooldown_s": 0, "weight": 1, "in_flight": 0, "requests": 0, "successes": 0,
     "failures": 0, "avg_latency_s": None, "tokens_in": 0, "tokens_out": 0},
]}


@pytest.fixture
def live_app(config_path, stub):
    stub.stats = LIVE
    return make_app(config_path, stub.url)


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


@pytest.fixture
def live_auth(live_client, config_path):
    from uihelpers import AuthActions
    auth = AuthActions(live_client, config_path)
    auth.login()
    return auth


def test_stats_join_the_file_and_the_gateway(live_auth, live_client, stub):
    data = live_client.get("/api/stats").json
    rows = {r["name"]: r for r in data["keys"]}
    assert list(rows) == ["openai-1", "claude-1", "local-1"]  # the file's order
    o = rows["openai-1"]
    assert (o["state"], o["cooldown_s"], o["in_flight"], o["success_rate"]) == ("cooling", 27.4, 2, 0.8)
    assert (o["rpm_used"], o["rpm_limit"], o["tpm_used"]) == (7, 100, 300)
    assert o["failures_by_class"] == {"rate_limited": 2, "quota": 0, "auth": 0, "server": 0,
                                      "client_error": 0}
    assert o["today"] == {"requests": 10, "tokens_in": 100, "tokens_out": 200}
    c = rows["claude-1"]
    assert c["failures_by_class"] is None and c["rpm_limit"] is None and c["state"] == "ok"
    assert rows["local-1"]["state"] == "disabled"  # in the file, not served: disabled
    assert data["gateway"]["reachable"] and data["totals"]["states"]["cooling"] == 1
    assert data["totals"]["in_flight"] == 2 and data["totals"]["requests"] == 10
    # the admin token goes to the gateway as a bearer token
    assert ("GET", "/_keymux/stats", f"Bearer {ADMIN_TOKEN}") in stub.seen


def test_unreachable_gateway_shows_the_file_with_state_unknown(signed_in, client):
    data = client.get("/api/stats").json
    assert not data["gateway"]["reachable"]
    assert "cannot reach the gateway" in data["gateway"]["error"]
    assert {r["name"]: r["state"] for r in data["keys"]} == {
        "openai-1": "unknown", "claude-1": "unknown", "local-1": "disabled"}
    page = client.get("/").get_data(as_text=True)
    assert "Traceback" not in page and 'id="gateway-banner"' in page


def test_a_gateway_refusing_the_token_is_reported(live_auth, live_client, stub):
    stub.stats = {"error": {"code": "admin_token_required"}}
    data = live_client.get("/api/stats").json
    assert not data["gateway"]["reachable"]


def test_reset_cooldown(live_auth, live_client, stub):
    headers = {"X-CSRF-Token": live_auth.csrf()}
    r = live_client.post("/api/keys/openai-1/reset", headers=headers)
    assert r.status_code == 200 and r.json["ok"] and "openai-1" in r.json["message"]
    assert ("POST", "/_keymux/keys/openai-1/reset", f"Bearer {ADMIN_TOKEN}") in stub.seen
    stub.reset_status = 404
    r = live_client.post("/api/keys/ghost/reset", headers=headers)
    assert r.status_code == 404 and not r.json["ok"]
    stub.reset_body = {"error": {"code": "unknown_path"}}
    r = live_client.post("/api/keys/openai-1/reset", headers=headers)
    assert r.status_code == 502 and "no reset endpoint" in r.json["message"]


def test_history_p95_and_today_from_the_store(live_auth, live_client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.create(db)
    minute = int(now // 60)
    ui_seed.add_minute(db, "openai-1", minute - 1, 30, latency_sum=15.0, tokens=(100, 200))
    ui_seed.add_minute(db, "openai-1", minute - 2, 60, latency_sum=60.0)
    ui_seed.add_minute(db, "claude-1", minute - 1, 6, provider="anthropic")
    ui_seed.add_minute(db, "openai-1", minute - 2000, 99)  # older than a day: not shown
    for i in range(20):
        ui_seed.add_request(db, now - i, "openai-1", 200, latency_s=float(i + 1))
    h = live_client.get("/api/history?key=openai-1&range=hour").json
    s = h["series"]["openai-1"]
    assert len(h["t"]) == 60 and h["step_s"] == 60
    assert s["rpm"][-2] == 30 and s["latency"][-2] == 0.5 and s["tokens"][-2] == 300
    assert s["rpm"][-3] == 60 and s["latency"][-3] == 1.0
    day = live_client.get("/api/history?key=openai-1&key=claude-1&range=day").json
    assert len(day["t"]) == 96 and sum(day["series"]["openai-1"]["rpm"]) * 15 == 90
    everything = live_client.get("/api/history").json
    assert sum(everything["series"]["*"]["rpm"]) == 96
    rows = {r["name"]: r for r in live_client.get("/api/stats").json["keys"]}
    assert rows["openai-1"]["p95_latency_s"] == 19.0
    assert rows["claude-1"]["today"]["requests"] == 6  # no `today` from the gateway: the store's


def test_missing_or_empty_store_gives_empty_charts(live_auth, live_client, config_path):
    assert live_client.get("/api/history?key=openai-1").json["series"]["openai-1"]["rpm"] == [0.0] * 60
    (config_path.parent / "state").mkdir()
    (config_path.parent / "state" / "keymux.db").write_bytes(b"")  # created, no tables yet
    assert live_client.get("/api/history?range=day").status_code == 200
    assert live_client.get("/requests/").status_code == 200


def test_request_log_filters_pages_and_attempts(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.create(db)
    for i in range(120):
        ui_seed.add_request(db, now - 60 * i, "openai-1" if i % 2 else "claude-1", 200,
                            client="app", model="gpt-4o" if i % 3 else "gpt-4o-mini")
    ui_seed.add_request(db, now + 1, "openai-1", 200, client="app", model="gpt-4o", attempts=[
        {"key": "claude-1", "status": 429, "error": None, "latency_s": 0.1},
        {"key": "openai-1", "status": 200, "error": None, "latency_s": 0.3}])
    ui_seed.add_request(db, now - 3 * 86400, "openai-1", 502, client=None, attempts=[
        {"key": "openai-1", "status": None, "error": "connection reset", "latency_s": 1.0}])
    page = client.get("/requests/").get_data(as_text=True)
    assert "121 requests" in page and "Page 1 of 3" in page  # last 24 h by default
    first = page.index("attempts-")
    assert page[first:first + 12].startswith("attempts-121")  # newest first
    assert "429" in page
    assert "Page 2 of 3" in client.get("/requests/?page=2").get_data(as_text=True)
    assert "61 requests" in client.get("/requests/?key=openai-1").get_data(as_text=True)
    assert "81 requests" in client.get("/requests/?model=gpt-4o").get_data(as_text=True)
    assert "121 requests" in client.get("/requests/?model=gpt-4o*").get_data(as_text=True)
    assert "0 requests" in client.get("/requests/?status=5xx").get_data(as_text=True)
    old = client.get("/requests/?status=5xx&range=7d").get_data(as_text=True)
    assert "1 request" in old and "connection reset" in old
    assert "16 requests" in client.get("/requests/?range=15m").get_data(as_text=True)


def test_percentile_and_day_start():
    assert percentile([float(i) for i in range(1, 21)], 0.95) == 19.0
    assert percentile([3.0], 0.95) == 3.0
    noon = 1_700_000_000 - 1_700_000_000 % 86400 + 12 * 3600
    assert live.day_start(noon, "00:00") == noon - 12 * 3600
    assert live.day_start(noon, "13:30") == noon - 12 * 3600 - 10.5 * 3600


def test_store_reads_nothing_from_a_missing_file(tmp_path):
    store = Store(tmp_path / "nope.db")
    assert store.p95_latency(0) == {} and store.requests(LogFilter(), 1) == ([], 0)


def test_reload_and_store_state_are_the_gateways_word(live_auth, live_client, stub):
    """The dashboard shows what /_keymux/health says, on the first paint and on each poll."""
    stub.health = {"status": "degraded", "last_reload_error": "keys.yaml:3: unknown field 'kyes'",
                   "store": {"ok": False, "last_error": "OperationalError: database or disk is full",
                             "pending_rows": 12, "dropped_rows": 0, "errors": 3}}
    gw = live_client.get("/api/stats").json["gateway"]
    assert gw["reload_error"] == "keys.yaml:3: unknown field 'kyes'"
    assert gw["store_error"] == {"error": "OperationalError: database or disk is full",
                                 "pending_rows": 12, "dropped_rows": 0}
    page = live_client.get("/").get_data(as_text=True)
    assert "unknown field &#39;kyes&#39;" in page and "disk is full" in page
    stub.health = {"status": "ok", "last_reload_error": None,
                   "store": {"ok": True, "last_error": "OperationalError: database or disk is full",
                             "pending_rows": 0, "dropped_rows": 0, "errors": 3}}
    gw = live_client.get("/api/stats").json["gateway"]
    assert gw["reload_error"] is None and gw["store_error"] is None and gw["status"] == "ok"
    page = live_client.get("/").get_data(as_text=True)
    assert "kyes" not in page and "disk is full" not in page


def test_a_model_cooldown_is_usable_and_says_so(live_auth, live_client, stub):
    keys = [dict(k) for k in LIVE["keys"]]
    keys[0].update(state="ok", cooling_models={"gpt-4o-2024-08-06-with-a-long-name": 25.2})
    stub.stats = {**LIVE, "keys": keys}
    data = live_client.get("/api/stats").json
    o = {r["name"]: r for r in data["keys"]}["openai-1"]
    assert o["state"] == "ok" and o["cooling_models"] == {"gpt-4o-2024-08-06-with-a-long-name": 25.2}
    assert data["totals"]["states"]["ok"] == 2 and data["totals"]["partial"] == 1


def test_client_success_beside_attempt_success(live_auth, live_client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.create(db)
    for i, status in enumerate([200] * 6 + [429, 401, 502, 413]):  # 413/401: gateway refusals
        ui_seed.add_request(db, now - i, "openai-1" if status == 200 else None, status)
    ui_seed.add_request(db, now - 2 * 86400, "openai-1", 500)  # older than the window
    totals = live_client.get("/api/stats").json["totals"]
    assert totals["client_requests"] == 10 and totals["client_success_rate"] == 0.6
    assert totals["success_rate"] == 0.8  # the attempts (the gateway's counters)


def test_totals_keep_deleted_keys_and_a_rename_keeps_history(live_auth, live_client, config_path):
    from uihelpers import KEY_OPENAI
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    minute = int(now // 60)
    ui_seed.create(db)
    ui_seed.add_key_state(db, "openai-1", KEY_OPENAI, {"requests": 10, "successes": 8, "failures": 2})
    # a deleted key (its secret is in no current key) and openai-1's former name
    ui_seed.add_key_state(db, "gone", "sk-deleted-key-secret-00001",
                          {"requests": 90, "successes": 90, "failures": 0})
    ui_seed.add_key_state(db, "openai-old", KEY_OPENAI, {"requests": 7, "successes": 7})
    ui_seed.add_minute(db, "gone", minute, 4, tokens=(10, 5))
    ui_seed.add_minute(db, "openai-old", minute - 1, 12, latency_sum=6.0)
    ui_seed.add_minute(db, "openai-1", minute, 3, latency_sum=3.0)
    ui_seed.add_request(db, now - 5, "openai-old", 200, latency_s=2.0)
    data = live_client.get("/api/stats").json
    t = data["totals"]
    assert t["requests"] == 10 + 90  # the renamed key's counters live on under its new name
    assert t["deleted_keys"] == {"keys": 1, "requests": 90}
    assert t["success_rate"] == round(98 / 100, 4)
    assert t["tokens_today"] == 300 + 15  # openai-1 from the gateway, gone from the store
    assert [r["name"] for r in data["keys"]] == ["openai-1", "claude-1", "local-1"]
    assert {r["name"]: r for r in data["keys"]}["openai-1"]["p95_latency_s"] == 2.0
    s = live_client.get("/api/history?key=openai-1").json["series"]
    assert list(s) == ["openai-1"]
    assert s["openai-1"]["rpm"][-2:] == [12, 3] and s["openai-1"]["latency"][-2:] == [0.5, 1.0]


def test_times_are_local_with_utc_on_hover(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.create(db)
    ui_seed.add_request(db, time.time(), "openai-1", 200)
    ui_seed.add_request(db, 1_700_000_000.0, "openai-1", 200)
    page = client.get("/requests/?range=all").get_data(as_text=True)
    assert ('<time datetime="2023-11-14T22:13:20Z" title="2023-11-14 22:13:20 UTC" data-local>'
            '2023-11-14 22:13:20 UTC</time>') in page


def test_why_a_usable_key_is_held_back_reaches_the_dashboard(live_auth, live_client, stub):
    keys = [dict(k) for k in LIVE["keys"]]
    held = [{"reason": "learned_budget", "detail": "requests", "model": "", "seconds_left": 12.5}]
    keys[0].update(state="ok", held_back=held)
    keys[1].update(held_back="not a list")  # a gateway's odd answer is no error
    stub.stats = {**LIVE, "keys": keys}
    rows = {r["name"]: r for r in live_client.get("/api/stats").json["keys"]}
    assert rows["openai-1"]["held_back"] == held
    assert all(r["held_back"] == [] for n, r in rows.items() if n != "openai-1")


def test_the_dashboard_says_which_worker_answered(live_auth, live_client, stub):
    """keymux run --workers N: one port reaches one worker per connection (docs/scaling.md)."""
    stub.stats = {**LIVE, "worker": {"pid": 4242, "index": 2, "of": 2}}
    gw = live_client.get("/api/stats").json["gateway"]
    assert gw["worker"] == {"pid": 4242, "index": 2, "of": 2}
    stub.stats = LIVE  # an older gateway says nothing
    assert live_client.get("/api/stats").json["gateway"]["worker"] is None


def test_several_workers_are_named_on_the_first_paint(live_auth, live_client, stub):
    stub.stats = {**LIVE, "worker": {"pid": 4242, "index": 2, "of": 2}}
    page = live_client.get("/").get_data(as_text=True)
    assert "Live figures from worker 2 of 2 (pid 4242)" in page
    stub.stats = {**LIVE, "worker": {"pid": 4242, "index": 1, "of": 1}}
    page = live_client.get("/").get_data(as_text=True)  # one worker: the banner stays hidden
    assert '<div id="worker-banner" class="banner info" role="status" hidden></div>' in page
