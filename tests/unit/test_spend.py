"""The spend ledger: adding, periods, reservations, persistence, the gateway's hooks, report."""
import dataclasses
import datetime as dt
import json
import time

import pytest

from keypool import report
from keypool.clock import FakeClock
from keypool.gateway import Gateway
from keypool.periods import Periods
from keypool.spend import MAX_MODELS, NO_CLIENT, Ledger
from keypool.store import Batch, SQLiteStore
from keypool.store.pending import Pending
from keypool.usage import Usage

from .helpers import client, config, key


def utc(text):
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


U = Usage(input=100, output=50, seen=True)
T0 = utc("2026-11-30 10:00")


def test_add_and_read_by_every_dimension():
    led = Ledger()
    led.add(T0, "k1", "app", "openai", "gpt-4o", 0.25, U)
    led.add(T0 + 1, "k2", "app", "openai", "gpt-4o", 0.5, U)
    led.add(T0 + 2, "k2", None, "anthropic", "claude-x", None, U)
    assert led.spent("client", "app", "day", T0) == pytest.approx(0.75)
    assert led.spent("key", "k2", "month", T0) == pytest.approx(0.5)
    assert led.totals("key", "k2", "day", T0).unknown == 1
    assert led.totals("client", NO_CLIENT, "day", T0).requests == 1
    assert led.spent("provider", "openai", "day", T0) == pytest.approx(0.75)
    snap = led.snapshot(T0)
    assert snap["day"] == "2026-11-30" and snap["month"] == "2026-11"
    assert snap["today"]["total"]["usd"] == pytest.approx(0.75)
    assert snap["today"]["total"]["unknown"] == 1 and snap["today"]["total"]["requests"] == 3
    assert snap["today"]["by_model"]["claude-x"]["usd"] == 0 and \
        snap["today"]["by_model"]["claude-x"]["unknown"] == 1
    assert set(snap["this_month"]["by_key"]) == {"k1", "k2"}


def test_a_new_day_starts_at_zero_the_month_goes_on():
    led = Ledger(Periods("06:00"))
    led.add(utc("2026-11-30 05:00"), "k1", "app", "openai", "m", 1.0, U)  # day 2026-11-29
    led.add(utc("2026-11-30 07:00"), "k1", "app", "openai", "m", 2.0, U)
    now = utc("2026-11-30 08:00")
    assert led.spent("key", "k1", "day", now) == 2.0
    assert led.spent("key", "k1", "month", now) == 3.0
    assert led.spent("key", "k1", "month", utc("2026-12-01 07:00")) == 0.0
    assert led.period_end("day", now) == utc("2026-12-01 06:00")
    assert led.period_end("month", now) == utc("2026-12-01 06:00")


def test_changed_periods_apply_at_once():
    led = Ledger(Periods("00:00"))
    led.add(utc("2026-11-30 10:00"), "k1", None, "openai", "m", 1.0, U)
    assert led.spent("key", "k1", "day", utc("2026-11-30 11:00")) == 1.0
    led.set_periods(Periods("12:00"))  # 11:00 now belongs to the day named 2026-11-29
    assert led.snapshot(utc("2026-11-30 11:00"))["day"] == "2026-11-29"
    assert led.spent("key", "k1", "day", utc("2026-11-30 11:00")) == 0.0
    assert led.spent("key", "k1", "month", utc("2026-11-30 11:00")) == 1.0


def test_reservations_count_until_released():
    led = Ledger()
    led.add(T0, "k1", "app", "openai", "m", 1.0, U)
    hold = led.reserve("k1", "app", 0.5)
    assert led.committed("client", "app", "day", T0) == 1.5
    assert led.committed("key", "k1", "month", T0) == 1.5
    led.release(hold)
    led.release(hold)  # once only
    assert led.committed("client", "app", "day", T0) == 1.0


def test_models_are_bounded():
    led = Ledger()
    for i in range(MAX_MODELS + 5):
        led.add(T0, "k1", None, "openai", f"m{i}", 0.001, U)
    assert len(led.snapshot(T0)["today"]["by_model"]) == MAX_MODELS + 1
    assert led.totals("model", "other", "day", T0).requests == 5


def test_add_is_cheap():
    led = Ledger()
    n = 20_000
    t = time.perf_counter()
    for i in range(n):
        led.add(T0, "k1", "app", "openai", "gpt-4o", 0.001, U)
    per = (time.perf_counter() - t) / n
    print(f"Ledger.add: {per * 1e6:.2f} us")
    assert per < 30e-6


def test_persisted_and_restored(tmp_path):
    store = SQLiteStore(tmp_path / "keymux.db")
    led = Ledger()
    led.add(T0, "k1", "app", "openai", "gpt-4o", 0.25, Usage(input=10, output=5, seen=True,
                                                             cache_read=4))
    led.add(T0, "k1", "app", "openai", "gpt-4o", None, U)
    store.write(Batch(spend=led.drain()))
    assert led.drain() == {}
    led.add(T0 + 5, "k1", "app", "openai", "gpt-4o", 0.5, U)
    store.write(Batch(spend=led.drain()))  # added to the same row
    again = Ledger()
    again.restore(store.load_spend(again.since_day(T0)))
    s = again.totals("key", "k1", "day", T0)
    assert (s.usd, s.requests, s.unknown, s.cache_read) == (0.75, 3, 1, 4)
    assert store.load_spend("2026-12-01") == []
    assert "spend_day" in store.export()
    store.close()


