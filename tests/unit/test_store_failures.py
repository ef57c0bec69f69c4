"""A store that cannot write says so, keeps what it could not write (bounded), retries."""
import json
import logging
import sqlite3
import time

from keypool.clock import FakeClock
from keypool.gateway import Gateway
from keypool.store import Batch, SQLiteStore, Writer
from keypool.store.pending import Pending

from .helpers import config, key

FULL = sqlite3.OperationalError("database or disk is full")


class FlakyStore:
    """Raises ``error`` while ``broken``; records what it was handed."""

    def __init__(self):
        self.broken = False
        self.rows: list[dict] = []
        self.usage: dict = {}
        self.states: list[dict] = []

    def write(self, batch):
        if self.broken:
            raise FULL
        self.rows += batch.requests
        for k, sums in batch.usage.items():
            mine = self.usage.setdefault(k, {"provider": sums["provider"]})
            for f, v in sums.items():
                if f != "provider":
                    mine[f] = mine.get(f, 0) + v
        self.states = batch.key_states

    def prune(self, before):
        return 0


def rows(n, start=0, body=None):
    return [{"ts": time.time(), "status": 200, "attempts": [], "n": start + i,
             **({"request_body": body} if body else {})} for i in range(n)]


def test_failed_batches_are_kept_and_retried_in_order(caplog):
    store = FlakyStore()
    w = Writer(store, 14)
    store.broken = True
    with caplog.at_level(logging.WARNING, logger="keymux"):
        for i in range(5):
            w.submit(Batch(rows(10, i * 10), {("a", 1): {"provider": "p", "requests": 10}},
                           [{"key": "a", "n": i}]))
            assert w.flush()
        status = w.status()
        assert status["ok"] is False and status["errors"] == 5
        assert status["pending_rows"] == 50 and status["dropped_rows"] == 0
        assert "database or disk is full" in status["last_error"]
        store.broken = False
        w.submit(Batch(rows(1, 50)))
        assert w.flush()
    assert [r["n"] for r in store.rows] == list(range(51))
    assert store.usage[("a", 1)]["requests"] == 50
    assert store.states == [{"key": "a", "n": 4}]  # the newest export, not a stale one
    status = w.status()
    assert status["ok"] is True and status["pending_rows"] == 0 and status["errors"] == 5
    assert status["last_error"]  # what went wrong stays visible after recovery
    # one line when it starts failing, one when it recovers: not one per batch
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in lines) == 1
    assert sum("writes again: 50 kept" in m for m in lines) == 1
    w.close()


def test_an_empty_flush_still_retries_what_is_kept():
    store = FlakyStore()
    w = Writer(store, 14)
    store.broken = True
    w.submit(Batch(rows(3)))
    assert w.flush() and w.failing
    store.broken = False
    w.submit(Batch())  # nothing new this second
    assert w.flush()
    assert len(store.rows) == 3 and not w.failing
    w.close()


def test_the_buffer_drops_oldest_past_its_bound_and_counts():
    store = FlakyStore()
    w = Writer(store, 14, Pending(max_rows=25))
    store.broken = True
    for i in range(4):
        w.submit(Batch(rows(10, i * 10)))
        w.flush()
    assert w.status()["pending_rows"] == 25 and w.status()["dropped_rows"] == 15
    store.broken = False
    w.submit(Batch())
    w.flush()
    assert [r["n"] for r in store.rows] == list(range(15, 40))
    assert w.status()["dropped_rows"] == 15
    w.close()


def test_the_buffer_is_bounded_by_bytes_too():
    p = Pending(max_bytes=10_000)
    p.keep(Batch(rows(10, body="x" * 2000)))
    assert len(p) == 4 and p.dropped_rows == 6


def test_usage_minutes_past_their_bound_drop_the_oldest():
    p = Pending(max_minutes=2)
    p.keep(Batch(usage={("a", m): {"provider": "p", "requests": 1} for m in (3, 1, 2)}))
    assert set(p.merged(Batch()).usage) == {("a", 2), ("a", 3)} and p.dropped_minutes == 1


def test_health_says_degraded_and_metrics_count():
    g = Gateway(config(keys=[key("o1")]), clock=FakeClock())
    store = FlakyStore()
    w = Writer(store, 14)
    g.store_status = w.status
    g.metrics.watch_store(w.status)
    body = json.loads(g.handle("GET", "/_keymux/health", {}, None).body)
    assert body["status"] == "ok" and body["store"]["ok"] is True
    store.broken = True
    w.submit(Batch(rows(7)))
    w.flush()
    answer = g.handle("GET", "/_keymux/health", {}, None)
    body = json.loads(answer.body)
    assert answer.status == 200 and body["status"] == "degraded"
    assert body["store"]["pending_rows"] == 7 and "disk is full" in body["store"]["last_error"]
    metrics = g.handle("GET", "/metrics", {}, None).body.decode()
    assert "keymux_store_errors_total 1.0" in metrics
    assert "keymux_store_pending_rows 7.0" in metrics
    assert "keymux_store_dropped_rows_total 0.0" in metrics
    store.broken = False
    w.submit(Batch())
    w.flush()
    assert json.loads(g.handle("GET", "/_keymux/health", {}, None).body)["status"] == "ok"
    w.close()


def test_real_sqlite_full_then_recovers(tmp_path):
    """SQLite itself says SQLITE_FULL (a page limit on the connection), then has room again."""
    store = SQLiteStore(tmp_path / "keymux.db")
    w = Writer(store, 14)
    w.submit(Batch(rows(1)))
    assert w.flush() and not w.failing
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    for i in range(5):
        w.submit(Batch(rows(20, 1 + i * 20, body="y" * 4000)))
        w.flush()
    status = w.status()
    assert not status["ok"] and "full" in status["last_error"]
    assert status["pending_rows"] > 0
    store._db.execute("PRAGMA max_page_count = 1073741823")
    w.submit(Batch())
    assert w.flush() and w.status()["ok"]
    count = sqlite3.connect(tmp_path / "keymux.db").execute("SELECT count(*) FROM requests")
    assert count.fetchone()[0] == 101
    w.close()
    store.close()


def test_a_state_dir_that_cannot_be_opened_is_retried(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    store = SQLiteStore(blocker / "keymux.db", lazy=True)
    w = Writer(store, 14)
    w.submit(Batch(rows(2)))
    assert w.flush() and w.failing
    blocker.unlink()
    w.submit(Batch())
    assert w.flush() and not w.failing
    assert len(store.export()["requests"]) == 2
    w.close()
    store.close()


def test_a_corrupt_database_is_reported_and_a_sound_one_taken_up(tmp_path):
    path = tmp_path / "keymux.db"
    path.write_bytes(b"this is not an SQLite database, just garbage " * 100)
    store = SQLiteStore(path, lazy=True)
    w = Writer(store, 14)
    w.submit(Batch(rows(3)))
    assert w.flush() and w.failing
    assert "not a database" in w.status()["last_error"]
    path.unlink()  # the operator moves the broken file away
    w.submit(Batch())
    assert w.flush() and not w.failing
    assert len(store.export()["requests"]) == 3
    w.close()
    store.close()
