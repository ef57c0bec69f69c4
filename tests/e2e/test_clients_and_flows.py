"""Client tokens, and what a saved flow (mitmweb, -w) keeps of a request."""
import json

import anthropic
import openai
import pytest
from mitmproxy import io

from .conftest import CLIENT_TOKEN, K1, K2, SECRETS, pool_yaml
from .harness import GatewayProcess

CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
  - name: mini-only
    token: kmx-mini-only-token-999999
    models: ["gpt-4o-mini"]
  - name: slow
    token: kmx-slow-client-token-777
    rpm: 2
"""


@pytest.fixture(scope="module")
def closed(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("closed")
    flows = work / "flows.mitm"
    with GatewayProcess(work, pool_yaml(mock.base_url, CLIENTS), env={"MOCK_KEY_2": K2},
                        args=("-w", str(flows)), confdir=confdir) as gw:
        gw.flows = flows
        yield gw


def client(gw, token):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=20)


def hi(model="gpt-4o-mini"):
    return dict(model=model, messages=[{"role": "user", "content": "hi"}])


def test_wrong_or_missing_token_is_401_without_upstream(closed, mock):
    with pytest.raises(openai.AuthenticationError) as e:
        client(closed, "kmx-wrong-token-000000").chat.completions.create(**hi())
    assert e.value.status_code == 401
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=closed.url, api_key="nope-nope-nope", max_retries=0) \
            .messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert mock.count() == 0


def test_valid_token_is_served_and_never_forwarded(closed, mock):
    r = client(closed, CLIENT_TOKEN).chat.completions.create(**hi())
    assert r.choices[0].message.content
    anthropic.Anthropic(base_url=closed.url, api_key=CLIENT_TOKEN, max_retries=0) \
        .messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert mock.count() == 2
    assert CLIENT_TOKEN not in json.dumps(mock.requests())


def test_model_outside_client_allow_list_is_403(closed, mock):
    c = client(closed, "kmx-mini-only-token-999999")
    c.chat.completions.create(**hi("gpt-4o-mini"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(**hi("gpt-4o"))
    assert "gpt-4o" in e.value.message
    assert mock.count() == 1
    assert {m.id for m in c.models.list()} == set()  # it may use no configured glob whole


def test_client_rpm_is_answered_by_the_gateway(closed, mock):
    c = client(closed, "kmx-slow-client-token-777")
    c.chat.completions.create(**hi())
    c.chat.completions.create(**hi())
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(**hi())
    assert 55 <= int(e.value.response.headers["retry-after"]) <= 60
    assert "slow" in e.value.message and mock.count() == 2
    client(closed, CLIENT_TOKEN).chat.completions.create(**hi())  # other clients unaffected


def test_saved_flows_name_the_key_and_hold_no_secret(closed, mock):
    c = client(closed, CLIENT_TOKEN)
    c.chat.completions.create(**hi())
    list(c.chat.completions.create(**hi(), stream=True))
    with pytest.raises(openai.AuthenticationError):
        client(closed, "kmx-wrong-token-000000").chat.completions.create(**hi())
    closed.stop()  # flush the flow file
    data = closed.flows.read_bytes()
    for secret in SECRETS + (CLIENT_TOKEN, "kmx-wrong-token-000000"):
        assert secret.encode() not in data
    with open(closed.flows, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    served = [f for f in flows if f.metadata.get("keymux", {}).get("provider") == "mock"]
    assert len(served) >= 3
    for f in served:
        name = f.metadata["keymux"]["key"]
        masked = {"k1": "sk-…0001", "k2": "sk-…0002"}[name]
        assert f.comment == f"{name} 200 · key {masked}"
        assert f.request.headers["authorization"] == f"Bearer {masked}"
        # streams went through keymux's relay: the flow still names the provider and body
        assert f.request.pretty_url == mock.base_url + "/v1/chat/completions"
        assert b'"model"' in f.request.content
    refused = [f for f in flows if f.response and f.response.status_code == 401]
    assert refused and all(f.metadata["keymux"].get("key") is None for f in refused)
    assert all(f.server_conn.address[0] == "keymux" for f in refused)  # nobody contacted
    assert all(f.request.host == "keymux" and f.comment.startswith("401 ") for f in refused)
    assert K1 not in closed.log()


def test_stream_large_bodies_is_refused(mock, tmp_path, confdir):
    # With stream_large_bodies mitmproxy sends a big request on before the request hook
    # runs: the client's token upstream, no key. keymux refuses to start with it.
    gw = GatewayProcess(tmp_path, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        args=("--set", "stream_large_bodies=10"), confdir=confdir)
    with pytest.raises(RuntimeError, match="stream_large_bodies must stay unset"):
        gw.start()
    assert mock.count() == 0
