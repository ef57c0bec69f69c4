"""The fail-closed guard and the hook boundary, in-process with mitmproxy's test helpers."""
import json

import pytest
from mitmproxy.test import taddons, tflow

from keypool.mitm import boundary, runtime
from keypool.mitm.failclosed import FailClosed


@pytest.fixture
def live_keymux(monkeypatch):
    monkeypatch.setattr(runtime, "active", object())


def flow_with_token():
    f = tflow.tflow()
    f.request.headers["authorization"] = "Bearer kmx-client-token-abcdef123456"
    return f


def code(flow) -> str:
    return json.loads(flow.response.content)["error"]["code"]


def test_a_flow_nobody_answered_or_routed_gets_500_and_a_masked_token(live_keymux):
    guard, f = FailClosed(), flow_with_token()
    with taddons.context(guard):
        guard.request(f)
    assert f.response.status_code == 500 and code(f) == "keymux_internal_error"
    assert "abcdef123456" not in f.request.headers["authorization"]


def test_a_flow_keymux_routed_to_its_relay_passes(live_keymux):
    guard, f = FailClosed(), tflow.tflow()
    f.request.host, f.request.port, f.request.path = "127.0.0.1", 41000, "/tok"
    f.metadata[boundary.MARK] = ("127.0.0.1", 41000, "/tok")
    with taddons.context(guard):
        guard.request(f)
    assert f.response is None


def test_a_routed_flow_that_something_repointed_is_refused(live_keymux):
    guard, f = FailClosed(), tflow.tflow()
    f.metadata[boundary.MARK] = ("127.0.0.1", 41000, "/tok")
    f.request.host, f.request.port, f.request.path = "evil.example", 41000, "/tok"
    with taddons.context(guard):
        guard.request(f)
    assert f.response.status_code == 500


def test_no_keymux_loaded_is_503(monkeypatch):
    monkeypatch.setattr(runtime, "active", None)
    guard, f = FailClosed(), flow_with_token()
    with taddons.context(guard):
        guard.request(f)
    assert f.response.status_code == 503 and code(f) == "keymux_not_loaded"
    assert "abcdef123456" not in f.request.headers["authorization"]


def test_answered_flows_are_left_alone(live_keymux):
    guard, f = FailClosed(), tflow.tflow(resp=True)
    before = f.response
    with taddons.context(guard):
        guard.request(f)
    assert f.response is before


def test_fail_headers_sends_the_500_and_never_the_upstream_bytes():
    f = tflow.tflow(resp=True)
    boundary.fail_headers(f)
    assert f.response.status_code == 500
    assert "content-length" not in f.response.headers
    sent = [f.response.stream(b"data: secret chunk\n\n"), f.response.stream(b"more"),
            f.response.stream(b"")]
    body = b"".join(b"".join(part) for part in sent)
    assert json.loads(body)["error"]["code"] == "keymux_internal_error"


def test_the_log_masks_every_secret(caplog):
    try:
        raise RuntimeError("boom sk-real-secret-0123456789 and Bearer kmx-tok-abcdefgh")
    except RuntimeError as e:
        boundary.log_failure("request", e, ["sk-real-secret-0123456789"])
    text = caplog.text
    assert "sk-real-secret-0123456789" not in text and "kmx-tok-abcdefgh" not in text
    assert "internal error in request" in text
