"""Pre-emptive rate limits: windows, per-key budgets, client rpm and daily counters."""
from __future__ import annotations

import calendar
import random
import time

import pytest

from keypool.clock import FakeClock
from keypool.limits import (
    ClientRate, DailyCounters, KeyLimits, Window, estimate_tokens, next_daily_reset,
)


def utc(s: str) -> float:
    return float(calendar.timegm(time.strptime(s, "%Y-%m-%d %H:%M:%S")))


# -- Window

def test_rpm_allows_limit_then_waits_for_oldest_to_expire():
    clock = FakeClock(start=0.0)
    w = Window(3)
    for _ in range(3):
        assert w.wait_for(clock.monotonic()) == 0.0
        w.add(clock.monotonic())
        clock.advance(1)
    # at t=3: entries at 0, 1, 2; the one at 0 leaves the window at 60
    assert w.wait_for(clock.monotonic()) == pytest.approx(57.0)
    clock.advance(56.5)
    assert w.wait_for(clock.monotonic()) == pytest.approx(0.5)
    clock.advance(0.5)  # exactly t=60
    assert w.wait_for(clock.monotonic()) == 0.0
    w.add(clock.monotonic())
    assert w.wait_for(clock.monotonic()) == pytest.approx(1.0)  # next oldest is at t=1
    assert w.used(clock.monotonic()) == 3


def test_no_limit_never_waits_but_counts():
    w = Window(None)
    for i in range(50):
        assert w.wait_for(i * 0.1, 1000) == 0.0
        w.add(i * 0.1, 10)
    assert w.used(5.0) == 500
    assert w.used(100.0) == 0


def test_wait_walks_past_as_many_entries_as_needed():
    w = Window(100)
    for t in range(10):
        w.add(float(t), 10)  # full: 100 used
    assert w.wait_for(10.0, 10) == pytest.approx(50.0)   # the entry at 0 frees enough
    assert w.wait_for(10.0, 35) == pytest.approx(53.0)   # entries at 0..3 must go
    assert w.wait_for(10.0, 100) == pytest.approx(59.0)  # all must go


def test_tpm_adjust_down_frees_room_and_up_takes_more():
    w = Window(1000)
    e1 = w.add(0.0, 600)
    w.add(1.0, 300)
    assert w.wait_for(2.0, 200) == pytest.approx(58.0)
    w.adjust(e1, 100)  # real usage far below the estimate
    assert w.used(2.0) == 400
    assert w.wait_for(2.0, 200) == 0.0
    w.adjust(e1, 900)  # and above it: the entry at 1 must go too
    assert w.used(2.0) == 1200
    assert w.wait_for(2.0, 1) == pytest.approx(58.0)     # over the limit: even 1 waits for e1
    assert w.wait_for(2.0, 950) == pytest.approx(59.0)   # ... and this for the entry at 1 too
    assert w.wait_for(60.0, 200) == 0.0  # e1 (t=0) gone: 300 used


def test_adjust_after_expiry_changes_nothing():
    w = Window(10)
    e = w.add(0.0, 5)
    w.add(30.0, 5)
    assert w.used(61.0) == 5
    w.adjust(e, 100)
    assert w.used(61.0) == 5
    assert w.wait_for(61.0, 5) == 0.0


def test_amount_above_limit_waits_for_empty_window_not_forever():
    w = Window(1000)
    assert w.wait_for(0.0, 5000) == 0.0  # empty window: it may go alone
    w.add(0.0, 5000)
    assert w.wait_for(1.0, 5000) == pytest.approx(59.0)
    assert w.wait_for(1.0, 1) == pytest.approx(59.0)  # it also blocks the small ones
    w.add(60.0, 10)
    assert w.wait_for(61.0, 5000) == pytest.approx(59.0)  # waits for the 10 to leave too
    assert w.wait_for(120.0, 5000) == 0.0


def test_custom_span():
    w = Window(2, span=10.0)
    w.add(0.0)
    w.add(1.0)
    assert w.wait_for(5.0) == pytest.approx(5.0)
    assert w.wait_for(10.0) == 0.0


