"""keypool.store.fleetspend against a real redis-server: each process's spend rows in
Redis, written as running totals (a batch written twice, a restart and rows restored from
SQLite never count twice), the fleet's month read back into /_keymux/stats' snapshot, and
`keymux report --fleet`."""
import datetime as dt
import json
import time

import pytest
import redis

from keypool.periods import Periods
from keypool.report import read_fleet
from keypool.spend import Ledger
from keypool.store import Batch
from keypool.store.fleetlog import FleetLog
from keypool.store.fleetspend import FleetSpend, day_key, days_back
from keypool.usage import Usage

from tests.redisserver import RedisServer, needs_redis

pytestmark = needs_redis

DAY = "2026-11-30"
MONTH = "2026-11"


@pytest.fixture(scope="module")
def server():
    with RedisServer() as s:
        yield s


def drained(usd=0.5, requests=1, model="gpt-4o", day=DAY, key="k1", client="app"):
    return {(day, key, client, "openai", model): {"usd": usd, "requests": requests,
                                                  "unknown": 0, "tokens_in": 10 * requests,
                                                  "tokens_out": 5 * requests,
                                                  "cache_read": 0, "cache_write": 0}}


def log_for(server, prefix, spend_id):
    log = FleetLog(redis.Redis.from_url(server.url), prefix, 1000, f"{spend_id}:1", spend_id)
    log.spend.labels = (DAY, MONTH)
    return log


def fleet_rows(r, prefix, day=DAY):
    return {tuple(json.loads(f)): json.loads(v) for f, v in r.hgetall(day_key(prefix, day)).items()}


def test_running_totals_per_process(server):
    r = redis.Redis.from_url(server.url)
    a, b = log_for(server, "s1", "hostA@1"), log_for(server, "s1", "hostB@2")
    a.submit(Batch(spend=drained(0.5)))
    a.submit(Batch(spend=drained(0.25)))
    b.submit(Batch(spend=drained(1.0, requests=2)))
    assert a.flush() and b.flush()
    rows = fleet_rows(r, "s1")
    assert rows[("hostA@1", "k1", "app", "openai", "gpt-4o")] == [0.75, 2, 0, 20, 10, 0, 0]
    assert rows[("hostB@2", "k1", "app", "openai", "gpt-4o")] == [1.0, 2, 0, 20, 10, 0, 0]
    assert 0 < r.ttl(day_key("s1", DAY)) <= 63 * 86400
    # written again (a retry after a failure mid-pipeline): the same total, not twice
    a.spend.dirty.update(a.spend.run)
    a.submit(Batch())
    assert a.flush()
    assert fleet_rows(r, "s1")[("hostA@1", "k1", "app", "openai", "gpt-4o")][0] == 0.75
    a.close()
    b.close()


def test_restart_goes_on_from_its_own_total(server):
    """A restarted process (same id) reads back what it spent and adds to it: the fleet
    counts its spend once, whatever its SQLite store restored."""
    r = redis.Redis.from_url(server.url)
    first = log_for(server, "s2", "hostA@1")
    first.submit(Batch(spend=drained(0.5)))
    assert first.flush()
    first.close()
    again = log_for(server, "s2", "hostA@1")
    again.submit(Batch(spend=drained(0.25)))
    assert again.flush()
    rows = fleet_rows(r, "s2")
    assert list(rows) == [("hostA@1", "k1", "app", "openai", "gpt-4o")]
    assert rows[("hostA@1", "k1", "app", "openai", "gpt-4o")][:2] == [0.75, 2]
    again.close()


def test_view_and_ledger_snapshot_are_the_fleets(server, monkeypatch):
    import keypool.store.fleetlog as fl
    monkeypatch.setattr(fl, "FLEET_READ_EVERY_S", 0.0)
    wall = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc).timestamp()
    # this process: restored 2.0 from SQLite (spent before this run, in Redis already) ...
    ledger = Ledger(Periods())
    ledger.restore([{"day": DAY, "key": "k1", "client": "app", "provider": "openai",
                     "model": "gpt-4o", "usd": 2.0, "requests": 4}])
    r = redis.Redis.from_url(server.url)
    r.hset(day_key("s3", DAY), json.dumps(["me@1", "k1", "app", "openai", "gpt-4o"],
                                          separators=(",", ":")),
           json.dumps([2.0, 4, 0, 0, 0, 0, 0]))
    # ... another process spent 1.0 on k1 and 0.5 on k2, another day of the month 3.0
    other = log_for(server, "s3", "other@2")
    other.submit(Batch(spend={**drained(1.0), **drained(0.5, key="k2"),
                              **drained(3.0, day="2026-11-02")}))
    assert other.flush()
    me = log_for(server, "s3", "me@1")
    # ... and this run has spent 0.25 (live in the ledger, drained and sent once)
    ledger.add(wall, "k1", "app", "openai", "gpt-4o", 0.25, Usage(input=1, output=1))
    me.submit(Batch(spend=ledger.drain()))
    assert me.flush()
    me.submit(Batch())
    assert me.flush() and me.spend.view is not None and me.spend.view_month == MONTH
    snap = ledger.snapshot(wall, me.spend.view)
    assert snap["today"]["by_key"]["k1"]["usd"] == 3.25    # 2.0 + 0.25 mine, 1.0 theirs
    assert snap["today"]["by_key"]["k2"]["usd"] == 0.5
    assert snap["this_month"]["total"]["usd"] == 6.75
    assert ledger.snapshot(wall)["today"]["total"]["usd"] == 2.25  # this process alone
    # a spend after the last read is live in the stats at once
    ledger.add(wall, "k1", "app", "openai", "gpt-4o", 0.5, Usage(input=1, output=1))
    assert ledger.snapshot(wall, me.spend.view)["today"]["by_key"]["k1"]["usd"] == 3.75
    # the report reads the same rows
    rows = read_fleet(r, "s3", "2026-11-01", DAY, "key")
    assert [(x["name"], x["usd"]) for x in rows] == [("k1", 6.25), ("k2", 0.5)]
    assert read_fleet(r, "s3", DAY, DAY, "key")[0]["usd"] == 3.25
    other.close()
    me.close()