def test_pending_keeps_spend_while_the_store_cannot_write():
    p = Pending()
    row = ("2026-11-30", "k1", "-", "openai", "m")
    first = p.merged(Batch(spend={row: {"usd": 1.0, "requests": 1}}))
    p.keep(first)
    merged = p.merged(Batch(spend={row: {"usd": 2.0, "requests": 1}}))
    assert merged.spend[row] == {"usd": 3.0, "requests": 2}


def test_an_old_database_gains_the_cost_column(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, ts REAL NOT NULL, client TEXT,"
               " key TEXT, provider TEXT, model TEXT, status INTEGER NOT NULL, attempts TEXT"
               " NOT NULL, latency_s REAL, ttfb_s REAL, tokens_in INTEGER NOT NULL DEFAULT 0,"
               " tokens_out INTEGER NOT NULL DEFAULT 0, stream INTEGER NOT NULL DEFAULT 0,"
               " request_body TEXT, response_body TEXT)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.write(Batch(requests=[{"ts": T0, "status": 200, "cost_usd": 0.125}]))
    assert store.export()["requests"][0]["cost_usd"] == 0.125
    store.close()


def gateway(clients=None):
    return Gateway(config(keys=[key("o1")], clients=clients), FakeClock(wall_start=T0))


def test_the_gateway_prices_finish_and_logs_the_cost():
    from genai_prices import Usage as GUsage, calc_price
    g = gateway()
    plan = g.handle("POST", "/v1/chat/completions", {"content-type": "application/json"},
                    json.dumps({"model": "gpt-4o", "messages": []}).encode())
    u = Usage(input=1000, output=500, seen=True)
    g.finish(plan, 200, u)
    g.complete(plan.ticket, 200, plan, u)
    want = float(calc_price(GUsage(input_tokens=1000, output_tokens=500), "gpt-4o",
                            provider_id="openai").total_price)
    assert plan.cost == pytest.approx(want)
    assert g.recorder.drain([]).requests[0]["cost_usd"] == pytest.approx(want)
    assert g.ledger.spent("key", "o1", "day", T0) == pytest.approx(want)
    text = g.metrics.render().decode()
    assert 'keymux_spend_usd_total{client="-",key="o1",model="other",provider="openai"}' in text
    from keypool.endpoints import stats
    s = stats(g)
    assert s["keys"][0]["spend_today_usd"] == pytest.approx(want)
    assert s["keys"][0]["spend_month_usd"] == pytest.approx(want)
    assert s["spend"]["today"]["by_provider"]["openai"]["usd"] == pytest.approx(want)


def test_an_answer_without_usage_is_unknown_a_failure_is_nothing():
    g = gateway()
    body = json.dumps({"model": "gpt-4o", "messages": []}).encode()
    plan = g.handle("POST", "/v1/chat/completions", {}, body)
    g.finish(plan, 200, Usage())
    g.complete(plan.ticket, 200, plan, Usage())
    assert g.recorder.drain([]).requests[0]["cost_usd"] is None
    plan = g.handle("POST", "/v1/chat/completions", {}, body)
    g.finish(plan, 500)
    s = g.ledger.totals("key", "o1", "day", T0)
    assert (s.requests, s.unknown, s.usd) == (1, 1, 0.0)


def test_report_reads_the_store(tmp_path):
    store = SQLiteStore(tmp_path / "keymux.db")
    led = Ledger()
    led.add(T0, "k1", "app", "openai", "gpt-4o", 0.25, U)
    led.add(T0 - 86400 * 10, "k1", "app", "openai", "gpt-4o", 5.0, U)  # before --since 7d
    led.add(T0, "k2", "app", "local", "llama", None, U)
    store.write(Batch(spend=led.drain()))
    store.close()
    first = report.since_day("7d", Periods(), T0)
    assert first == "2026-11-23"
    rows = report.read(tmp_path / "keymux.db", first, "key")
    assert [(r["name"], r["usd"], r["unknown"]) for r in rows] == [("k1", 0.25, 0), ("k2", None, 1)]
    table = report.as_table(rows, first, "2026-11-30", "key")
    assert "unknown" in table and "0.250000" in table
    data = json.loads(report.as_json(rows, first, "2026-11-30", "key"))
    assert data["total"]["usd"] == 0.25 and data["total"]["unknown"] == 1
    assert report.read(tmp_path / "none.db", first, "key") == []
    with pytest.raises(ValueError):
        report.since_day("yesterday", Periods(), T0)


def test_a_reload_that_changes_the_day_reaches_pool_and_ledger_together():
    from keypool.config import Routing
    g = gateway()
    g.update(dataclasses.replace(g.config, routing=Routing(daily_reset="12:00",
                                                           timezone="Asia/Tokyo")))
    assert g.ledger.periods is g.pool.periods
    assert (g.ledger.periods.daily_reset, g.ledger.periods.timezone) == ("12:00", "Asia/Tokyo")
    assert g.pool.by_name["o1"].daily.periods is g.pool.periods
