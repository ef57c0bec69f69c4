"""Hostile upstreams are contained: echoed keys masked, hostile bodies bounded and survived."""
import http.client
import json
import time

import openai
import pytest

from keypool.redact import mask

from .conftest import K1, K2
from .harness import GatewayProcess

SECRETS = (K1, K2)


def pool(mock_url: str) -> str:
    return f"""
version: 1
providers:
  mock:
    base_url: {mock_url}/v1
    models: ["gpt-*"]
keys:
  - name: k1
    provider: mock
    key: {K1}
    max_in_flight: 1
  - name: k2
    provider: mock
    key: {K2}
    max_in_flight: 1
routing:
  max_response_mb: 1
  queue_s: 0.5
  cooldown: {{server_error_s: 0}}
"""


@pytest.fixture(scope="module")
def gw(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("hostile")
    flows = work / "flows.mitm"
    # flow_detail=3: mitmdump prints every flow with its bodies, so the log sees them too.
    with GatewayProcess(work, pool(mock.base_url), confdir=confdir,
                        args=("-w", str(flows), "--set", "flow_detail=3")) as g:
        g.flows = flows
        yield g


def post(gw, body: dict, timeout: float = 30) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def chat(stream: bool = False) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "stream": stream}


def assert_masked(headers: dict, body: bytes) -> None:
    raw = json.dumps(headers).encode() + body
    for s in SECRETS:
        assert s.encode() not in raw


def ascii_mask(secret: str) -> str:
    return mask(secret).replace("…", "...")  # in header fields


def peak_rss_mb(gw) -> float:
    for line in open(f"/proc/{gw.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- echoed secrets -------------------------------------------------------------------

def test_key_echoed_in_an_error_body_and_header_is_masked(gw, mock):
    mock.set_default(status=400, headers={"x-echo": f"{K1} {K2}"}, body={"error": {
        "message": f"Incorrect API key provided: {K1} (also {K2})", "type": "invalid_request_error"}})
    status, headers, body = post(gw, chat())
    assert status == 400
    assert_masked(headers, body)
    assert mask(K1) in json.loads(body)["error"]["message"]
    assert headers["x-echo"] == f"{ascii_mask(K1)} {ascii_mask(K2)}"


def test_key_echoed_in_a_200_body_and_header_is_masked(gw, mock):
    mock.set_default(hostile="echo")
    status, headers, body = post(gw, chat())
    assert status == 200
    assert_masked(headers, body)
    used = json.loads(body)["choices"][0]["message"]["content"]
    assert used in (f"your key is {mask(K1)}", f"your key is {mask(K2)}")
    assert headers["x-echo-key"] in (ascii_mask(K1), ascii_mask(K2))


def test_key_echoed_in_a_stream_split_across_chunks_is_masked(gw, mock):
    mock.set_default(hostile="echo")
    for _ in range(2):  # both keys
        status, headers, body = post(gw, chat(stream=True))
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert_masked(headers, body)
        assert b"key=sk-\xe2\x80\xa6000" in body and body.endswith(b"data: [DONE]\n\n")


# -- hostile bodies -------------------------------------------------------------------

def test_deeply_nested_usage_does_not_leak_the_key_slot(gw, mock):
    mock.set_default(hostile="deep_usage")
    for _ in range(3):  # max_in_flight: 1 on two keys: a leaked slot would wedge the third
        status, _, body = post(gw, chat())
        assert status == 200 and body.startswith(b'{"id": "chatcmpl-deep"')
    mock.reset()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    assert c.chat.completions.create(**chat()).choices[0].message.content


def test_deeply_nested_usage_in_a_stream_event_ends_the_stream(gw, mock):
    mock.set_default(hostile="deep_usage")
    for _ in range(3):
        status, _, body = post(gw, chat(stream=True), timeout=20)  # the stream must end
        assert status == 200 and b" world" in body and body.endswith(b"data: [DONE]\n\n")
    mock.reset()
    status, _, body = post(gw, chat(stream=True))
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("hostile", ["huge:256", "gzip_bomb:256"])
def test_an_oversized_or_inflating_body_is_a_502_with_bounded_memory(gw, mock, hostile):
    mock.set_default(hostile=hostile)
    before = peak_rss_mb(gw)
    started = time.monotonic()
    status, headers, body = post(gw, chat())
    assert status == 502, body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_failed" and "over 1 MB" in error["message"]
    assert time.monotonic() - started < 15
    assert peak_rss_mb(gw) - before < 64  # 256 MB each, two attempts
    mock.reset()
    assert post(gw, chat())[0] == 200  # and the keys still serve


# -- what keymux kept -----------------------------------------------------------------

def test_saved_flows_and_the_log_hold_no_echoed_secret(gw, mock):
    mock.set_default(hostile="echo")
    post(gw, chat())
    post(gw, chat(stream=True))
    gw.stop()  # flush the flow file
    data = gw.flows.read_bytes()
    assert mask(K1).encode() in data or mask(K2).encode() in data
    for s in SECRETS:
        assert s.encode() not in data
        assert s not in gw.log()
