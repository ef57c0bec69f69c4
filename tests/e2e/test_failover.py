"""Failure handling end to end: cooldowns, re-issue on another key, limits (issue 3).

Real mitmdump + keymux, the mock upstream scripted per key, the openai SDK with its own
retries off, so a failure the gateway let through would fail the test.
"""
import json
import threading
import time
import urllib.request
from email.utils import formatdate

import openai
import pytest

from .harness import GatewayProcess

KEYS = {name: f"sk-{name}-failover-{i:08d}" for i, name in enumerate(
    ("f1", "f2", "f3", "f4", "s1", "r1", "r2", "m1", "t1"))}


def yaml(mock_url):
    prov = lambda n, extra="": f"  {n}:\n    base_url: {mock_url}/v1\n{extra}"
    keys = "\n".join(f"  - {{name: {n}, provider: {p}, key: {KEYS[n]}{x}}}" for n, p, x in (
        ("f1", "mock", ""), ("f2", "mock", ""), ("f3", "mock", ""), ("f4", "mock", ""),
        ("s1", "solo", ""), ("r1", "lim", ", rpm: 4"), ("r2", "lim", ", rpm: 4"),
        ("m1", "busy", ", max_in_flight: 2"), ("t1", "tok", ", tpm: 700")))
    return (f"providers:\n{prov('mock', '    models: [\"gpt-*\"]')}\n{prov('solo')}{prov('lim')}"
            f"{prov('busy')}{prov('tok')}keys:\n{keys}\n"
            "routing:\n  max_attempts: 3\n  timeout_s: 3\n  queue_s: 2\n"
            "  cooldown: {rate_limited_s: 30, server_error_s: 1, max_s: 60, auth_error_s: 2}\n")


@pytest.fixture(scope="module")
def gw(mock, tmp_path_factory, confdir):
    with GatewayProcess(tmp_path_factory.mktemp("failover"), yaml(mock.base_url),
                        confdir=confdir) as g:
        yield g


@pytest.fixture(autouse=True)
def _rested(gw):
    for name in KEYS:  # every test starts from healthy keys
        gw.reset(name)


def client(gw, timeout=20):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0, timeout=timeout)


def ask(gw, model="gpt-4o-mini", provider=None, **kw):
    extra = {"x-keymux-provider": provider} if provider else None
    return client(gw).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=extra, **kw)


def stats(gw):
    with urllib.request.urlopen(gw.url + "/_keymux/stats", timeout=5) as r:
        return {k["name"]: k for k in json.loads(r.read())["keys"]}


def count(mock, name):
    return mock.count(KEYS[name])


def test_429_is_reissued_and_the_key_rests(gw, mock):
    mock.set_behavior(KEYS["f1"], status=429, headers={"Retry-After": "30"})
    for _ in range(8):
        assert ask(gw).choices[0].message.content
    assert count(mock, "f1") == 1  # tried once, then left alone while cooling
    f1 = stats(gw)["f1"]
    assert f1["state"] == "ok" and 28 < f1["cooling_models"]["gpt-4o-mini"] <= 30
    assert f1["failures_by_class"] == {"rate_limited": 1}


@pytest.mark.parametrize("headers,body", [
    ({"Retry-After": "2"}, None),
    ({"Retry-After": "DATE+1.8"}, None),
    ({"retry-after-ms": "2000"}, None),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, None),
    ({}, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]}}),
], ids=["seconds", "http-date", "ms", "openai-reset", "gemini-retryinfo"])
def test_retry_after_forms_set_the_cooldown(gw, mock, headers, body):
    if headers.get("Retry-After") == "DATE+1.8":
        # whole seconds: the wait lands in (0.8, 1.8], within queue_s (2)
        headers = {"Retry-After": formatdate(time.time() + 1.8, usegmt=True)}
    mock.set_behavior(KEYS["s1"], status=429, headers=headers, body=body, times=1)
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, provider="solo")  # the only key of its provider: the client sees the 429
    wait = stats(gw)["s1"]["cooldown_s"]
    assert 0.5 <= wait <= 2.0
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 3
    t0 = time.monotonic()
    assert ask(gw, provider="solo").choices  # held (queue_s 2) until the key has rested
    assert time.monotonic() - t0 >= wait - 0.3
    assert count(mock, "s1") == 2


def test_rate_limit_is_scoped_to_the_model(gw, mock):
    mock.set_behavior(KEYS["f1"], status=429, headers={"Retry-After": "30"}, times=1)
    for _ in range(8):
        ask(gw, "gpt-4o-mini")
    before = count(mock, "f1")
    assert before == 1
    for _ in range(8):
        ask(gw, "gpt-4o")  # another model still uses f1
    assert count(mock, "f1") > before
    assert list(stats(gw)["f1"]["cooling_models"]) == ["gpt-4o-mini"]


