"""The SQLite store: batches, restore, retention, export/import."""
import json
import sqlite3
import time

import pytest

from keypool.clock import FakeClock
from keypool.pool import Pool
from keypool.store import Recorder, SQLiteStore, Writer

from .helpers import config, key


def batch_with(recorder, pool, rows=()):
    for row in rows:
        recorder.request(row)
    return recorder.drain(pool.export_state())


def test_write_restore_round_trip(tmp_path):
    clock = FakeClock(wall_start=time.time())
    pool = Pool(config(keys=[key("a"), key("b")]), clock)
    lease = pool.pick("openai", "gpt-4o")
    pool.release(lease, outcome="rate_limited", latency=0.2, tokens_in=3, tokens_out=5)
    pool.cool_down(lease.key, "gpt-4o", 50, "rate_limited")
    pool.cool_down(pool.by_name["b"], "", 100, "auth")
    store = SQLiteStore(tmp_path / "s" / "keymux.db")
    rec = Recorder()
    rec.attempt(clock.wall(), "a", "openai", "rate_limited", 0.2, 3, 5)
    store.write(batch_with(rec, pool, [{"ts": clock.wall(), "status": 200, "attempts": [],
                                        "key": "a", "provider": "openai"}]))
    store.close()

    clock2 = FakeClock(start=5.0, wall_start=clock.wall() + 10)  # a restart, 10 s later
    fresh = Pool(config(keys=[key("a"), key("b"), key("c")]), clock2)
    assert fresh.restore_state(SQLiteStore(tmp_path / "s" / "keymux.db").load_keys()) == 2
    snap = {k["name"]: k for k in fresh.snapshot()}
    assert snap["a"]["cooling_models"]["gpt-4o"] == 40.0
    assert snap["b"]["state"] == "dead" and snap["b"]["cooldown_s"] == 90.0
    assert snap["a"]["failures_by_class"] == {"rate_limited": 1} and snap["a"]["tokens_out"] == 5
    assert snap["c"]["requests"] == 0


def test_changed_secret_is_not_restored(tmp_path):
    clock = FakeClock(wall_start=time.time())
    pool = Pool(config(keys=[key("a")]), clock)
    pool.cool_down(pool.by_name["a"], "", 100, "auth")
    store = SQLiteStore(tmp_path / "keymux.db")
    store.write(batch_with(Recorder(), pool))
    rotated = Pool(config(keys=[key("a", secret="sk-a-rotated-0000000000")]), clock)
    assert rotated.restore_state(store.load_keys()) == 0
    assert rotated.snapshot()[0]["state"] == "ok"


def test_usage_minutes_add_up(tmp_path):
    store = SQLiteStore(tmp_path / "keymux.db")
    pool = Pool(config(keys=[key("a")]), FakeClock())
    for _ in range(2):
        rec = Recorder()
        rec.attempt(120.5, "a", "openai", "ok", 0.1, 1, 2)
        rec.attempt(130.0, "a", "openai", "server", 0.3, 0, 0)
        store.write(batch_with(rec, pool))
    row = sqlite3.connect(tmp_path / "keymux.db").execute(
        "SELECT minute, requests, successes, server_errors, tokens_out, latency_sum "
        "FROM usage_minute").fetchall()
    assert row == [(2, 4, 2, 2, 4, 0.8)]


def test_retention_prunes_old_rows(tmp_path):
    store = SQLiteStore(tmp_path / "keymux.db")
    pool = Pool(config(keys=[key("a")]), FakeClock())
    now = time.time()
    store.write(batch_with(Recorder(), pool, [
        {"ts": now - 20 * 86400, "status": 200, "attempts": []},
        {"ts": now - 1000, "status": 200, "attempts": []}]))
    writer = Writer(store, retention_days=14)  # prunes after its first write
    writer.submit(batch_with(Recorder(), pool))
    assert writer.flush()
    writer.close()
    ts = [r[0] for r in sqlite3.connect(tmp_path / "keymux.db").execute("SELECT ts FROM requests")]
    assert ts == [now - 1000]


def test_export_import(tmp_path):
    a = SQLiteStore(tmp_path / "a.db")
    pool = Pool(config(keys=[key("a")]), FakeClock(wall_start=time.time()))
    pool.cool_down(pool.by_name["a"], "", 100, "auth")
    a.write(batch_with(Recorder(), pool, [{"ts": 1.0, "status": 418, "attempts": [{"k": 1}]}]))
    data = json.loads(json.dumps(a.export()))
    b = SQLiteStore(tmp_path / "b.db")
    b.import_(data)
    assert b.export() == a.export()
    assert "secret" not in json.dumps(data)


def test_database_stays_valid_in_wal_mode(tmp_path):
    store = SQLiteStore(tmp_path / "keymux.db")
    db = sqlite3.connect(tmp_path / "keymux.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()


def test_an_import_without_a_table_leaves_that_table_alone(tmp_path):
    """An export from before spend_day existed must not empty today's spend."""
    a = SQLiteStore(tmp_path / "a.db")
    a.write(batch_with(Recorder(), Pool(config(keys=[key("a")]), FakeClock()),
                       [{"ts": 1.0, "status": 200, "attempts": []}]))
    a._conn().execute("INSERT INTO spend_day (day, key, client, provider, model, usd, tokens_in, "
                      "tokens_out, requests) VALUES ('2026-11-30', 'a', 'app', 'p', 'm', 1.5, 1, 2, 1)")
    before = a.export()
    old = {t: rows for t, rows in before.items() if t != "spend_day"}
    a.import_(json.loads(json.dumps(old)))
    assert a.export()["spend_day"] == before["spend_day"] != []


@pytest.mark.parametrize("data", [
    [], {"nope": []}, {"requests": {}}, {"requests": [1]}, {"requests": [{}]},
    {"requests": [{"ts": 1, "status) VALUES (1); --": 2}]},
])
def test_a_malformed_import_is_refused_and_changes_nothing(tmp_path, data):
    a = SQLiteStore(tmp_path / "a.db")
    a.write(batch_with(Recorder(), Pool(config(keys=[key("a")]), FakeClock()),
                       [{"ts": 1.0, "status": 200, "attempts": []}]))
    before = a.export()
    with pytest.raises(ValueError):
        a.import_(data)
    assert a.export() == before
