"""End to end: HTTPS providers with a private CA (and one that wants a client certificate),
reached by the real mitmdump + keymux as mitmproxy's options say."""
import json
import urllib.error
import urllib.request

import pytest
from mitmproxy import io

from keypool.demo.mock_upstream import MockUpstream

from .harness import GatewayProcess
from .tlsutil import make_pki

K_TLS, K_MTLS = "sk-tls-mock-key-00000011", "sk-mtls-mock-key-00000012"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mocks(pki):
    with MockUpstream(ssl=pki.server_context()) as tls, \
            MockUpstream(ssl=pki.server_context(require_client_cert=True)) as mtls:
        yield tls, mtls


def keys_yaml(tls, mtls) -> str:
    return f"""
version: 1
providers:
  tls:
    base_url: {tls.base_url}/v1
    models: ["gpt-*"]
  mtls:
    base_url: {mtls.base_url}/v1
    models: ["mtls-*"]
routing:
  max_attempts: 1
keys:
  - name: tls1
    provider: tls
    key: {K_TLS}
  - name: mtls1
    provider: mtls
    key: {K_MTLS}
"""


def chat(gw, model="gpt-4o-mini"):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def gateway(tmp_path, mocks, *args):
    return GatewayProcess(tmp_path, keys_yaml(*mocks), args=args)


def test_a_private_ca_is_refused_by_default_and_the_log_says_why(tmp_path, mocks):
    with gateway(tmp_path, mocks) as gw:
        status, body = chat(gw)
        log = gw.log()
    assert status == 502 and body["error"]["type"] == "api_error"
    assert "certificate verification failed" in body["error"]["message"]
    assert "certificate verification failed" in log and "ssl_verify_upstream_trusted_ca" in log
    assert mocks[0].count() == 0
    assert K_TLS not in log and K_MTLS not in log


def test_trusted_ca_and_client_certs(tmp_path, mocks, pki):
    with gateway(tmp_path, mocks, "--set", f"ssl_verify_upstream_trusted_ca={pki.ca}",
                 "--set", f"client_certs={pki.client}") as gw:
        assert chat(gw)[0] == 200
        assert chat(gw, "mtls-model")[0] == 200
    assert mocks[0].count(K_TLS) == 1 and mocks[1].count(K_MTLS) == 1


def test_ssl_insecure_and_a_warning_for_an_option_that_cannot_apply(tmp_path, mocks):
    with gateway(tmp_path, mocks, "--set", "ssl_insecure=true", "--set", "http2=false") as gw:
        assert chat(gw)[0] == 200
        status, body = chat(gw, "mtls-model")  # no client certificate: the server refuses
        log = gw.log()
    assert status == 502
    assert "option http2 is set but has no effect" in log
    assert K_TLS not in log and K_MTLS not in log


def test_a_saved_flow_shows_the_real_tls_connection(tmp_path, mocks, pki):
    path = tmp_path / "flows.mitm"
    with gateway(tmp_path, mocks, "--set", f"ssl_verify_upstream_trusted_ca={pki.ca}",
                 "-w", str(path)) as gw:
        assert chat(gw)[0] == 200
    with open(path, "rb") as f:
        flows = [fl for fl in io.FlowReader(f).stream() if fl.request.path.endswith("/completions")]
    server = flows[-1].server_conn
    assert server.address == ("127.0.0.1", mocks[0].port) and server.peername[1] == mocks[0].port
    assert server.tls_version in ("TLSv1.2", "TLSv1.3") and server.cipher and server.sni == "127.0.0.1"
    assert server.certificate_list and server.certificate_list[0].cn == "127.0.0.1"
    assert server.timestamp_start <= server.timestamp_tls_setup <= flows[-1].response.timestamp_start
