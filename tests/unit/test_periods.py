"""Days and months from routing.daily_reset and routing.timezone (keypool.periods)."""
import datetime as dt

import pytest

from keypool.clock import FakeClock
from keypool.config import parse_config
from keypool.errors import ConfigError
from keypool.periods import Periods
from keypool.pool import Pool

from .helpers import config, key


def utc(text):
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def at(text, zone):
    from zoneinfo import ZoneInfo
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.parametrize("now,reset,day,start,end", [
    ("2026-11-30 12:00", "00:00", "2026-11-30", "2026-11-30 00:00", "2026-12-01 00:00"),
    ("2026-11-30 05:59:59", "06:00", "2026-11-29", "2026-11-29 06:00", "2026-11-30 06:00"),
    ("2026-11-30 06:00", "06:00", "2026-11-30", "2026-11-30 06:00", "2026-12-01 06:00"),
    ("2026-01-01 00:10", "00:30", "2025-12-31", "2025-12-31 00:30", "2026-01-01 00:30"),
])
def test_day_in_utc(now, reset, day, start, end):
    p = Periods(reset)
    assert p.day(utc(now)) == (utc(start), utc(end), day)


def test_month_starts_at_the_reset_on_the_first():
    p = Periods("06:00")
    assert p.month(utc("2026-12-01 05:00")) == (utc("2026-11-01 06:00"), utc("2026-12-01 06:00"),
                                                "2026-11")
    assert p.month_of(utc("2026-12-01 06:00")) == "2026-12"
    assert p.month(utc("2026-12-31 23:00"))[1] == utc("2027-01-01 06:00")
    assert p.month_of(utc("2024-02-29 12:00")) == "2024-02"
    assert p.month_end(utc("2024-02-29 12:00")) == utc("2024-03-01 06:00")


def test_a_time_zone_moves_the_day():
    p = Periods("00:00", "America/New_York")
    # 03:00 UTC on Dec 1 is 22:00 on Nov 30 in New York
    assert p.day_of(utc("2026-12-01 03:00")) == "2026-11-30"
    assert p.day_end(utc("2026-12-01 03:00")) == utc("2026-12-01 05:00")
    assert p.month_of(utc("2026-12-01 03:00")) == "2026-11"
    tokyo = Periods("09:00", "Asia/Tokyo")  # 09:00 in Tokyo is 00:00 UTC
    assert tokyo.day_start(utc("2026-06-15 12:00")) == utc("2026-06-15 00:00")


def test_dst_days_are_23_and_25_hours_long():
    p = Periods("00:00", "Europe/Berlin")
    start, end, day = p.day(at("2026-03-29 12:00", "Europe/Berlin"))
    assert day == "2026-03-29" and end - start == 23 * 3600
    start, end, day = p.day(at("2026-10-25 12:00", "Europe/Berlin"))
    assert day == "2026-10-25" and end - start == 25 * 3600


def test_a_reset_inside_the_dst_gap_falls_at_the_jump():
    p = Periods("02:30", "Europe/Berlin")  # 2026-03-29 02:00 -> 03:00 local (01:00 UTC)
    start, end, day = p.day(utc("2026-03-29 12:00"))
    assert (day, start) == ("2026-03-29", utc("2026-03-29 01:00"))
    assert end == at("2026-03-30 02:30", "Europe/Berlin")


def test_a_repeated_reset_time_counts_once():
    p = Periods("02:30", "Europe/Berlin")  # 2026-10-25 02:30 happens twice; the first one counts
    start, _, day = p.day(utc("2026-10-25 12:00"))
    assert (day, start) == ("2026-10-25", utc("2026-10-25 00:30"))


def test_timezone_and_reset_are_validated():
    cfg = parse_config("routing: {daily_reset: '06:00', timezone: Europe/Berlin}\n", env={})
    assert (cfg.routing.daily_reset, cfg.routing.timezone) == ("06:00", "Europe/Berlin")
    assert parse_config("version: 1\n", env={}).routing.timezone == "UTC"
    for bad in ("Mars/Olympus", "../etc/passwd", "''"):
        with pytest.raises(ConfigError) as e:
            parse_config(f"routing:\n  timezone: {bad}\n", env={})
        assert e.value.line == 2 and "routing.timezone" in str(e.value)


def test_a_reload_moves_every_keys_day_at_once():
    clock = FakeClock(wall_start=utc("2026-11-30 10:00"))
    pool = Pool(config([key("k1")]), clock)
    k = pool.by_name["k1"]
    k.daily.add(clock.wall(), requests=3)
    assert k.daily.today(clock.wall())["since"] == utc("2026-11-30 00:00")
    new = config([key("k1")])
    new = type(new)(**{**new.__dict__, "routing": type(new.routing)(daily_reset="12:00")})
    pool.update(new)
    today = pool.by_name["k1"].daily.today(clock.wall())
    # 10:00 with a 12:00 reset: the day that began yesterday at 12:00, named 2026-11-29
    assert today["since"] == utc("2026-11-29 12:00") and today["requests"] == 0
    clock.advance(3 * 3600)  # 13:00: a new day under the new rule
    assert pool.by_name["k1"].daily.today(clock.wall())["since"] == utc("2026-11-30 12:00")


def test_the_web_ui_agrees_with_the_gateway():
    from webui.live import day_start
    now = utc("2026-12-01 03:00")
    assert day_start(now, "00:00", "America/New_York") == Periods(
        "00:00", "America/New_York").day_start(now) == utc("2026-11-30 05:00")