def test_matches_naive_model_under_random_use():
    rng = random.Random(7)
    w, naive, now = Window(5000), [], 0.0
    for _ in range(1500):
        now += rng.expovariate(20)
        amount = rng.choice([1, 50, 400, 2000, 6000])
        live = [e for e in naive if e[0] > now - 60]
        used = sum(e[1].amount for e in live)
        assert w.used(now) == pytest.approx(used)
        expected = 0.0
        need = used - (5000 - amount if amount <= 5000 else 0)
        if need > 0:
            acc = 0.0
            for ts, e in live:
                acc += e.amount
                if acc >= need:
                    expected = ts + 60 - now
                    break
        assert w.wait_for(now, amount) == pytest.approx(expected)
        entry = w.add(now, amount)
        naive.append((now, entry))
        if live and rng.random() < 0.5:  # settle some random earlier reservation
            ts, old = rng.choice(naive)
            w.adjust(old, rng.randint(0, 3000))


def test_amortised_fast_over_100k_events():
    rpm, tpm = Window(3000), Window(200_000)
    start, sent = time.process_time(), 0
    for i in range(100_000):
        now = i * 0.01  # 6000 attempts a window: purging, blocking and compaction all happen
        if rpm.wait_for(now) == 0.0 and tpm.wait_for(now, 100) == 0.0:
            rpm.add(now)
            tpm.adjust(tpm.add(now, 100), 40)
            sent += 1
    assert time.process_time() - start < 1.0
    assert 45_000 < sent < 55_000
    assert rpm.used(1000.0) == 3000


def test_plain_adds_stay_cheap_with_a_big_window():
    w = Window(None)
    start = time.process_time()
    for i in range(100_000):
        w.add(i * 0.0005, 7)  # all 100k within one window: nothing expires
    assert w.used(50.0) == 700_000
    assert time.process_time() - start < 1.0


def test_blocked_check_with_many_tiny_entries_is_not_linear():
    w = Window(100_000)
    for i in range(50_000):
        w.add(i * 0.001, 1)
    w.add(50.0, 50_000)  # window full
    start = time.process_time()
    for _ in range(20_000):
        assert w.wait_for(50.0, 100_000) == pytest.approx(60.0)  # must wait for everything
    assert time.process_time() - start < 1.0


# -- KeyLimits

def test_key_limits_rpm_and_tpm_combined_is_the_max():
    k = KeyLimits(rpm=2, tpm=1000)
    k.reserve(0.0, 100)
    k.reserve(10.0, 800)
    # rpm waits for t=0 to expire (50s); tpm for 900 to drop below 800 -> both gone (t=10 -> 60s)
    assert k.wait_for(20.0, 800) == pytest.approx(50.0)
    assert k.wait_for(20.0, 100) == pytest.approx(40.0)  # rpm-bound only
    k.update_limits(rpm=5, tpm=1000)
    assert k.wait_for(20.0, 100) == 0.0
    assert k.wait_for(20.0, 800) == pytest.approx(50.0)  # tpm-bound only


def test_settle_corrects_estimate_once():
    k = KeyLimits(rpm=None, tpm=1000)
    res = k.reserve(0.0, 900)
    assert k.wait_for(1.0, 200) == pytest.approx(59.0)
    k.settle(res, 50)
    assert k.snapshot(1.0)["tpm_used"] == 50
    assert k.wait_for(1.0, 200) == 0.0
    k.settle(res, 5000)  # a second settle is ignored
    assert k.snapshot(1.0)["tpm_used"] == 50
    res2 = k.reserve(2.0, 10)
    k.settle(res2, 990)  # real usage above the estimate
    assert k.snapshot(2.0)["tpm_used"] == 1040
    assert k.wait_for(2.0, 1) == pytest.approx(58.0)


def test_learned_request_budget_blocks_until_reset_then_is_forgotten():
    k = KeyLimits(rpm=None, tpm=None)
    k.learn(0.0, remaining_requests=0, requests_reset_s=12.0,
            remaining_tokens=None, tokens_reset_s=None)
    assert k.wait_for(1.0, 10) == pytest.approx(11.0)
    assert k.snapshot(1.0)["learned_requests_left"] == 0
    assert k.wait_for(12.0, 10) == 0.0
    assert k.snapshot(12.0)["learned_requests_left"] is None


