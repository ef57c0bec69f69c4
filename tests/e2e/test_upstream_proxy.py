"""End to end: keymux's upstream attempts through a real forward proxy on loopback
(mitmproxy's own regular mode, passing TLS through, requiring a login), chosen by the
environment (HTTPS_PROXY/HTTP_PROXY/NO_PROXY) or per provider (``proxy:`` in keys.yaml)."""
import json
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from mitmproxy import io

from keypool.demo.mock_upstream import MockUpstream

from .harness import MITMDUMP, GatewayProcess, free_port, get, stop_process, wait_for
from .tlsutil import make_pki

PASS = "pr0xy-s3cret-pass"
K_TLS, K_PLAIN = "sk-proxy-tls-key-00000021", "sk-proxy-plain-key-0000022"

COUNTER = '''
import logging
class Count:
    def http_connect(self, flow):
        if flow.response is None:  # proxyauth let it through
            logging.warning("PROXIED CONNECT %s:%s", flow.request.host, flow.request.port)
    def request(self, flow):
        if flow.request.method != "CONNECT" and flow.response is None:
            logging.warning("PROXIED %s %s", flow.request.method, flow.request.pretty_url)
addons = [Count()]
'''


class ForwardProxy:
    """``mitmdump --mode regular`` that passes TLS through and wants ``me:PASS``."""

    def __init__(self, workdir):
        self.port, self.log_path = free_port(), workdir / "proxy.log"
        script = workdir / "count.py"
        script.write_text(textwrap.dedent(COUNTER))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(MITMDUMP), "--mode", "regular", "--listen-host", "127.0.0.1", "-p", str(self.port),
             "-s", str(script), "--set", "ignore_hosts=.*", "--set", f"proxyauth=me:{PASS}",
             "--set", f"confdir={workdir / 'proxy-conf'}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        if not wait_for(self._listening, 20, 0.1):
            self.stop()
            raise RuntimeError("forward proxy did not come up:\n" + self.log())

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            return True
        except OSError:
            return False

    def url(self, login=True) -> str:
        return f"http://me:{PASS}@127.0.0.1:{self.port}" if login else f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def seen(self) -> list[str]:
        return [line.split("PROXIED ", 1)[1] for line in self.log().splitlines() if "PROXIED " in line]

    def stop(self):
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_mock(pki):
    with MockUpstream(ssl=pki.server_context()) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = ForwardProxy(tmp_path_factory.mktemp("proxy"))
    yield p
    p.stop()


def keys_yaml(tls, plain, tls_proxy: str | None = None, plain_proxy: str | None = None) -> str:
    def line(value):
        return f"\n    proxy: {value}" if value else ""
    return f"""
version: 1
providers:
  tls:
    base_url: {tls.base_url}/v1
    models: ["gpt-*"]{line(tls_proxy)}
  plain:
    base_url: {plain.base_url}/v1
    models: ["plain-*"]{line(plain_proxy)}
routing:
  max_attempts: 1
keys:
  - name: tls1
    provider: tls
    key: {K_TLS}
  - name: plain1
    provider: plain
    key: {K_PLAIN}
"""


def chat(gw, model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


CLEAN_ENV = {name: "" for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")}


def start(tmp_path, text, pki, env):
    return GatewayProcess(tmp_path, text, env={**CLEAN_ENV, **env},
                          args=("--set", f"ssl_verify_upstream_trusted_ca={pki.ca}",
                                "-w", str(tmp_path / "flows.mitm")))


def saved_flows(tmp_path) -> list:
    with open(tmp_path / "flows.mitm", "rb") as f:
        return [fl for fl in io.FlowReader(f).stream() if fl.request.path.endswith("/completions")]


def no_secret_anywhere(gw):
    shown = gw.log() + get(gw, "/_keymux/stats")[1].decode() + get(gw, "/metrics")[1].decode()
    assert PASS not in shown and K_TLS not in shown and K_PLAIN not in shown


def test_the_environments_proxies_carry_both_schemes(tmp_path, pki, tls_mock, mock, proxy):
    before = len(proxy.seen())
    env = {"HTTPS_PROXY": proxy.url(), "http_proxy": proxy.url()}
    with start(tmp_path, keys_yaml(tls_mock, mock), pki, env) as gw:
        assert chat(gw, "gpt-4o-mini") == 200       # CONNECT through the proxy, TLS inside
        assert chat(gw, "plain-model") == 200       # absolute-form request to the proxy
        no_secret_anywhere(gw)
    seen = proxy.seen()[before:]
    assert f"CONNECT 127.0.0.1:{tls_mock.port}" in seen
    flows = saved_flows(tmp_path)
    assert {tuple(f.server_conn.via) for f in flows} == {("http", ("127.0.0.1", proxy.port))}
    assert PASS not in (tmp_path / "flows.mitm").read_bytes().decode("latin-1")
    assert any(s.startswith(f"POST http://127.0.0.1:{mock.port}/v1/chat/completions") for s in seen)
    assert tls_mock.count(K_TLS) == 1 and mock.count(K_PLAIN) == 1


def test_no_proxy_bypasses_it(tmp_path, pki, tls_mock, mock, proxy):
    before = len(proxy.seen())
    env = {"HTTPS_PROXY": proxy.url(), "HTTP_PROXY": proxy.url(), "NO_PROXY": "localhost,127.0.0.1"}
    with start(tmp_path, keys_yaml(tls_mock, mock), pki, env) as gw:
        assert chat(gw, "gpt-4o-mini") == 200 and chat(gw, "plain-model") == 200
    assert proxy.seen()[before:] == []


def test_a_providers_own_proxy_and_none(tmp_path, pki, tls_mock, mock, proxy):
    before = len(proxy.seen())
    dead = f"http://127.0.0.1:{free_port()}"  # the environment's proxy: nothing listens there
    text = keys_yaml(tls_mock, mock, tls_proxy=proxy.url(), plain_proxy="none")
    with start(tmp_path, text, pki, {"HTTPS_PROXY": dead, "HTTP_PROXY": dead}) as gw:
        assert chat(gw, "gpt-4o-mini") == 200       # its own proxy, not the environment's
        assert chat(gw, "plain-model") == 200       # none: direct, the dead proxy ignored
        no_secret_anywhere(gw)
    assert proxy.seen()[before:] == [f"CONNECT 127.0.0.1:{tls_mock.port}"]


def test_a_wrong_proxy_login_is_a_502_that_names_no_password(tmp_path, pki, tls_mock, mock, proxy):
    wrong = f"http://me:not-{PASS}@127.0.0.1:{proxy.port}"
    with start(tmp_path, keys_yaml(tls_mock, mock, tls_proxy=wrong), pki, {}) as gw:
        assert chat(gw, "gpt-4o-mini") == 502
        assert wait_for(lambda: "the proxy answered 407" in gw.log(), 5)
        no_secret_anywhere(gw)
        assert f"not-{PASS}" not in gw.log()