@pytest.mark.parametrize("behaviour,reason", [
    ({"status": 429, "quota": True}, "quota"),
    ({"status": 402}, "quota"),
    ({"status": 401}, "auth"),
    ({"status": 403}, "auth"),
])
def test_quota_and_auth_failures_rest_the_whole_key(gw, mock, behaviour, reason):
    before = stats(gw)["f1"]["failures_by_class"].get(reason, 0)
    mock.set_behavior(KEYS["f1"], **behaviour)
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1") * 2:
        assert ask(gw, model).choices
    assert count(mock, "f1") == 1
    f1 = stats(gw)["f1"]
    assert f1["state"] == ("dead" if reason == "auth" else "cooling")
    assert f1["cooldown_reason"] == reason
    assert f1["failures_by_class"][reason] == before + 1


@pytest.mark.parametrize("behaviour", [{"status": 500}, {"status": 503}, {"status": 529},
                                       {"reset": True}], ids=["500", "503", "529", "reset"])
def test_server_failures_are_reissued(gw, mock, behaviour):
    before = stats(gw)["f1"]["failures_by_class"].get("server", 0)
    mock.set_behavior(KEYS["f1"], **behaviour)
    for _ in range(4):
        assert ask(gw).choices[0].message.content
    assert count(mock, "f1") == 1
    assert stats(gw)["f1"]["failures_by_class"]["server"] == before + 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_pass_through_without_retry(gw, mock, status):
    mock.set_default(status=status)
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw)
    assert e.value.status_code == status and mock.count() == 1
    assert all(k["state"] == "ok" for k in stats(gw).values())


def test_dead_key_is_probed_once_and_revived(gw, mock):
    mock.set_behavior(KEYS["s1"], status=401, times=1)
    with pytest.raises(openai.APIStatusError):
        ask(gw, provider="solo")
    assert stats(gw)["s1"]["state"] == "dead"
    time.sleep(2.2)  # auth_error_s
    mock.set_behavior(KEYS["s1"], delay_ms=400)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ask(gw, provider="solo")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and stats(gw)["s1"]["state"] == "ok"
    times = sorted(r["time"] for r in mock.requests(KEYS["s1"]))[-4:]
    # one probe went first; the others followed only after it came back
    assert times[1] - times[0] >= 0.3


def _until_f1_fails(gw, mock, deadline_s=8):
    """Ask until f1 (answering 500) is tried; its siblings succeed meanwhile."""
    n, deadline = count(mock, "f1"), time.monotonic() + deadline_s
    while count(mock, "f1") == n:
        assert time.monotonic() < deadline, "f1 was never tried again"
        assert ask(gw).choices  # re-issued on a sibling when f1 fails
        time.sleep(0.05)


def test_server_errors_escalate_and_a_success_resets(gw, mock):
    # f1 fails alone while f2..f4 succeed: its fault, not the provider's; it is cooled.
    mock.set_behavior(KEYS["f1"], status=500)
    waits = []
    for _ in range(3):
        _until_f1_fails(gw, mock)
        waits.append(stats(gw)["f1"]["cooldown_s"])
        time.sleep(waits[-1] + 0.1)
    assert [round(w) for w in waits] == [1, 2, 4]
    assert json.loads(urllib.request.urlopen(gw.url + "/_keymux/stats", timeout=5).read())[
        "providers"]["mock"] == {"state": "ok"}
    mock.set_behavior(KEYS["f1"])
    deadline, before = time.monotonic() + 8, stats(gw)["f1"]["successes"]
    while stats(gw)["f1"]["successes"] == before:  # its probe succeeds: escalation starts over
        assert time.monotonic() < deadline
        ask(gw)
    mock.set_behavior(KEYS["f1"], status=500)
    _until_f1_fails(gw, mock)
    assert round(stats(gw)["f1"]["cooldown_s"]) == 1


def test_single_key_provider_failing_is_an_outage_probed_soon(gw, mock):
    mock.set_behavior(KEYS["s1"], status=500, times=1)
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw, provider="solo")
    assert e.value.status_code == 503 and e.value.body["code"] == "provider_outage"
    assert int(e.value.response.headers["retry-after"]) >= 1
    state = json.loads(urllib.request.urlopen(gw.url + "/_keymux/stats", timeout=5).read())
    assert state["providers"]["solo"]["state"] == "outage"
    assert stats(gw)["s1"]["state"] == "ok"  # the key is not parked for the provider's blip
    t0, deadline = time.monotonic(), time.monotonic() + 5
    while True:  # fast 503s until the probe, about half a second later, succeeds
        try:
            assert ask(gw, provider="solo").choices
            break
        except openai.APIStatusError as e:
            assert e.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.05)
    assert time.monotonic() - t0 < 2.0 and count(mock, "s1") == 2


