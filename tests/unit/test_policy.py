import json
import random
from email.utils import formatdate

import pytest

from keypool.config import Cooldown
from keypool.policy import (
    FAILURE_CLASSES, MAX_DELAY_S, Budget, Verdict, budget, classify, parse_duration, retry_after,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CD = Cooldown(rate_limited_s=30.0, server_error_s=2.0, max_s=100.0, auth_error_s=1800.0)


def verdict(status, headers=None, body=None, **kw):
    return classify(status, headers or {}, body, cooldown=kw.pop("cooldown", CD),
                    now=kw.pop("now", NOW), **kw)


def iso(t):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_error(code=None, type_=None, message="x"):
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


def gemini_body(delay, wrap=False, at_type="type.googleapis.com/google.rpc.RetryInfo"):
    doc = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                     "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                                 {"@type": at_type, "retryDelay": delay}]}}
    return json.dumps([doc] if wrap else doc).encode()


# -- the table ---------------------------------------------------------------------------

def test_failure_classes():
    assert FAILURE_CLASSES == ("rate_limited", "quota", "auth", "server", "client_error")


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304, 399])
def test_success_and_redirects_are_ok(status):
    assert verdict(status) == Verdict("ok", False, 0.0, "none", False)


def test_rate_limited_without_hint_uses_configured_cooldown():
    v = verdict(429, body=openai_error("rate_limit_exceeded", "requests"))
    assert v == Verdict("rate_limited", True, 30.0, "model", False)


def test_rate_limited_uses_upstream_hint():
    v = verdict(429, {"retry-after": "7"})
    assert (v.outcome, v.retry, v.cooldown_s, v.scope) == ("rate_limited", True, 7.0, "model")


def test_rate_limited_zero_hint_is_kept():
    assert verdict(429, {"retry-after": "0"}).cooldown_s == 0.0


def test_rate_limited_gemini_body_hint():
    v = verdict(429, body=gemini_body("12s"))
    assert (v.outcome, v.cooldown_s) == ("rate_limited", 12.0)


@pytest.mark.parametrize("body", [
    openai_error(code="insufficient_quota", type_="insufficient_quota",
                 message="You exceeded your current quota, please check your plan."),
    openai_error(code=None, type_="insufficient_quota"),
    openai_error(code="insufficient_quota"),
    openai_error(code="billing_hard_limit_reached"),
    openai_error(code="billing_not_active"),
    openai_error(message="You exceeded your current quota, please check your plan."),
    openai_error(message="Your credit balance is too low to access the API."),
    b'{"error": {"code": "insufficient_quota", "mess',  # truncated still counts
])
def test_429_quota_bodies(body):
    assert verdict(429, body=body) == Verdict("quota", True, 1800.0, "key", False)


def test_quota_code_wins_over_retry_hint():
    v = verdict(429, {"retry-after": "5"}, openai_error(code="insufficient_quota"))
    assert v.outcome == "quota"


def test_gemini_per_minute_quota_message_with_retry_info_is_rate_limited():
    doc = json.loads(gemini_body("20s"))
    doc["error"]["message"] = "You exceeded your current quota, please check your plan"
    v = verdict(429, body=json.dumps(doc).encode())
    assert (v.outcome, v.cooldown_s, v.scope) == ("rate_limited", 20.0, "model")


@pytest.mark.parametrize("body", [None, b"", b"payment required", b"\xff\xfe"])
def test_402_is_quota(body):
    assert verdict(402, body=body) == Verdict("quota", True, 1800.0, "key", False)


def test_anthropic_drained_400_is_quota():
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message":
        "Your credit balance is too low to access the Anthropic API."}}).encode()
    assert verdict(400, body=body).outcome == "quota"


def test_400_echoing_the_phrase_is_not_quota():
    body = openai_error(message="Invalid value 'your credit balance is too low' for 'x'")
    assert verdict(400, body=body).outcome == "client_error"


@pytest.mark.parametrize("status", [401, 403])
def test_auth(status):
    assert verdict(status, body=b"{}") == Verdict("auth", True, 1800.0, "key", False)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 599, 408, None])
def test_server_errors(status):
    v = verdict(status)
    assert v == Verdict("server", True, 2.0, "key", True)


@pytest.mark.parametrize("status", [0, 42, 600, 999, -1])
def test_non_http_status_is_server(status):
    assert verdict(status).outcome == "server"


@pytest.mark.parametrize("status", [400, 404, 405, 409, 413, 415, 422, 451])
def test_other_4xx_is_client_error(status):
    v = verdict(status, {"retry-after": "10"}, openai_error("invalid_request_error"))
    assert v == Verdict("client_error", False, 0.0, "none", False)


