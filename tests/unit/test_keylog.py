"""keypool.keylog: one line per key state change, rate-limited, no secret; and held_back."""
import json
import logging

from keypool.clock import FakeClock
from keypool.gateway import Gateway, Plan
from keypool.keylog import NOTICE, KeyLog, held_back_text, key_changes

from .helpers import config, key

SECRET = "sk-keylog-secret-000000000001"
BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def logged(clock=None, **kw):
    lines = []
    log = KeyLog(clock or FakeClock(), emit=lambda level, line: lines.append((level, line)), **kw)
    return log, lines


def gateway(*names):
    clock = FakeClock()
    g = Gateway(config(keys=[key(n, secret=f"{SECRET}{i}") for i, n in enumerate(names)]), clock)
    lines = []
    g.pool.keylog.emit = lambda level, line: lines.append((level, line))
    return g, clock, lines


def attempt(g, status, headers=None):
    plan = g.handle("POST", "/v1/chat/completions", {"content-type": "application/json"}, BODY)
    assert isinstance(plan, Plan)
    v = g.judge(plan, status, headers or {}, b"{}")
    if not v.retry:
        g.finish(plan, status)
    return plan


def test_cooling_line_names_key_scope_time_status_and_header():
    log, lines = logged()
    log.cooling("openai-2", "gpt-4o", 30, "rate_limited", 429, "Retry-After")
    log.cooling("openai-3", "", 5, "server", 502, "")
    assert lines == [(logging.WARNING, "keymux: key openai-2 cools 30 s for gpt-4o (429, Retry-After)"),
                     (logging.WARNING, "keymux: key openai-3 cools 5.0 s (502, keymux default)")]


def test_dead_probe_recovered_and_held_lines():
    log, lines = logged()
    log.cooling("k1", "", 3600, "auth", 401)
    log.probe("k1", ("",))
    log.recovered("k1", ("",))
    log.held("k2", "requests", "x-ratelimit-remaining-requests", 12)
    log.held("k2", "requests", "x-ratelimit-remaining-requests", 11)  # the same hold: once
    text = [line for _, line in lines]
    assert text[0] == "keymux: key k1 is dead (401, its key was rejected); probed again in 1.0 h"
    assert text[1].startswith("keymux: key k1: probe sent")
    assert text[2] == "keymux: key k1 recovered (its probe succeeded)"
    assert text[3].startswith("keymux: key k2 held back 12 s: the upstream says no requests "
                              "left (x-ratelimit-remaining-requests = 0), until ")
    assert len(text) == 4
    assert [lv for lv, _ in lines] == [logging.WARNING, NOTICE, NOTICE, logging.WARNING]


def test_a_storm_gives_a_summary_line_not_thousands():
    clock = FakeClock()
    log, lines = logged(clock, window_s=10, burst=5)
    for i in range(317):
        log.cooling(f"k{i}", "gpt-4o", 30, "rate_limited", 429, "Retry-After")
    assert len(lines) == 5
    log.flush()  # the window has not ended: nothing yet
    assert len(lines) == 5
    clock.advance(10)
    log.flush()
    assert lines[-1] == (logging.WARNING,
                         "keymux: … and 312 more key state changes in the last 10 s")
    log.flush()
    assert len(lines) == 6
    log.recovered("k1", ("gpt-4o",))  # a new window writes again
    assert len(lines) == 7


def test_reload_key_changes():
    assert key_changes({"a", "b"}, {"b", "c"}) == " (added c; removed a)"
    assert key_changes({"a"}, {"a"}) == ""


def test_pool_and_gateway_log_each_change_once_and_no_secret():
    g, clock, lines = gateway("k1", "k2")
    attempt(g, 401)                                   # k1 dead
    attempt(g, 429, {"retry-after": "7"})             # k2 cools for gpt-4o
    text = [line for _, line in lines]
    assert text[0].startswith("keymux: key k1 is dead (401")
    assert text[1] == "keymux: key k2 cools 7.0 s for gpt-4o (429, Retry-After)"
    clock.advance(8)
    attempt(g, 200)                                   # k2's probe, and it recovers
    text = [line for _, line in lines]
    assert text[2].startswith("keymux: key k2: probe sent for gpt-4o")
    assert text[3] == "keymux: key k2 recovered for gpt-4o (its probe succeeded)"
    n = len(lines)
    attempt(g, 200)  # no state change: no line
    assert len(lines) == n
    assert not any(SECRET in line or "sk-" in line for _, line in lines)


def test_learned_budget_is_logged_and_shown_as_held_back_with_time_left():
    g, clock, lines = gateway("k1")
    attempt(g, 200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"})
    assert lines[-1][1].startswith("keymux: key k1 held back 20 s: the upstream says no requests "
                                   "left (x-ratelimit-remaining-requests = 0)")
    row = g.pool.snapshot()[0]
    assert row["state"] == "ok"
    assert row["held_back"] == [{"reason": "learned_budget", "detail": "requests", "model": "",
                                 "seconds_left": 20.0}]
    assert held_back_text(row["held_back"]) == "held back: upstream says no requests left, 20 s left"
    clock.advance(21)
    assert g.pool.snapshot()[0]["held_back"] == []


def test_held_back_lists_cooldowns_limits_and_hooked_holds():
    g, clock, _ = gateway("k1")
    k = g.pool.by_name["k1"]
    g.pool.cool_down(k, "gpt-4o", 30, "rate_limited")
    g.pool.cool_down(k, "", 5, "server")
    g.pool.hold_checks.append(lambda key, now: [{"reason": "budget", "detail": "monthly_usd",
                                                 "model": "", "seconds_left": 100.0}])
    held = g.pool.snapshot()[0]["held_back"]
    assert [(h["reason"], h["detail"], h["model"], h["seconds_left"]) for h in held] == [
        ("budget", "monthly_usd", "", 100.0), ("cooldown", "rate_limited", "gpt-4o", 30.0),
        ("cooldown", "server", "", 5.0)]
    assert held_back_text(held[1:]) == "rate limited for gpt-4o, 30 s left"
