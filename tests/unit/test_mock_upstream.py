"""The mock LLM upstream, driven directly with the official SDKs and with raw HTTP."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import openai
import pytest

from keypool.demo.mock_upstream import MockUpstream

KEY = "sk-test-aaaa1111"
KEY2 = "sk-test-bbbb2222"
ANT_KEY = "sk-ant-test-cccc3333"
CLAUDE = "claude-mock-1"  # not a real model name: the SDK warns about deprecated ones
REPLY = "Hello from the keymux mock upstream."


@pytest.fixture(scope="module")
def server():
    with MockUpstream() as m:
        yield m


_clients: list = []  # SDK clients made by a test, closed after it


@pytest.fixture
def mock(server):
    server.reset()
    yield server
    while _clients:
        _clients.pop().close()
    server.reset()


def oai(mock, key=KEY, **kw):
    kw.setdefault("base_url", mock.base_url + "/v1")
    _clients.append(openai.OpenAI(api_key=key, max_retries=0, timeout=10, **kw))
    return _clients[-1]


def ant(mock, key=ANT_KEY):
    _clients.append(anthropic.Anthropic(base_url=mock.base_url, api_key=key, max_retries=0, timeout=10))
    return _clients[-1]


def raw(mock, method, path, body=None, headers=None, conn=None):
    """One request with http.client; returns (status, headers dict, body bytes)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    c.request(method, path, body=data, headers=headers or {})
    r = c.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    if conn is None:
        c.close()
    return out


MSG = [{"role": "user", "content": "Say hello to the mock please"}]  # 28 chars -> 7 tokens


# ---------------------------------------------------------------- OpenAI shapes