def test_learned_budgets_are_consumed_by_reservations():
    k = KeyLimits(rpm=None, tpm=None)
    k.learn(0.0, 2, 30.0, 1000, 20.0)
    k.reserve(0.0, 400)
    assert k.wait_for(0.0, 400) == 0.0
    res = k.reserve(0.0, 400)
    snap = k.snapshot(0.0)
    assert (snap["learned_requests_left"], snap["learned_tokens_left"]) == (0, 200)
    assert k.wait_for(0.0, 1) == pytest.approx(30.0)  # no requests left
    k.learn(1.0, 5, 30.0, None, None)  # replaces the request learning only
    assert k.wait_for(1.0, 300) == pytest.approx(19.0)  # 200 tokens left until t=20
    k.settle(res, 100)  # our own charge of that learning is corrected
    assert k.snapshot(1.0)["learned_tokens_left"] == 500
    assert k.wait_for(1.0, 300) == 0.0


def test_newer_learning_is_not_corrected_by_an_older_settle():
    k = KeyLimits(rpm=None, tpm=None)
    k.learn(0.0, None, None, 1000, 60.0)
    res = k.reserve(0.0, 800)
    k.learn(1.0, None, None, 900, 60.0)  # upstream already counted the real usage
    k.settle(res, 100)
    assert k.snapshot(1.0)["learned_tokens_left"] == 900


def test_learned_token_budget_too_small_waits_for_reset():
    k = KeyLimits(rpm=None, tpm=None)
    k.learn(0.0, 100, 60.0, 500, 7.5)
    assert k.wait_for(0.0, 400) == 0.0
    assert k.wait_for(0.0, 600) == pytest.approx(7.5)
    assert k.wait_for(7.5, 600) == 0.0


def test_learning_without_reset_holds_back_only_briefly():
    # Without a reset time nobody knows when the budget frees: parking the key for a whole
    # window idled it long after the upstream had room (bench_goodput found 25% goodput).
    k = KeyLimits(rpm=None, tpm=None)
    k.learn(0.0, 0, None, None, None)
    assert k.wait_for(0.0, 1) == pytest.approx(1.0)
    assert k.wait_for(1.0, 1) == 0.0


def test_combined_wait_takes_the_max_of_all_four():
    k = KeyLimits(rpm=1, tpm=100)
    k.reserve(0.0, 100)              # rpm frees at 60, tpm at 60
    k.learn(0.0, 0, 90.0, 0, 75.0)   # learned: requests at 90, tokens at 75
    assert k.wait_for(0.0, 10) == pytest.approx(90.0)
    k.learn(0.0, 5, 10.0, 0, 75.0)
    assert k.wait_for(0.0, 10) == pytest.approx(75.0)
    k.learn(0.0, 5, 10.0, 500, 75.0)
    assert k.wait_for(0.0, 10) == pytest.approx(60.0)


def test_update_limits_keeps_history():
    k = KeyLimits(rpm=10, tpm=None)
    for t in range(5):
        k.reserve(float(t), 10)
    k.update_limits(rpm=5, tpm=None)
    assert k.wait_for(5.0, 1) == pytest.approx(55.0)  # the 5 old requests still count
    k.update_limits(rpm=5, tpm=40)
    assert k.wait_for(5.0, 1) == pytest.approx(56.0)  # 50 tokens: two of the 10s must go
    snap = k.snapshot(5.0)
    assert snap == {"rpm_used": 5, "rpm_limit": 5, "tpm_used": 50, "tpm_limit": 40,
                    "learned_requests_left": None, "learned_tokens_left": None}
    k.update_limits(rpm=None, tpm=None)
    assert k.wait_for(5.0, 1000) == 0.0


# -- estimate_tokens

@pytest.mark.parametrize("body, body_len, expected", [
    (None, 0, 256),
    (None, 400, 356),
    ({"max_tokens": 1000}, 40, 1010),
    ({"max_completion_tokens": 50}, 41, 61),       # characters/4 rounds up
    ({"max_output_tokens": 7}, 8, 9),
    ({"max_tokens": 5, "max_completion_tokens": 99}, 0, 5),
    ({"max_tokens": "100"}, 0, 256),                # not an int
    ({"max_tokens": True}, 0, 256),                 # bools are not budgets
    ({"max_tokens": None, "max_output_tokens": 30}, 0, 30),
    ({"max_tokens": 0}, 0, 1),                      # never below 1
    (["not", "a", "dict"], 4, 257),
])
def test_estimate_tokens(body, body_len, expected):
    assert estimate_tokens(body, body_len) == expected


