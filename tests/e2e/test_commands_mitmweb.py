"""The operator commands through a real mitmweb: its HTTP command API, as its command bar
calls it (mitmdump has no command API)."""
import http.client
import json
import urllib.request

import pytest

from . import harness
from .conftest import K2, SECRETS, pool_yaml
from .harness import GatewayProcess, free_port, get, wait_for

PASSWORD = "kmx-test-web-password-4242"


class WebAPI:
    """mitmweb's API: its password as a bearer token; for a POST, tornado's double-submit
    XSRF check (the same value as cookie and header, as the UI sends it)."""
    XSRF = "6b6d782d787372662d746573742d746f6b656e"  # any hex value

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: dict | None = None):
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        if body is not None:
            headers |= {"Cookie": f"_mitmproxy_xsrf={self.XSRF}", "X-XSRFToken": self.XSRF,
                        "content-type": "application/json"}
        req = urllib.request.Request(self.base + path, headers=headers, method=(
            "GET" if body is None else "POST"), data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        try:
            return isinstance(self.flows(), list)
        except OSError:  # mitmweb's own server may start after the proxy answers
            return False

    def flows(self) -> list[dict]:
        return self._call("/flows")

    def command(self, name: str, *args: str):
        return self._call(f"/commands/{name}", {"arguments": list(args)})


@pytest.fixture
def web(mock, tmp_path, confdir, monkeypatch):
    monkeypatch.setattr(harness, "MITMDUMP", harness.MITMDUMP.with_name("mitmweb"))
    port = free_port()
    args = ("--set", f"web_port={port}", "--set", "web_open_browser=false",
            "--set", f"web_password={PASSWORD}")
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir, args=args) as gw:
        api = WebAPI(port)
        assert wait_for(api.ready, 10), gw.log()
        yield gw, api


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