def test_redis_away_keeps_totals_and_writes_them_later():
    with RedisServer() as s:
        log = log_for(s, "s4", "hostA@1")
        log.submit(Batch(spend={**drained(0.5), **drained(2.0, key="k2")}))
        assert log.flush()
        port = s.port
    log.submit(Batch(spend=drained(0.25)))
    assert log.flush(timeout=10)
    assert not log.ok and log.spend.dirty
    with RedisServer(port) as s2:  # back, empty (no persistence)
        r = redis.Redis.from_url(s2.url)
        want = {("hostA@1", "k1", "app", "openai", "gpt-4o"): 0.75,
                ("hostA@1", "k2", "app", "openai", "gpt-4o"): 2.0}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and {
                k: v[0] for k, v in fleet_rows(r, "s4").items()} != want:
            log.submit(Batch())
            log.flush(timeout=5)
        # every row this process holds is back, the one spent on meanwhile with its total
        assert {k: v[0] for k, v in fleet_rows(r, "s4").items()} == want
    log.close()


def test_days_back_and_prune():
    days = days_back("2026-03-01", 3)
    assert days == ["2026-02-26", "2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    fs = FleetSpend("p", "me")
    fs.labels = ("2026-11-30", "2026-11")
    fs.add(drained(1.0, day="2026-01-01"))
    fs.add(drained(1.0))
    fs.written()
    assert [r[0] for r in fs.run] == ["2026-11-30"]


class Counting:
    """A redis client whose pipelines record the hashes they read."""

    def __init__(self, client):
        self.client, self.read = client, []

    def pipeline(self, **kw):
        pipe, read = self.client.pipeline(**kw), self.read
        hgetall = pipe.hgetall

        def counted(name):
            read.append(name)
            return hgetall(name)
        pipe.hgetall = counted
        return pipe


def test_earlier_days_are_read_again_only_every_past_refresh_s(server, monkeypatch):
    """Yesterday, today and tomorrow each time; the rest of the month (final but for a late
    flush, and ~10 µs a row to decode) every PAST_REFRESH_S."""
    import keypool.store.fleetspend as fsm
    r = redis.Redis.from_url(server.url)

    def theirs(usd, day):
        r.hset(day_key("s6", day), json.dumps(["them@9", "k1", "app", "openai", "gpt-4o"],
                                              separators=(",", ":")),
               json.dumps([usd, 1, 0, 0, 0, 0, 0]))

    def month_usd(fs):
        return {row[0]: sums[0] for row, sums in fs.view.items()}

    theirs(1.0, "2026-11-02")
    theirs(2.0, DAY)
    fs = FleetSpend("s6", "me@1")
    fs.labels, fs.based = (DAY, MONTH), True
    counting = Counting(r)
    fs.read(counting)
    assert len(counting.read) == 31 and month_usd(fs) == {"2026-11-02": 1.0, DAY: 2.0}
    theirs(1.5, "2026-11-02")  # a late flush to an earlier day
    theirs(2.5, DAY)
    counting.read.clear()
    fs.read(counting)
    assert counting.read == [day_key("s6", "2026-11-29"), day_key("s6", DAY)]
    assert month_usd(fs) == {"2026-11-02": 1.0, DAY: 2.5}  # today's at once
    monkeypatch.setattr(fsm, "PAST_REFRESH_S", 0.0)
    fs.read(counting)
    assert month_usd(fs) == {"2026-11-02": 1.5, DAY: 2.5}  # the earlier day's, once due


def test_a_failed_read_of_the_whole_month_is_tried_again_next_time(server):
    """Redis away during the read of the whole month: the next read is of the whole month
    again, not of the recent days over an emptied cache."""
    r = redis.Redis.from_url(server.url)
    r.hset(day_key("s7", "2026-11-02"), json.dumps(["them@9", "k1", "app", "openai", "gpt-4o"],
                                                  separators=(",", ":")),
           json.dumps([1.0, 1, 0, 0, 0, 0, 0]))
    fs = FleetSpend("s7", "me@1")
    fs.labels, fs.based = (DAY, MONTH), True

    class Down:
        def pipeline(self, **kw):
            raise redis.ConnectionError("away")

    with pytest.raises(redis.ConnectionError):
        fs.read(Down())
    counting = Counting(r)
    fs.read(counting)
    assert len(counting.read) == 31
    assert {row[0]: sums[0] for row, sums in fs.view.items()} == {"2026-11-02": 1.0}