# -- ClientRate

def test_client_rate_per_client():
    cr = ClientRate()
    assert [cr.check("a", 2, t) for t in (0.0, 1.0)] == [0.0, 0.0]
    assert cr.check("a", 2, 2.0) == pytest.approx(58.0)
    assert cr.check("a", 2, 3.0) == pytest.approx(57.0)  # refusals are not recorded
    assert cr.check("b", 2, 3.0) == 0.0
    assert cr.check("a", 2, 60.0) == 0.0
    assert cr.check("a", 2, 60.5) == pytest.approx(0.5)
    for _ in range(100):
        assert cr.check("c", None, 0.0) == 0.0


def test_client_rate_reload_keeps_and_forgets():
    cr = ClientRate()
    cr.check("a", 1, 0.0)
    cr.check("b", 1, 0.0)
    assert cr.check("a", 3, 1.0) == 0.0  # raised limit applies at once, history kept
    assert cr.check("a", 2, 2.0) == pytest.approx(58.0)
    cr.forget_except({"b"})
    assert cr.check("a", 1, 2.0) == 0.0
    assert cr.check("b", 1, 2.0) == pytest.approx(58.0)


# -- daily reset

@pytest.mark.parametrize("now, hhmm, expected", [
    ("2024-03-10 23:59:59", "00:00", "2024-03-11 00:00:00"),
    ("2024-03-11 00:00:00", "00:00", "2024-03-12 00:00:00"),  # strictly after
    ("2024-03-11 00:00:01", "00:00", "2024-03-12 00:00:00"),
    ("2024-03-11 08:29:59", "08:30", "2024-03-11 08:30:00"),
    ("2024-03-11 08:30:00", "08:30", "2024-03-12 08:30:00"),
    ("2024-03-11 23:30:00", "08:30", "2024-03-12 08:30:00"),
    ("2024-12-31 23:00:00", "23:59", "2024-12-31 23:59:00"),
    ("2024-12-31 23:59:30", "23:59", "2025-01-01 23:59:00"),
    ("2024-02-28 12:00:00", "06:00", "2024-02-29 06:00:00"),
])
def test_next_daily_reset(now, hhmm, expected):
    assert next_daily_reset(utc(now), hhmm) == utc(expected)


def test_next_daily_reset_fractional_time():
    assert next_daily_reset(utc("2024-03-11 07:59:59") + 0.75, "08:00") == utc("2024-03-11 08:00:00")


@pytest.mark.parametrize("bad", ["24:00", "12:60", "noon", "12"])
def test_next_daily_reset_rejects_bad_times(bad):
    with pytest.raises(ValueError):
        next_daily_reset(0.0, bad)


def test_daily_counters_zero_across_the_boundary():
    d = DailyCounters("08:30")
    t0 = utc("2024-03-11 08:00:00")
    d.add(t0, requests=1, tokens_in=10, tokens_out=20)
    d.add(t0 + 60, requests=2, tokens_in=5)
    assert d.today(t0 + 120) == {"requests": 3, "tokens_in": 15, "tokens_out": 20,
                                 "since": utc("2024-03-10 08:30:00")}
    just_before = utc("2024-03-11 08:29:59") + 0.9
    assert d.today(just_before)["requests"] == 3
    reset = utc("2024-03-11 08:30:00")
    assert d.today(reset) == {"requests": 0, "tokens_in": 0, "tokens_out": 0, "since": reset}
    d.add(reset + 1, requests=1)
    # a long idle gap crosses several resets: still one zeroing, since = the latest reset
    later = utc("2024-03-14 09:00:00")
    assert d.today(later) == {"requests": 0, "tokens_in": 0, "tokens_out": 0,
                              "since": utc("2024-03-14 08:30:00")}


def test_daily_counters_with_fake_clock_wall():
    clock = FakeClock(wall_start=utc("2024-03-11 23:59:00"))
    d = DailyCounters()
    d.add(clock.wall(), requests=5)
    clock.advance(59)
    assert d.today(clock.wall())["requests"] == 5
    clock.advance(1)
    assert d.today(clock.wall()) == {"requests": 0, "tokens_in": 0, "tokens_out": 0,
                                     "since": utc("2024-03-12 00:00:00")}