def test_max_attempts_then_502(gw, mock):
    mock.set_default(status=500)
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw)
    assert e.value.status_code == 502 and mock.count() == 3  # max_attempts of 4 keys
    assert "sk-" not in e.value.response.text


def test_timeout_gives_504(gw, mock):
    mock.set_default(delay_ms=5000)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw)
    assert e.value.status_code == 504 and time.monotonic() - t0 < 4.5


def test_all_keys_rate_limited_gives_429_with_retry_after(gw, mock):
    mock.set_default(status=429, headers={"Retry-After": "30"})
    with pytest.raises(openai.RateLimitError):
        ask(gw)  # max_attempts (3) keys tried, all 429
    assert mock.count() == 3
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw)  # the fourth key, then nothing left
    assert mock.count() == 4
    assert 25 <= int(e.value.response.headers["retry-after"]) <= 30
    n = mock.count()
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        ask(gw)
    assert mock.count() == n and time.monotonic() - t0 < 1  # a fast refusal


def test_queue_waits_for_a_key_that_recovers_soon(gw, mock):
    mock.set_behavior(KEYS["s1"], status=429, headers={"Retry-After": "1"}, times=1)
    with pytest.raises(openai.RateLimitError):
        ask(gw, provider="solo")
    t0 = time.monotonic()
    assert ask(gw, provider="solo").choices  # waits ~1 s (queue_s 2) instead of a 429
    assert 0.5 < time.monotonic() - t0 < 2.5


def test_client_disconnect_stops_retries(gw, mock):
    mock.set_default(status=500, delay_ms=1200)
    with pytest.raises(openai.APITimeoutError):
        client(gw, timeout=0.4).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    time.sleep(2.0)
    assert mock.count() <= 1  # no further attempt after the client left
    assert all(k["in_flight"] == 0 for k in stats(gw).values())


def test_stream_is_reissued_before_any_byte_and_still_streams(gw, mock):
    mock.set_behavior(KEYS["f1"], status=429, headers={"Retry-After": "30"})
    mock.set_behavior(KEYS["f2"], status=503)
    arrivals, text = [], ""
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "150"})
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text.startswith("Hello")
    assert arrivals[-1] - arrivals[0] > 0.45  # chunk by chunk, not in one piece
    assert count(mock, "f3") + count(mock, "f4") == 1


def test_learned_budget_keeps_a_key_away(gw, mock):
    mock.set_behavior(KEYS["f1"], ratelimit_headers={
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"})
    for _ in range(8):
        ask(gw)
    assert count(mock, "f1") == 1 and mock.count() == 8


def test_rpm_is_never_exceeded_under_concurrent_load(gw, mock):
    results = []

    def one():
        try:
            results.append(ask(gw, provider="lim").choices[0].finish_reason)
        except openai.RateLimitError as e:
            results.append(int(e.response.headers["retry-after"]))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(mock, "r1") == 4 and count(mock, "r2") == 4  # rpm 4 each, not one more
    refused = [r for r in results if isinstance(r, int)]
    assert len(refused) == 4 and all(50 <= r <= 60 for r in refused)
    assert not any(r["status"] == 429 for r in mock.requests())


def test_max_in_flight_is_respected(gw, mock):
    mock.set_behavior(KEYS["m1"], delay_ms=300)
    threads = [threading.Thread(target=ask, args=(gw,), kwargs={"provider": "busy"})
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = sorted(r["time"] for r in mock.requests(KEYS["m1"]))
    assert len(starts) == 5
    overlap = max(sum(1 for s in starts if s <= t < s + 0.29) for t in starts)
    assert overlap <= 2


def test_tpm_reservations_stop_a_burst(gw, mock):
    # Each request reserves its estimate (prompt + max_tokens 300) when sent: a concurrent
    # burst cannot overshoot tpm 700 even before any usage comes back.
    mock.set_behavior(KEYS["t1"], delay_ms=400)
    results = []

    def one():
        try:
            ask(gw, provider="tok", max_tokens=300)
            results.append("ok")
        except openai.RateLimitError:
            results.append("refused")

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == count(mock, "t1") == 2
    # the real usage (small) replaced the estimates: the key has room again
    assert ask(gw, provider="tok", max_tokens=300).choices


def test_a_stream_that_falls_silent_is_cut_after_timeout_s(gw, mock):
    stream = client(gw, timeout=30).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "4000"})
    t0 = time.monotonic()
    with pytest.raises(Exception):  # the client sees the stream break, not a 20 s hang
        for _ in stream:
            pass
    assert time.monotonic() - t0 < 8
    time.sleep(0.3)
    assert all(k["in_flight"] == 0 for k in stats(gw).values())
