"""responses.response fills mitmproxy's message data itself (no per-field type check):
pinned here to be exactly what ``http.Response(...)`` builds, in mitmproxy 12.2.3."""
import dataclasses

import pytest
from mitmproxy import http

from keypool.answers import error
from keypool.mitm import responses


def state_without_times(r: http.Response) -> dict:
    s = r.get_state()
    assert s["timestamp_start"] == s["timestamp_end"] is not None
    del s["timestamp_start"], s["timestamp_end"]
    return s


@pytest.mark.parametrize("status, reason, body", [(200, "OK", b'{"a": 1}'), (429, "", b""),
                                                  (502, "Bad Gateway", b"x" * 1000)])
def test_the_response_is_what_mitmproxys_constructor_builds(status, reason, body):
    fields = [(b"content-type", b"application/json"), (b"x-request-id", b"abc")]
    ours = responses.response(status, reason, body, fields)
    want = http.Response(b"HTTP/1.1", status, (reason or responses.reason_phrase(status)).encode(),
                         http.Headers([*fields, (b"content-length", str(len(body)).encode())]),
                         body, None, 0.0, 0.0)
    s, w = state_without_times(ours), want.get_state()
    del w["timestamp_start"], w["timestamp_end"]
    assert s == w
    assert ours.content == body and ours.stream is False and ours.headers["content-length"]
    # every field mitmproxy's dataclass declares is set, with the declared kind of value
    for f in dataclasses.fields(http.ResponseData):
        assert f.name in ours.data.__dict__
    assert vars(ours) == {"data": ours.data}


def test_an_answer_becomes_a_response():
    r = responses.from_answer(error(401, "missing or invalid client token", "invalid_client_token"))
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
    assert b"invalid_client_token" in r.content
