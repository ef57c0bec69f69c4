"""The operator commands through a real mitmweb: its HTTP command API, as its command bar
calls it (mitmdump has no command API)."""
import http.client
import json

import pytest

from .conftest import K2, SECRETS, pool_yaml
from .harness import GatewayProcess, get, wait_for
from .mitmweb import MitmWeb


@pytest.fixture
def web(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir, web=True) as gw:
        yield gw, MitmWeb.of(gw)


def chat(gw) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "mock/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        {"content-type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_keys_replay_and_disable_through_mitmweb(web, mock):
    gw, api = web
    assert chat(gw) == 200
    assert wait_for(lambda: any(f["request"]["path"] == "/v1/chat/completions"
                                for f in api.flows()))
    original = next(f for f in api.flows() if f["request"]["path"] == "/v1/chat/completions")

    lines = api.command("keymux.keys")["value"]
    assert lines[0].startswith("NAME") and any(line.startswith("k1 ") for line in lines)

    said = api.command("keymux.replay", "@" + original["id"], "k2")["value"]
    assert "on key k2" in said
    prefix = f"replay of {original['id']} on k2: "
    assert wait_for(lambda: any(f["comment"].startswith(prefix) for f in api.flows()), 10)
    new = next(f for f in api.flows() if f["comment"].startswith(prefix))
    assert new["comment"] == prefix + "200" and new["response"]["status_code"] == 200
    assert mock.requests()[-1]["body"]["model"] == "gpt-4o-mini"
    assert not any(s in json.dumps(api.flows()) for s in SECRETS)

    refused = api.command("keymux.replay", "@" + original["id"], "a1")
    assert "belongs to mockant" in refused["error"]
    assert "no key named 'k9'" in api.command("keymux.disable", "k9")["error"]

    assert "k1 disabled" in api.command("keymux.disable", "k1")["value"]
    assert "enabled: false" in gw.config.read_text()

    def k1_disabled():
        keys = json.loads(get(gw, "/_keymux/stats")[1])["keys"]
        return next(k for k in keys if k["name"] == "k1")["state"] == "disabled"
    assert wait_for(k1_disabled, 10)  # the gateway's watcher applied the file
