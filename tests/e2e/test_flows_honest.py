"""Saved flows (-w) tell the truth: a re-issued request, its failed attempt, a stream, a refusal.

Real mitmdump + keymux writing every flow to a file; the file is read back with mitmproxy's
own FlowReader once the gateway stopped.
"""
import json
import urllib.request
from urllib.parse import urlsplit

import openai
import pytest
from mitmproxy import io

from .conftest import CLIENT_TOKEN, K1, K2, SECRETS, pool_yaml
from .harness import SIDECAR_TOKEN, GatewayProcess

CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
"""
WRONG = "kmx-wrong-token-flows-000000"


@pytest.fixture(scope="module")
def saved(mock, tmp_path_factory, confdir):
    """Drive the traffic once; the flows as mitmproxy saved them, and the file's bytes."""
    work = tmp_path_factory.mktemp("honest")
    path = work / "flows.mitm"
    mock.reset()
    mock.set_behavior(K1, status=429, headers={"Retry-After": "30"})
    gw = GatewayProcess(work, pool_yaml(mock.base_url, CLIENTS), env={"MOCK_KEY_2": K2},
                        args=("-w", str(path)), confdir=confdir)
    with gw:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0,
                          timeout=20)
        ask = dict(model="mock/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        for _ in range(4):  # until the 429 key was tried once (then it cools for 30 s)
            assert c.chat.completions.create(**ask).choices[0].message.content
            if mock.count(K1):
                break
        assert mock.count(K1) == 1
        chunks = list(c.chat.completions.create(**ask, stream=True))
        assert chunks
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key=WRONG, max_retries=0) \
                .chat.completions.create(**ask)
        test = urllib.request.Request(f"{gw.url}/_keymux/keys/k2/test", method="POST",
                                      headers={"x-keymux-admin-token": SIDECAR_TOKEN})
        with urllib.request.urlopen(test, timeout=30) as r:
            assert json.loads(r.read())["ok"] is True
    data = path.read_bytes()
    with open(path, "rb") as f:
        return list(io.FlowReader(f).stream()), data, mock


def km(f):
    return f.metadata.get("keymux", {})


def test_the_failed_attempt_is_a_flow_linked_to_the_client_flow(saved):
    flows, _, mock = saved
    [attempt] = [f for f in flows if "attempt_of" in km(f)]
    assert attempt.response.status_code == 429
    assert attempt.request.headers["authorization"] == "Bearer sk-…0001"
    assert km(attempt)["key"] == "k1" and km(attempt)["attempt"] == 1
    assert km(attempt)["attempts"] == 2
    assert attempt.comment == "attempt 1 of 2 for POST /v1/chat/completions: k1 429 (re-issued)"
    [client] = [f for f in flows if f.id == km(attempt)["attempt_of"]]
    assert km(client)["attempt_flows"] == [attempt.id]
    assert client.comment.startswith("k1 429 → k2 200 · attempt 2 of 2")
    assert client.marked == ":repeat:"


def test_the_client_flow_shows_the_request_as_sent_and_where(saved):
    flows, _, mock = saved
    served = [f for f in flows if km(f).get("key") == "k2" and "attempt_of" not in km(f)]
    assert served
    host, port = urlsplit(mock.base_url).hostname, urlsplit(mock.base_url).port
    for f in served:
        assert json.loads(f.request.content)["model"] == "gpt-4o-mini"  # not mock/…
        assert int(f.request.headers["content-length"]) == len(f.request.raw_content)
        assert f.request.pretty_url == mock.base_url + "/v1/chat/completions"
        assert f.request.headers["authorization"] == "Bearer sk-…0002"
        assert f.server_conn.address == (host, port)
        assert "k2 200" in f.comment


def test_the_stream_flow_keeps_what_was_streamed(saved):
    flows, _, _ = saved
    [stream] = [f for f in flows if f.response and
                f.response.headers.get("content-type", "").startswith("text/event-stream")]
    assert stream.response.raw_content.startswith(b"data: ")
    assert b"[DONE]" in stream.response.raw_content
    assert stream.comment.startswith("k2 200")
    assert stream.server_conn.address[1] == urlsplit(stream.request.pretty_url).port


def test_the_refusal_is_the_gateways(saved):
    flows, _, _ = saved
    [refused] = [f for f in flows if f.response and f.response.status_code == 401]
    assert refused.request.host == "keymux"
    assert refused.comment.startswith("401 ") and refused.marked == ":no_entry:"


def test_a_key_test_says_the_provider_answered(saved):
    flows, _, _ = saved
    [tested] = [f for f in flows if f.request.path == "/_keymux/keys/k2/test"]
    assert tested.comment.startswith("key test k2: mock 200 ok ("), tested.comment


def test_no_token_or_key_anywhere_in_the_file(saved):
    _, data, _ = saved
    for secret in (CLIENT_TOKEN, WRONG, SIDECAR_TOKEN, *SECRETS):
        assert secret.encode() not in data