def test_chat_non_stream(mock):
    r = oai(mock).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 5, 12)
    assert mock.count(KEY) == 1 and mock.count(KEY, 200) == 1


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_usage_only_when_asked(mock, include_usage):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(oai(mock).chat.completions.create(model="m", messages=MSG, stream=True, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 7
    else:
        assert usage_chunks == [] and all(c.choices for c in chunks)


def test_sse_events_are_separate_http_chunks(mock):
    """Read the chunked framing by hand: one complete SSE event per HTTP chunk, then [DONE]."""
    s = socket.create_connection(("127.0.0.1", mock.port), timeout=10)
    body = json.dumps({"model": "m", "messages": MSG, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    head = {}
    while (line := f.readline()) != b"\r\n":
        k, _, v = line.decode().partition(":")
        head[k.lower()] = v.strip()
    assert head["transfer-encoding"] == "chunked" and head["content-type"].startswith("text/event-stream")
    events = []
    while (size := int(f.readline().strip(), 16)) != 0:
        events.append(f.read(size))
        assert f.read(2) == b"\r\n"
    f.close()
    s.close()
    assert len(events) == 1 + 5 + 1 + 1  # role, 5 content chunks, finish, [DONE]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"\n\n") == 1 for e in events)
    assert events[-1] == b"data: [DONE]\n\n"


def test_legacy_completions(mock):
    c = oai(mock)
    r = c.completions.create(model="davinci", prompt="abcdefgh")
    assert r.object == "text_completion" and r.choices[0].text == REPLY and r.usage.prompt_tokens == 2
    chunks = list(c.completions.create(model="davinci", prompt="x", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == REPLY
    assert all(ch.usage is None for ch in chunks)


def test_embeddings_deterministic(mock):
    c = oai(mock)
    a = c.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])  # SDK asks for base64
    b = c.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert [d.index for d in a.data] == [0, 1] and all(len(d.embedding) == 8 for d in a.data)
    assert a.data[0].embedding == pytest.approx(b.data[0].embedding, abs=1e-6)
    assert a.data[0].embedding != a.data[1].embedding
    assert a.usage.prompt_tokens == 2 and a.usage.total_tokens == 2


def test_responses_api(mock):
    c = oai(mock)
    r = c.responses.create(model="gpt-4o", input="Tell me something nice")
    assert r.object == "response" and r.status == "completed" and r.output_text == REPLY
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 5, 10)
    events = list(c.responses.create(model="gpt-4o", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 5
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert events[-1].response.usage.output_tokens == 5
    with c.responses.stream(model="gpt-4o", input="hi") as st:
        final = st.get_final_response()
    assert final.output_text == REPLY and final.usage.total_tokens == 6


def test_models_list_and_prefixes(mock):
    ids = [m.id for m in oai(mock).models.list()]
    assert "gpt-4o-mini" in ids
    for prefix in ("/v1beta/openai", "/api/v1", ""):
        c = oai(mock, base_url=mock.base_url + prefix)
        r = c.chat.completions.create(model="m", messages=MSG)
        assert r.choices[0].message.content == REPLY
    paths = [r["path"] for r in mock.requests(KEY)]
    assert paths[-3:] == ["/v1beta/openai/chat/completions", "/api/v1/chat/completions", "/chat/completions"]


# ---------------------------------------------------------------- Anthropic shapes

def test_anthropic_messages_create_stream_count(mock):
    a = ant(mock)
    m = a.messages.create(model=CLAUDE, max_tokens=50, messages=MSG)
    assert m.type == "message" and m.role == "assistant" and m.model == CLAUDE
    assert m.content[0].text == REPLY and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (7, 5)

    with a.messages.stream(model=CLAUDE, max_tokens=50, messages=MSG) as st:
        assert "".join(st.text_stream) == REPLY
        final = st.get_final_message()
    assert final.content[0].text == REPLY and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 5)

    types = [e.type for e in a.messages.create(model=CLAUDE, max_tokens=5, messages=MSG, stream=True)]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") == 5 and "message_delta" in types

    assert a.messages.count_tokens(model=CLAUDE, messages=MSG).input_tokens == 7
    rec = mock.requests(ANT_KEY)[0]  # the 2.x SDK sends the key as a bearer token
    assert ANT_KEY in (rec["headers"].get("x-api-key"), rec["headers"].get("authorization", "")[7:])
    assert "anthropic-version" in rec["headers"] and mock.count(ANT_KEY) == 4


def test_anthropic_requires_version_header(mock):
    status, _, body = raw(mock, "POST", "/v1/messages", {"model": CLAUDE, "messages": MSG, "max_tokens": 5},
                          {"x-api-key": ANT_KEY, "content-type": "application/json"})
    assert status == 400
    err = json.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert mock.count(ANT_KEY, 400) == 1  # the key came from x-api-key


# ---------------------------------------------------------------- behaviours

def test_429_with_retry_after(mock):
    mock.set_behavior(KEY, status=429, headers={"Retry-After": "7", "x-ratelimit-reset-requests": "7s"})
    with pytest.raises(openai.RateLimitError) as ei:
        oai(mock).chat.completions.create(model="m", messages=MSG)
    assert ei.value.response.headers["retry-after"] == "7"
    assert ei.value.body["type"] == "rate_limit_exceeded" and ei.value.body["code"] == "rate_limit_exceeded"
    # other keys are unaffected
    assert oai(mock, KEY2).chat.completions.create(model="m", messages=MSG).choices
    mock.set_behavior(KEY, status=429, quota=True)
    with pytest.raises(openai.RateLimitError) as ei:
        oai(mock).chat.completions.create(model="m", messages=MSG)
    assert ei.value.code == "insufficient_quota"


def test_times_then_ok_and_counters(mock):
    mock.set_behavior(KEY, status=503, times=2)
    c = oai(mock)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="m", messages=MSG)
    assert c.chat.completions.create(model="m", messages=MSG).choices[0].message.content == REPLY
    assert (mock.count(KEY), mock.count(KEY, 503), mock.count(KEY, 200), mock.count(status=503)) == (3, 2, 1, 2)
    assert [r["status"] for r in mock.requests(KEY)] == [503, 503, 200]


def test_for_s_is_a_timed_outage_of_every_key(mock):
    mock.set_default(status=503, for_s=0.6)
    t0 = time.monotonic()
    c = oai(mock)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=MSG)
    deadline = t0 + 5
    while time.monotonic() < deadline:  # recovers by itself once for_s has passed
        try:
            c.chat.completions.create(model="m", messages=MSG)
            break
        except openai.InternalServerError:
            time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.6 and mock.count(status=200) == 1


def test_401_masks_the_key(mock):
    mock.set_behavior(KEY, status=401)
    with pytest.raises(openai.AuthenticationError) as ei:
        oai(mock).chat.completions.create(model="m", messages=MSG)
    msg = ei.value.body["message"]
    assert "sk-…1111" in msg and KEY not in ei.value.response.text
    status, _, body = raw(mock, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert status == 401 and "error" in json.loads(body)  # no credential at all


def test_529_is_anthropic_overloaded(mock):
    mock.set_default(status=529)
    with pytest.raises(anthropic.APIStatusError) as ei:
        ant(mock).messages.create(model=CLAUDE, max_tokens=5, messages=MSG)
    assert ei.value.status_code == 529 and ei.value.body["error"]["type"] == "overloaded_error"


def test_reset_drops_the_connection(mock):
    mock.set_behavior(KEY, reset=True, times=1)
    with pytest.raises(openai.APIConnectionError):
        oai(mock).chat.completions.create(model="m", messages=MSG)
    assert mock.count(KEY, status=0) == 1
    assert oai(mock).chat.completions.create(model="m", messages=MSG).choices  # times=1: ok again


def test_rpm_window(mock):
    mock.set_behavior(KEY, rpm=2, window_s=1)
    c = oai(mock)
    r = c.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert r.headers["x-ratelimit-limit-requests"] == "2" and r.headers["x-ratelimit-remaining-requests"] == "1"
    r = c.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="m", messages=MSG)
    assert ei.value.response.headers["retry-after"] == "1"
    assert ei.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    time.sleep(1.05)
    assert c.chat.completions.create(model="m", messages=MSG).choices
    assert mock.count(KEY, 429) == 1 and mock.count(KEY, 200) == 3


def test_ratelimit_headers_and_delay(mock):
    mock.set_behavior(KEY, ratelimit_headers={"x-ratelimit-remaining-tokens": "999"}, delay_ms=150)
    t0 = time.monotonic()
    r = oai(mock).chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert time.monotonic() - t0 >= 0.14
    assert r.headers["x-ratelimit-remaining-tokens"] == "999"


def _arrivals(stream) -> list[float]:
    return [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]


def test_chunk_delay_is_measurable(mock):
    mock.set_behavior(KEY, chunks=4, chunk_delay_ms=100)
    t = _arrivals(oai(mock).chat.completions.create(model="m", messages=MSG, stream=True))
    assert len(t) == 4 and t[-1] - t[0] >= 0.25
    # the request header overrides the behaviour's delay
    c = oai(mock, default_headers={"x-mock-chunk-delay-ms": "0"})
    t = _arrivals(c.chat.completions.create(model="m", messages=MSG, stream=True))
    assert len(t) == 4 and t[-1] - t[0] < 0.2


def test_behaviour_validation(mock):
    with pytest.raises(ValueError):
        mock.set_behavior(KEY, stauts=429)
    with pytest.raises(ValueError):
        mock.set_behavior(KEY, status=200)


def test_echo_error_body_and_header(mock):
    """A hostile upstream: the raw key comes back in a 4xx body and a response header."""
    mock.set_behavior(KEY, status=401, echo=["body", "header"])
    status, hdrs, body = raw(mock, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG},
                             {"authorization": f"Bearer {KEY}"})
    assert status == 401 and hdrs["x-mock-echo"] == KEY
    assert KEY in json.loads(body)["error"]["message"]
    mock.set_behavior(ANT_KEY, status=429, body="plain text", echo="body")
    status, _, body = raw(mock, "POST", "/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": MSG},
                          {"x-api-key": ANT_KEY, "anthropic-version": "2023-06-01"})
    assert status == 429 and body == f"plain text {ANT_KEY}".encode()


