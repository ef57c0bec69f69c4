"""Who may reach a real gateway: web pages (Origin), DNS rebinding (Host), the admin surface,
and a bind beyond loopback (refused at start-up)."""
import http.client
import json

import pytest
from mitmproxy import io

from .conftest import CLIENT_TOKEN, K2, SECRETS, pool_yaml
from .harness import GatewayProcess

ADMIN = "kmx-admin-token-e2e-0123456789"
CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
"""
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def call(gw, method, path, headers=None, body=None):
    """Raw HTTP, so that Host and Origin are exactly what a browser would send."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"host": f"127.0.0.1:{gw.port}",
                                                       **(headers or {})})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    code = json.loads(data).get("error", {}).get("code") if r.status >= 400 else None
    return r.status, code


@pytest.fixture(scope="module")
def open_gw(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("open")
    with GatewayProcess(work, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        yield gw


@pytest.fixture(scope="module")
def closed_gw(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("closed-admin")
    flows = work / "flows.mitm"
    with GatewayProcess(work, pool_yaml(mock.base_url, CLIENTS),
                        env={"MOCK_KEY_2": K2, "KEYMUX_ADMIN_TOKEN": ADMIN},
                        args=("-w", str(flows)), confdir=confdir) as gw:
        gw.flows = flows
        yield gw


def test_a_web_page_cannot_spend_the_keys(open_gw, mock):
    # the classic: a cross-origin text/plain POST needs no CORS preflight
    assert call(open_gw, "POST", "/v1/chat/completions", {
        "origin": "https://evil.example", "content-type": "text/plain"}, CHAT) \
        == (403, "forbidden_origin")
    assert call(open_gw, "POST", "/_keymux/keys/k1/reset",
                {"origin": "https://evil.example"}) == (403, "forbidden_origin")
    assert mock.count() == 0
    assert call(open_gw, "POST", "/v1/chat/completions",
                {"content-type": "application/json"}, CHAT) == (200, None)


def test_dns_rebinding_is_refused(open_gw, mock):
    for path in ("/v1/models", "/_keymux/stats", "/metrics"):
        assert call(open_gw, "GET", path, {"host": f"rebind.evil.example:{open_gw.port}"}) \
            == (403, "forbidden_host"), path
    assert call(open_gw, "POST", "/v1/chat/completions", {
        "host": f"rebind.evil.example:{open_gw.port}", "content-type": "application/json"},
        CHAT) == (403, "forbidden_host")
    assert mock.count() == 0
    for host in (f"localhost:{open_gw.port}", "localhost", f"127.0.0.1:{open_gw.port}"):
        assert call(open_gw, "GET", "/v1/models", {"host": host})[0] == 200, host
    assert call(open_gw, "GET", "/health", {"host": "10.1.2.3:9"})[0] == 200  # liveness


def test_open_loopback_gateway_reads_stats_but_reset_needs_a_token(open_gw):
    assert call(open_gw, "GET", "/_keymux/stats") == (200, None)
    assert call(open_gw, "GET", "/_keymux/health")[0] == 200
    assert call(open_gw, "POST", "/_keymux/keys/k1/reset") == (403, "admin_token_not_set")


def test_with_clients_the_admin_surface_needs_the_admin_token(closed_gw, mock):
    assert call(closed_gw, "GET", "/_keymux/stats") == (401, "admin_token_required")
    bearer = {"authorization": f"Bearer {CLIENT_TOKEN}"}
    assert call(closed_gw, "GET", "/_keymux/stats", bearer) == (401, "admin_token_required")
    assert call(closed_gw, "POST", "/_keymux/keys/k1/reset", bearer)[0] == 401
    admin = {"x-keymux-admin-token": ADMIN}
    assert call(closed_gw, "GET", "/_keymux/stats", admin) == (200, None)
    assert call(closed_gw, "POST", "/_keymux/keys/k1/reset", admin) == (200, None)
    # the admin token on a proxied request never goes upstream
    assert call(closed_gw, "POST", "/v1/chat/completions",
                {**bearer, **admin, "content-type": "application/json"}, CHAT)[0] == 200
    sent = mock.requests()[-1]
    assert ADMIN not in json.dumps(sent, default=str)
    closed_gw.stop()  # flush the flow file
    data = closed_gw.flows.read_bytes()
    for secret in SECRETS + (ADMIN, CLIENT_TOKEN):
        assert secret.encode() not in data
    with open(closed_gw.flows, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    masked = [f for f in flows if "x-keymux-admin-token" in f.request.headers]
    assert masked and all("…" in f.request.headers["x-keymux-admin-token"] for f in masked)


def test_clients_without_an_admin_token_say_how_to_set_one(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, CLIENTS), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/_keymux/stats", headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
    assert r.status == 403 and body["error"]["code"] == "admin_token_not_set"
    assert "KEYMUX_ADMIN_TOKEN" in body["error"]["message"]


def test_metrics_and_health_can_be_turned_off(mock, tmp_path, confdir):
    extra = "server:\n  metrics: off\n  health: admin\n"
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, extra), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        assert call(gw, "GET", "/metrics")[0] == 404
        assert call(gw, "GET", "/_keymux/health") == (403, "admin_token_not_set")
        assert call(gw, "GET", "/health")[0] == 200


def test_a_bind_beyond_loopback_without_clients_refuses_to_start(mock, tmp_path, confdir):
    gw = GatewayProcess(tmp_path, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        args=("--listen-host", "0.0.0.0"), confdir=confdir)
    with pytest.raises(RuntimeError, match="keymux_allow_open_gateway"):
        gw.start()
    assert gw.proc.returncode != 0