@pytest.mark.parametrize("body", [None, b"", b"not json", b"{", b"[1, 2", b"\x00\xff" * 50,
                                  b"<html>502 Bad Gateway</html>", b"[" * 100_000, b"null",
                                  b'{"error": null}', b'{"error": {"details": 5}}', b"[null]"])
@pytest.mark.parametrize("status", [200, 400, 402, 429, 500, None])
def test_bad_bodies_never_raise(status, body):
    assert verdict(status, body=body).outcome in FAILURE_CLASSES + ("ok",)


def test_verdict_is_frozen():
    v = verdict(200)
    with pytest.raises(AttributeError):
        v.retry = True


# -- escalation and jitter ---------------------------------------------------------------

@pytest.mark.parametrize("failures, expected", [
    (0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0), (5, 64.0), (6, 100.0), (7, 100.0), (1000, 100.0),
    (-3, 2.0),
])
def test_server_backoff_doubles_and_caps(failures, expected):
    v = verdict(503, failures_in_row=failures)
    assert v.cooldown_s == pytest.approx(expected)
    assert v.escalate


def test_jitter_within_bounds_and_varies():
    rng = random.Random(42)
    values = [verdict(500, failures_in_row=2, rng=rng).cooldown_s for _ in range(500)]
    assert all(8.0 * 0.9 <= x <= 8.0 * 1.1 for x in values)
    assert min(values) < 7.4 and max(values) > 8.6  # spread across the range
    assert len(set(values)) > 400


def test_jitter_applies_after_cap_and_is_reproducible():
    a = [verdict(None, failures_in_row=50, rng=random.Random(7)).cooldown_s for _ in range(3)]
    assert len(set(a)) == 1 and 90.0 <= a[0] <= 110.0


def test_no_rng_means_no_jitter():
    assert verdict(500, failures_in_row=1).cooldown_s == 4.0


def test_jitter_not_applied_to_other_outcomes():
    rng = random.Random(1)
    assert verdict(429, rng=rng).cooldown_s == 30.0
    assert verdict(401, rng=rng).cooldown_s == 1800.0


def test_default_cooldown_values():
    v = classify(500, {}, None, cooldown=Cooldown(), failures_in_row=20, now=NOW)
    assert v.cooldown_s == 600.0


# -- parse_duration ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5),
    ("1.5s", 1.5), ("30", 30.0), ("2.25", 2.25), ("0", 0.0), ("7m12s", 432.0),
    ("500us", 0.0005), ("500µs", 0.0005), ("100ns", 1e-7), (".5s", 0.5), ("1h", 3600.0),
    ("  3s ", 3.0), ("-1s", -1.0), ("+2s", 2.0), ("1m1ms", 60.001),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "1x", "abc", "1 s", "nan", "inf", "1e3", "1_0",
                                  "1s2", "--1s", "1.2.3s", "ms", "x" * 100, None, 5])
def test_parse_duration_garbage(text):
    assert parse_duration(text) is None


# -- retry_after -------------------------------------------------------------------------

def test_nothing_usable_is_none():
    assert retry_after({}, None, NOW) is None
    assert retry_after({"content-type": "application/json"}, b'{"error": {}}', NOW) is None