def test_echo_200_body_and_streams(mock):
    mock.set_behavior(KEY, echo=("body", "sse"))
    r = oai(mock).chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == REPLY and r.model_extra["echo"] == KEY
    text = "".join(c.choices[0].delta.content or "" for c in
                   oai(mock).chat.completions.create(model="m", messages=MSG, stream=True) if c.choices)
    assert KEY in text and text.replace(KEY, "") == REPLY
    mock.set_behavior(ANT_KEY, echo=["sse"])
    with ant(mock).messages.stream(model=CLAUDE, max_tokens=5, messages=MSG) as s:
        text = "".join(s.text_stream)
    assert text == ANT_KEY + REPLY
    for endpoint in ("completions", "responses"):  # every stream shape has its echo event
        mock.set_behavior(KEY, echo=["sse"])
        status, _, body = raw(mock, "POST", f"/v1/{endpoint}", {"model": "m", "prompt": "x", "input": "x",
                                                                "stream": True}, {"authorization": f"Bearer {KEY}"})
        assert status == 200 and body.count(KEY.encode()) == 1
    mock.set_behavior(KEY2, echo=["header"])  # a place that does not apply is simply skipped
    assert raw(mock, "GET", "/v1/models", None, {"authorization": f"Bearer {KEY2}"})[1]["x-mock-echo"] == KEY2


def test_echo_validation_and_masked_control_api(mock):
    with pytest.raises(ValueError):
        mock.set_behavior(KEY, echo=["footer"])
    status, _, body = raw(mock, "POST", "/_mock/behavior", {"key": KEY, "echo": ["sse", "header"]})
    assert status == 200 and mock.state.behaviour(KEY).echo == ("sse", "header")
    raw(mock, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG}, {"authorization": f"Bearer {KEY}"})
    _, _, body = raw(mock, "GET", "/_mock/requests?limit=5")
    assert KEY.encode() not in body  # the control API itself never echoes


