"""Who may reach the gateway: Origin, Host, open binds and the admin surface (no mitmproxy)."""
import json
from dataclasses import replace

import pytest

from keypool import exposure
from keypool.clock import FakeClock
from keypool.config import ServerSpec, parse_config
from keypool.errors import ConfigError
from keypool.exposure import Binds, Exposure, is_loopback, open_refusal
from keypool.gateway import Gateway

from .helpers import client, config, key

ADMIN = "adm-secret-0123456789"
SIDECAR = "sidecar-secret-0123456789"
LOCAL = Binds((("127.0.0.1", 8080),))


def gw(clients=None, admin=None, binds=LOCAL, **server):
    cfg = replace(config(keys=[key("o1")], clients=clients), server=ServerSpec(**server))
    g = Gateway(cfg, FakeClock(), admin_token=admin)
    exposure.bind(g, binds)
    return g


def status(g, method, path, headers=None):
    a = g.admit(method, path, headers or {}, None)
    return a.status, json.loads(a.body).get("error", {}).get("code") if a.status >= 400 else None


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("", False), ("0.0.0.0", False), ("::", False),
    ("192.168.1.5", False), ("gw.example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:8080", True), ("127.0.0.1", True), ("localhost:8080", True),
    ("LOCALHOST:8080", True), ("[::1]:8080", True), ("[::1]", True),
    ("127.0.0.1:9999", False), ("evil.example:8080", False), ("evil.example", False),
    ("localhost.evil.example:8080", False), ("127.0.0.1.nip.io:8080", False)])
def test_host_names_of_a_loopback_gateway(host, ok):
    assert Exposure.build(config(), LOCAL).host_ok(host) is ok


def test_unknown_port_accepts_loopback_names_on_any_port():
    ex = Exposure.build(config(), Binds((("127.0.0.1", None),)))
    assert ex.host_ok("localhost:1234") and not ex.host_ok("evil.example:1234")


def test_bind_address_and_allowed_hosts_are_names():
    cfg = replace(config(), server=ServerSpec(allowed_hosts=("gw.example.com", "api.corp:443")))
    ex = Exposure.build(cfg, Binds((("10.0.0.7", 8080),)))
    assert ex.host_ok("10.0.0.7:8080") and ex.host_ok("10.0.0.7")
    assert ex.host_ok("gw.example.com") and ex.host_ok("GW.example.com:8443")
    assert ex.host_ok("api.corp:443") and not ex.host_ok("api.corp:80")
    assert not ex.host_ok("10.0.0.8:8080")
    v6 = Exposure.build(config(), Binds((("fd00::7", 8080),)))
    assert v6.host_ok("[fd00::7]:8080")


def test_star_opts_out():
    cfg = replace(config(), server=ServerSpec(allowed_hosts=("*",), allowed_origins=("*",)))
    ex = Exposure.build(cfg, LOCAL)
    assert ex.host_ok("anything.example:1") and ex.origin_ok("https://evil.example")


def test_origin_refused_unless_allowed():
    g = gw(allowed_origins=("https://app.example.com",))
    assert status(g, "GET", "/v1/models", {"origin": "https://evil.example"}) == (403, "forbidden_origin")
    assert status(g, "GET", "/v1/models", {"origin": "null"}) == (403, "forbidden_origin")
    assert status(g, "GET", "/v1/models", {"origin": "HTTPS://app.example.com/"})[0] == 200
    assert status(g, "GET", "/v1/models", {})[0] == 200  # SDKs and curl send no Origin
    # a cross-origin text/plain POST that would spend the owner's keys
    a = g.admit("POST", "/v1/chat/completions", {"origin": "https://evil.example",
                "content-type": "text/plain"}, b'{"model": "gpt-4o-mini"}')
    assert a.status == 403


def test_foreign_host_refused_everywhere_but_liveness():
    g = gw()
    evil = {"host": "rebind.evil.example:8080"}
    for method, path in (("GET", "/v1/models"), ("GET", "/_keymux/stats"), ("GET", "/metrics"),
                         ("POST", "/_keymux/keys/o1/reset"), ("GET", "/_keymux/health")):
        assert status(g, method, path, evil) == (403, "forbidden_host"), path
    assert status(g, "GET", "/health", evil)[0] == 200
    assert status(g, "GET", "/v1/models", {"host": "127.0.0.1:8080"})[0] == 200
    assert status(g, "GET", "/v1/models", {})[0] == 200  # no Host: not a browser


def test_open_refusal_beyond_loopback_without_clients():
    wide = Binds((("0.0.0.0", 8080),))
    assert open_refusal(LOCAL, config()) is None
    assert "keymux_allow_open_gateway" in open_refusal(wide, config())
    assert open_refusal(replace(wide, allow_open=True), config()) is None
    assert open_refusal(wide, config(clients=(client("a", "tok-aaaaaaaa"),))) is None
    assert open_refusal(Binds((("", 8080),)), config()) is not None  # "" is every interface