@pytest.mark.parametrize("value, expected", [("1500", 1.5), ("250.5", 0.2505), ("0", 0.0)])
def test_retry_after_ms(value, expected):
    assert retry_after({"retry-after-ms": value}, None, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value, expected", [("120", 120.0), ("1.5", 1.5), (" 3 ", 3.0)])
def test_retry_after_seconds(value, expected):
    assert retry_after({"retry-after": value}, None, NOW) == pytest.approx(expected)


def test_retry_after_http_date():
    h = {"retry-after": formatdate(NOW + 90, usegmt=True)}
    assert retry_after(h, None, NOW) == pytest.approx(90.0)


def test_retry_after_http_date_other_zone():
    h = {"retry-after": formatdate(NOW + 3600 + 45, localtime=False).replace("-0000", "+0100")}
    assert retry_after(h, None, NOW) == pytest.approx(45.0)


def test_retry_after_http_date_in_past_is_zero():
    h = {"retry-after": formatdate(NOW - 500, usegmt=True)}
    assert retry_after(h, None, NOW) == 0.0


def test_retry_after_ms_wins_over_retry_after():
    h = {"retry-after-ms": "2500", "retry-after": "60", "x-ratelimit-reset-requests": "9s"}
    assert retry_after(h, None, NOW) == pytest.approx(2.5)


def test_retry_after_wins_over_openai_and_anthropic_and_gemini():
    h = {"retry-after": "60", "x-ratelimit-reset-requests": "9s",
         "anthropic-ratelimit-requests-reset": iso(NOW + 5)}
    assert retry_after(h, gemini_body("3s"), NOW) == 60.0


def test_openai_wins_over_anthropic_and_gemini():
    h = {"x-ratelimit-reset-tokens": "9s", "anthropic-ratelimit-requests-reset": iso(NOW + 5)}
    assert retry_after(h, gemini_body("3s"), NOW) == 9.0


def test_anthropic_wins_over_gemini():
    h = {"anthropic-ratelimit-requests-reset": iso(NOW + 5)}
    assert retry_after(h, gemini_body("3s"), NOW) == pytest.approx(5.0)


@pytest.mark.parametrize("bad", ["soon", "-5", "nan", "inf", "1e3", "", "Mon, 99 Foo 2023",
                                 "Wed, 32 Nov 2023 25:61:00 GMT"])
def test_garbage_retry_after_falls_through(bad):
    assert retry_after({"retry-after-ms": bad, "retry-after": bad}, None, NOW) is None
    h = {"retry-after-ms": bad, "retry-after": bad, "x-ratelimit-reset-requests": "4s"}
    assert retry_after(h, None, NOW) == 4.0


def test_garbage_ms_falls_to_valid_retry_after():
    assert retry_after({"retry-after-ms": "later", "retry-after": "8"}, None, NOW) == 8.0


@pytest.mark.parametrize("headers, expected", [
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
      "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}, 1.0),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
      "x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "0"}, 360.0),
    ({"x-ratelimit-reset-requests": "1m", "x-ratelimit-reset-tokens": "20ms",
      "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "0"}, 0.02),
    ({"x-ratelimit-reset-requests": "1h2m3.5s", "x-ratelimit-reset-tokens": "20ms",
      "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "10"}, 3723.5),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "0.5s"}, 1.0),
    ({"x-ratelimit-reset-tokens": "0.5s"}, 0.5),
    ({"x-ratelimit-reset-requests": "17"}, 17.0),
    # the exhausted one's reset is garbage: fall back to the larger valid one
    ({"x-ratelimit-reset-requests": "soon", "x-ratelimit-reset-tokens": "3s",
      "x-ratelimit-remaining-requests": "0"}, 3.0),
    ({"x-ratelimit-reset-requests": "bad", "x-ratelimit-reset-tokens": "worse",
      "retry-after": "x"}, None),
])
def test_openai_reset_headers(headers, expected):
    got = retry_after(headers, None, NOW)
    assert got == (None if expected is None else pytest.approx(expected))


def test_anthropic_reset_takes_latest():
    h = {"anthropic-ratelimit-requests-reset": iso(NOW + 10),
         "anthropic-ratelimit-tokens-reset": iso(NOW + 40),
         "anthropic-ratelimit-input-tokens-reset": iso(NOW + 25),
         "anthropic-ratelimit-output-tokens-reset": "garbage"}
    assert retry_after(h, None, NOW) == pytest.approx(40.0)


@pytest.mark.parametrize("name", ["requests", "tokens", "input-tokens", "output-tokens"])
def test_anthropic_each_reset_header(name):
    h = {f"anthropic-ratelimit-{name}-reset": iso(NOW + 12)}
    assert retry_after(h, None, NOW) == pytest.approx(12.0)


def test_anthropic_fixed_timestamp_and_offsets():
    h = {"anthropic-ratelimit-requests-reset": "2026-11-23T16:40:05Z"}
    now = 1_795_452_000.0  # 2026-11-23T16:40:00Z
    assert retry_after(h, None, now) == pytest.approx(5.0)
    h = {"anthropic-ratelimit-requests-reset": "2026-11-23T17:40:05.5+01:00"}
    assert retry_after(h, None, now) == pytest.approx(5.5)


def test_anthropic_reset_in_past_is_zero():
    h = {"anthropic-ratelimit-tokens-reset": iso(NOW - 100)}
    assert retry_after(h, None, NOW) == 0.0


@pytest.mark.parametrize("body, expected", [
    (gemini_body("30s"), 30.0),
    (gemini_body("1.5s"), 1.5),
    (gemini_body("30s", wrap=True), 30.0),
    (gemini_body("2s", at_type="google.rpc.RetryInfo"), 2.0),
    (gemini_body("later"), None),
    (gemini_body("30s", at_type="type.googleapis.com/google.rpc.Help"), None),
    (gemini_body("30s")[:-20], None),  # truncated: not JSON
    (b'{"error": {"details": [null, 3, "x"]}}', None),
    (b'[{"error": "nope"}, {"error": {"details": [{"@type": "google.rpc.RetryInfo",'
     b' "retryDelay": "4s"}]}}]', 4.0),
])
def test_gemini_retry_info(body, expected):
    got = retry_after({}, body, NOW)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("headers, body", [
    ({"retry-after": "999999"}, None),
    ({"retry-after-ms": "999999999999"}, None),
    ({"x-ratelimit-reset-requests": "100000h"}, None),
    ({"anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z"}, None),
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, None),
    ({}, gemini_body("99999999s")),
])
def test_clamped_to_a_day(headers, body):
    assert retry_after(headers, body, NOW) == MAX_DELAY_S == 86400.0


def test_negative_go_duration_clamps_to_zero():
    assert retry_after({"x-ratelimit-reset-tokens": "-3s"}, None, NOW) == 0.0


def test_429_cooldown_is_capped_at_max_s():
    assert verdict(429, {"retry-after": "999999"}).cooldown_s == CD.max_s == 100.0
    assert verdict(429, {}).cooldown_s == 30.0  # rate_limited_s, below max_s


# Absurd hints: a number that is not one is ignored (the default applies), a huge one or a
# far-future date is capped at max_s, a date in the past means "now". Never above max_s.
@pytest.mark.parametrize("headers, expected", [
    ({"retry-after": "-1"}, 30.0),
    ({"retry-after": "1e12"}, 30.0),
    ({"retry-after": "1000000000000"}, 100.0),
    ({"retry-after": "9" * 400}, 100.0),            # float() says inf
    ({"retry-after": "inf"}, 30.0),
    ({"retry-after": "nan"}, 30.0),
    ({"retry-after": "soon, please"}, 30.0),
    ({"retry-after": "\x00\x01"}, 30.0),
    ({"retry-after": ""}, 30.0),
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 100.0),
    ({"retry-after": formatdate(NOW + 10**9, usegmt=True)}, 100.0),
    ({"retry-after": formatdate(NOW - 500, usegmt=True)}, 0.0),
    ({"retry-after-ms": "-5"}, 30.0),
    ({"retry-after-ms": "1e15"}, 30.0),
    ({"retry-after-ms": "999999999999999"}, 100.0),
    ({"x-ratelimit-reset-requests": "-10s"}, 0.0),
    ({"x-ratelimit-reset-requests": "100000h"}, 100.0),
    ({"anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z"}, 100.0),
    ({"anthropic-ratelimit-requests-reset": "not a date"}, 30.0),
], ids=lambda x: repr(x)[:40])
def test_absurd_retry_after_is_ignored_or_capped(headers, expected):
    v = verdict(429, headers)
    assert v.outcome == "rate_limited" and v.cooldown_s == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= v.cooldown_s <= CD.max_s


# -- budget ------------------------------------------------------------------------------

def test_budget_openai():
    h = {"x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
         "x-ratelimit-reset-requests": "6ms", "x-ratelimit-remaining-tokens": "149984",
         "x-ratelimit-reset-tokens": "6m0s"}
    b = budget(h, NOW)
    assert b == Budget(9999, pytest.approx(0.006), 149984, 360.0)


def test_budget_anthropic():
    h = {"anthropic-ratelimit-requests-remaining": "49",
         "anthropic-ratelimit-requests-reset": iso(NOW + 30),
         "anthropic-ratelimit-tokens-remaining": "0",
         "anthropic-ratelimit-tokens-reset": iso(NOW - 5)}
    assert budget(h, NOW) == Budget(49, pytest.approx(30.0), 0, 0.0)


def test_budget_partial():
    assert budget({"x-ratelimit-remaining-tokens": "12"}, NOW) == Budget(None, None, 12, None)
    assert budget({"anthropic-ratelimit-tokens-reset": iso(NOW + 8)}, NOW) == Budget(
        None, None, None, pytest.approx(8.0))


def test_budget_none_without_headers():
    assert budget({}, NOW) is None
    assert budget({"retry-after": "3", "content-type": "application/json"}, NOW) is None


def test_budget_garbage_values():
    h = {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "soon",
         "x-ratelimit-remaining-tokens": "12.5", "x-ratelimit-reset-tokens": ""}
    assert budget(h, NOW) is None
    h["x-ratelimit-remaining-requests"] = "7"
    assert budget(h, NOW) == Budget(7, None, None, None)


def test_budget_reset_clamped():
    assert budget({"x-ratelimit-reset-tokens": "1000h"}, NOW).tokens_reset_s == 86400.0