# ---------------------------------------------------------------- recording and HTTP details

def test_recording_per_key(mock):
    oai(mock).chat.completions.create(model="m", messages=MSG, extra_headers={"X-Trace": "t1"})
    raw(mock, "POST", "/v1beta/openai/embeddings?alt=1", {"model": "e", "input": "x"}, {"x-goog-api-key": KEY2})
    r1, = mock.requests(KEY)
    r2, = mock.requests(KEY2)
    assert r1["method"] == "POST" and r1["path"] == "/v1/chat/completions" and r1["status"] == 200
    assert r1["headers"]["authorization"] == f"Bearer {KEY}" and r1["headers"]["x-trace"] == "t1"
    assert ("x-trace", "t1") in r1["header_list"]
    assert r1["body"] == {"model": "m", "messages": MSG}
    assert r2["path"] == "/v1beta/openai/embeddings?alt=1" and r2["body"]["input"] == "x"
    assert [r["key"] for r in mock.requests()] == [KEY, KEY2] and r1["time"] <= r2["time"]


def test_errors_404_400_and_keepalive(mock):
    h = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    status, _, body = raw(mock, "POST", "/v1/nope", {}, h, conn)
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw(mock, "POST", "/v1/chat/completions", b"{not json", h, conn)
    assert status == 400 and "error" in json.loads(body)
    status, _, _ = raw(mock, "GET", "/v1/models", None, h, conn)
    assert status == 200
    sock = conn.sock
    status, hdrs, _ = raw(mock, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG},
                          dict(h, connection="close"), conn)
    assert status == 200 and hdrs["connection"] == "close" and conn.sock is None  # closed by server
    assert sock is not None
    conn.close()


def test_chunked_request_body(mock):
    body = json.dumps({"model": "m", "messages": MSG}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["choices"][0]["message"]["content"] == REPLY
    conn.close()
    assert mock.requests(KEY)[0]["headers"]["transfer-encoding"] == "chunked"


def test_control_api(mock):
    status, _, _ = raw(mock, "POST", "/_mock/behavior", {"key": KEY, "status": 429, "times": 1})
    assert status == 200
    status, _, body = raw(mock, "POST", "/_mock/behavior", {"key": KEY2, "bogus": 1})
    assert status == 400
    c = oai(mock)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="m", messages=MSG)
    c.chat.completions.create(model="m", messages=MSG)
    status, _, body = raw(mock, "GET", "/_mock/stats")
    stats = json.loads(body)
    assert status == 200 and KEY.encode() not in body
    assert stats["keys"]["sk-…1111"] == {"total": 2, "by_status": {"429": 1, "200": 1}}
    status, _, body = raw(mock, "GET", "/_mock/requests?limit=1")
    reqs = json.loads(body)["requests"]
    assert KEY.encode() not in body and len(reqs) == 1 and reqs[0]["status"] == 200
    assert reqs[0]["key"] == "sk-…1111" and reqs[0]["headers"]["authorization"] == "Bearer sk-…1111"
    raw(mock, "POST", "/_mock/behavior", {"key": None, "status": 500})
    with pytest.raises(openai.InternalServerError):
        oai(mock, KEY2).chat.completions.create(model="m", messages=MSG)
    assert raw(mock, "POST", "/_mock/reset")[0] == 200
    assert mock.count() == 0 and oai(mock, KEY2).chat.completions.create(model="m", messages=MSG).choices


def test_cli_subprocess(tmp_path: Path):
    behaviours = tmp_path / "b.json"
    behaviours.write_text(json.dumps({KEY: {"status": 402}, "*": {"chunks": 2}}))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "addons"))
    proc = subprocess.Popen([sys.executable, "-m", "keypool.demo.mock_upstream", "--host", "127.0.0.1",
                             "--port", "0", "--behaviors", str(behaviours), "-q"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("mock upstream listening on http://127.0.0.1:")
        base = line.rsplit(" ", 1)[1]
        with openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=10) as c:
            with pytest.raises(openai.APIStatusError) as ei:
                c.chat.completions.create(model="m", messages=MSG)
            assert ei.value.status_code == 402
            r = c.with_options(api_key=KEY2).chat.completions.create(model="m", messages=MSG)
            assert r.usage.completion_tokens == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        proc.stdout.close()
    assert rc == 0


def test_hostile_behaviour_is_validated():
    from keypool.demo.mock_behaviour import Behaviour
    assert Behaviour.build(hostile="huge:3").hostile == "huge:3"
    for bad in ("nope", "huge", "gzip_bomb:0", "huge:x"):
        with pytest.raises(ValueError, match="hostile"):
            Behaviour.build(hostile=bad)