def test_a_reload_that_drops_clients_beyond_loopback_refuses_requests():
    g = gw(clients=(client("a", "tok-aaaaaaaa"),), binds=Binds((("0.0.0.0", 8080),)),
           allowed_hosts=("*",))
    assert status(g, "GET", "/v1/models", {"authorization": "Bearer tok-aaaaaaaa"})[0] == 200
    g.update(config(keys=[key("o1")]))  # clients: gone
    assert status(g, "GET", "/v1/models", {}) == (403, "open_gateway_refused")
    assert status(g, "GET", "/health", {})[0] == 200


# -- the admin surface -------------------------------------------------------------------

def test_stats_open_only_on_loopback_without_clients_and_token():
    assert status(gw(), "GET", "/_keymux/stats")[0] == 200
    with_clients = gw(clients=(client("a", "tok-aaaaaaaa"),))
    code = status(with_clients, "GET", "/_keymux/stats", {"authorization": "Bearer tok-aaaaaaaa"})
    assert code == (403, "admin_token_not_set")  # a client token is not enough
    wide = gw(binds=Binds((("0.0.0.0", 8080),), allow_open=True), allowed_hosts=("*",))
    assert status(wide, "GET", "/_keymux/stats") == (403, "admin_token_not_set")


def test_stats_with_an_admin_token():
    g = gw(clients=(client("a", "tok-aaaaaaaa"),), admin=ADMIN)
    assert status(g, "GET", "/_keymux/stats") == (401, "admin_token_required")
    assert status(g, "GET", "/_keymux/stats", {"x-keymux-admin-token": "wrong"})[0] == 401
    assert status(g, "GET", "/_keymux/stats", {"x-keymux-admin-token": ADMIN})[0] == 200
    assert status(g, "GET", "/_keymux/stats", {"authorization": f"Bearer {ADMIN}"})[0] == 200
    assert status(gw(admin=ADMIN), "GET", "/_keymux/stats")[0] == 401  # set means required


def test_reset_always_needs_a_token():
    g = gw()
    a = g.admit("POST", "/_keymux/keys/o1/reset", {}, None)
    assert a.status == 403 and b"KEYMUX_ADMIN_TOKEN" in a.body
    assert status(gw(admin=ADMIN), "POST", "/_keymux/keys/o1/reset",
                  {"x-keymux-admin-token": ADMIN})[0] == 200


def test_sidecar_token_opens_admin_paths_but_is_not_required_for_reading():
    g = gw(binds=replace(LOCAL, sidecar_token=SIDECAR))
    assert status(g, "GET", "/_keymux/stats")[0] == 200
    assert status(g, "POST", "/_keymux/keys/o1/reset",
                  {"authorization": f"Bearer {SIDECAR}"})[0] == 200
    assert status(g, "POST", "/_keymux/keys/o1/reset",
                  {"authorization": "Bearer guess"}) == (403, "admin_token_not_set")
    closed = gw(clients=(client("a", "tok-aaaaaaaa"),), admin=ADMIN,
                binds=replace(LOCAL, sidecar_token=SIDECAR))
    assert status(closed, "GET", "/_keymux/stats", {"x-keymux-admin-token": SIDECAR})[0] == 200


@pytest.mark.parametrize("mode,expect", [("open", 200), ("admin", 403), ("off", 404)])
def test_metrics_and_health_can_be_closed(mode, expect):
    g = gw(metrics=mode, health=mode)
    assert status(g, "GET", "/metrics")[0] == expect
    assert status(g, "GET", "/_keymux/health")[0] in ((expect, 503) if expect == 200 else (expect,))
    assert status(g, "GET", "/health")[0] == 200
    t = gw(admin=ADMIN, metrics=mode, health=mode)
    if mode == "admin":
        assert status(t, "GET", "/metrics", {"x-keymux-admin-token": ADMIN})[0] == 200


def test_metrics_stats_and_health_hold_no_secret():
    g = gw(clients=(client("a", "tok-client-secret-1"),), admin=ADMIN)
    auth = {"x-keymux-admin-token": ADMIN}
    for path in ("/metrics", "/_keymux/health", "/_keymux/stats"):
        body = g.admit("GET", path, auth, None).body
        assert b"sk-o1-secret-0000" not in body and b"tok-client-secret-1" not in body
        assert ADMIN.encode() not in body


def test_server_section_parses_and_refuses_nonsense():
    cfg = parse_config("server:\n  allowed_origins: [https://app.example.com]\n"
                       "  allowed_hosts: [gw.example.com, '*']\n  metrics: admin\n  health: off\n")
    assert cfg.server == ServerSpec(("https://app.example.com",), ("gw.example.com", "*"),
                                    "admin", "off")
    assert parse_config("keys: []\n").server == ServerSpec()
    for bad, line in (("server:\n  metrics: closed\n", 2), ("server:\n  allowed_hosts: [a b]\n", 2),
                      ("server:\n  allowed_hosts: gw\n", 2), ("server:\n  listen: x\n", 2)):
        with pytest.raises(ConfigError) as e:
            parse_config(bad)
        assert e.value.line == line, bad
