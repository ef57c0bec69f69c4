"""keymux's sender and mitmproxy's options, in-process: option -> SSL context and proxy
route, connection info of replies against local servers (plain and TLS), body limits, the
session rebuilt on a changed option without cutting an attempt in flight."""
from __future__ import annotations

import asyncio
import base64
import functools
import shutil
import ssl
import subprocess
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from mitmproxy import exceptions
from mitmproxy.addons import proxyserver, tlsconfig, upstream_auth
from mitmproxy.test import taddons

from e2e.tlsutil import make_pki
from keypool.config import parse_config
from keypool.errors import ConfigError
from keypool.mitm import h1reply, sendopts, upstream
from keypool.mitm.upstream import Upstream
from keypool.providers import ProviderSpec
from keypool.reissue import UpstreamError

SECRET_PASS = "s3cret-proxy-pass"


def mitm():
    """mitmproxy's options, with those of the addons that declare the upstream ones."""
    return taddons.context(tlsconfig.TlsConfig(), proxyserver.Proxyserver(),
                           upstream_auth.UpstreamAuth())


def aio(test):
    """Run an async test on its own loop (no pytest-asyncio here)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))
    return run


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def provider(url: str, proxy: str | None = None) -> ProviderSpec:
    return ProviderSpec("p", url, proxy=proxy)


def plan_for(url: str, path: str = "/v1/chat/completions", body: bytes = b"{}"):
    """The little of a Plan that Upstream.send reads."""
    p = provider(url)
    return SimpleNamespace(provider=p, url=f"{p.scheme}://{p.host}:{p.port}{path}",
                           ticket=SimpleNamespace(body=body),
                           rewrite_fields=lambda fields: fields)


# -- options -> TLS --------------------------------------------------------------------

def test_default_context_verifies_and_insecure_does_not():
    assert sendopts.SendOptions(env={}).default_ssl.verify_mode == ssl.CERT_REQUIRED
    insecure = sendopts.SendOptions(sendopts.TlsSettings(insecure=True), env={}).default_ssl
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_tls_versions_and_a_bad_ca_file(tmp_path):
    s = sendopts.SendOptions(sendopts.TlsSettings(min_version="TLS1_3"), env={})
    assert s.default_ssl.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ValueError, match="cannot load trusted certificates"):
        sendopts.SendOptions(sendopts.TlsSettings(ca_file=str(tmp_path / "nope.pem")), env={})


def test_client_certs_file_for_every_host_directory_per_host(pki, tmp_path):
    one = sendopts.SendOptions(sendopts.TlsSettings(client_certs=str(pki.client)), env={})
    assert one.ssl_for("a.example") is one.ssl_for("b.example") is one.default_ssl
    d = tmp_path / "certs"
    d.mkdir()
    shutil.copy(pki.client, d / "127.0.0.1.pem")
    per_host = sendopts.SendOptions(sendopts.TlsSettings(client_certs=str(d)), env={})
    assert per_host.ssl_for("127.0.0.1") is not per_host.default_ssl
    assert per_host.ssl_for("api.openai.com") is per_host.default_ssl


def test_options_not_applied_are_warned_by_name_only():
    with mitm() as tctx:
        assert sendopts.warnings(tctx.options) == []
        tctx.options.update(http2=False, upstream_auth="user:" + SECRET_PASS)
        lines = sendopts.warnings(tctx.options)
    assert any("http2" in w for w in lines) and any("upstream_auth" in w for w in lines)
    assert SECRET_PASS not in "".join(lines)


# -- proxies ---------------------------------------------------------------------------

ENV = {"HTTPS_PROXY": f"http://me:{SECRET_PASS}@proxy.corp:3128", "http_proxy": "proxy.corp:8080",
       "NO_PROXY": "127.0.0.1,.internal"}


def test_env_proxy_per_scheme_with_credentials_kept_apart():
    s = sendopts.SendOptions(env=ENV)
    r = s.route(provider("https://api.openai.com/v1"))
    assert str(r.proxy) == "http://proxy.corp:3128" and r.via == "http://proxy.corp:3128"
    auth = r.proxy_headers["Proxy-Authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == f"me:{SECRET_PASS}"
    assert SECRET_PASS not in repr(r) and auth not in repr(r) and r.auth_field is None
    plain = s.route(provider("http://models.example/v1"))
    assert plain.via == "http://proxy.corp:8080" and plain.auth_field is plain.proxy_headers is None


def test_no_proxy_provider_proxy_and_none():
    s = sendopts.SendOptions(env=ENV)
    assert s.route(provider("https://127.0.0.1:9/v1")).proxy is None
    assert s.route(provider("https://llm.internal/v1")).proxy is None
    own = s.route(provider("https://api.openai.com/v1", "https://other:8443"))
    assert own.via == "https://other:8443" and own.proxy_headers is None
    plain = s.route(provider("http://api.example/v1", f"http://me:{SECRET_PASS}@p:3128"))
    assert plain.auth_field[0] == "Proxy-Authorization" and plain.proxy_headers is None
    assert s.route(provider("https://api.openai.com/v1", "none")).proxy is None


def test_lower_case_wins_and_unusable_env_values_are_reported_without_secrets():
    s = sendopts.SendOptions(env={"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"})
    assert s.route(provider("https://x.example/v1")).via == "http://low:1"
    bad = {"HTTPS_PROXY": f"socks5://me:{SECRET_PASS}@s:1080"}
    assert sendopts.SendOptions(env=bad).route(provider("https://x.example/v1")).proxy is None
    problems = sendopts.env_proxy_problems(bad)
    assert problems and "socks5" in problems[0] and SECRET_PASS not in problems[0]


YAML = """
version: 1
providers:
  local:
    base_url: http://127.0.0.1:9100/v1
    proxy: {proxy}
keys: []
"""


@pytest.mark.parametrize("value", [f"ftp://me:{SECRET_PASS}@p:21", f"http://me:{SECRET_PASS}@",
                                   f"http://me:{SECRET_PASS}@p:3128/path", "http://p:notaport"])
def test_config_refuses_a_bad_proxy_without_quoting_it(value):
    with pytest.raises(ConfigError) as e:
        parse_config(YAML.format(proxy=value), env={})
    assert "proxy" in str(e.value) and SECRET_PASS not in str(e.value) and e.value.line == 6


def test_config_reads_a_proxy_and_none():
    cfg = parse_config(YAML.format(proxy=f"http://me:{SECRET_PASS}@p:3128"), env={})
    assert cfg.providers["local"].proxy.endswith("@p:3128")
    assert SECRET_PASS not in repr(cfg.providers["local"])
    assert parse_config(YAML.format(proxy="none"), env={}).providers["local"].proxy == "none"
    assert parse_config(YAML.format(proxy="NONE"), env={}).providers["local"].proxy == "none"


# -- a local server, plain and TLS -----------------------------------------------------

class Server:
    def __init__(self, ssl_ctx=None):
        self.ssl_ctx, self.gate = ssl_ctx, None

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        app.router.add_post("/v1/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_ctx else 'http'}://127.0.0.1:{self.port}/v1"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()

    async def answer(self, request):
        await request.read()
        return web.json_response({"ok": True, "pad": "x" * 2000})

    async def stream(self, request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(4):
            await resp.write(b"data: " + b"y" * 400 + b"\n\n")
            if self.gate is not None:
                await self.gate.wait()
        await resp.write_eof()
        return resp


def configured(**opts) -> Upstream:
    up = Upstream()
    with mitm() as tctx:
        tctx.options.update(**opts)
        up.configure(tctx.options, set(tctx.options.keys()))
    return up


@aio
async def test_plain_http_conn_info_and_reuse():
    async with Server() as srv:
        up = configured()
        try:
            first = await up.send(plan_for(srv.url), "POST", ())
            body = await first.read()
            second = await up.send(plan_for(srv.url), "POST", ())
            await second.read()
        finally:
            await up.close()
    c = first.conn
    assert b'"ok"' in body and c.address == ("127.0.0.1", srv.port)
    assert c.peername == ("127.0.0.1", srv.port) and c.sockname[0] == "127.0.0.1"
    assert c.tls_version is None and c.certificates == [] and c.via is None and not c.reused
    assert (c.timestamp_start <= c.timestamp_tcp_setup <= c.timestamp_request_sent
            <= c.timestamp_response_start <= c.timestamp_end)
    assert second.conn.reused and second.conn.timestamp_tcp_setup is None
    assert second.conn.sockname == c.sockname  # the same pooled connection


@aio
async def test_a_large_body_is_stamped_sent_when_its_writer_ends():
    async with Server() as srv:
        up = configured()
        try:
            reply = await up.send(plan_for(srv.url, body=b"x" * (2 << 20)), "POST", ())
            await reply.read()
        finally:
            await up.close()
    c = reply.conn
    assert c.timestamp_tcp_setup < c.timestamp_request_sent <= c.timestamp_response_start


@aio
async def test_tls_needs_the_ca_then_shows_tls_facts(pki):
    async with Server(pki.server_context()) as srv:
        up = configured()
        try:
            with pytest.raises(UpstreamError, match="certificate verification failed"):
                await up.send(plan_for(srv.url), "POST", ())
        finally:
            await up.close()
        for opts in ({"ssl_verify_upstream_trusted_ca": str(pki.ca)}, {"ssl_insecure": True}):
            up = configured(**opts)
            try:
                reply = await up.send(plan_for(srv.url), "POST", ())
                await reply.read()
            finally:
                await up.close()
            c = reply.conn
            assert reply.status == 200 and c.tls_version in ("TLSv1.2", "TLSv1.3") and c.cipher
            assert c.timestamp_tls_setup and c.timestamp_tcp_setup is None
            assert c.certificates and c.certificates[-1] == pki.ca_der or len(c.certificates) == 1


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to hash the CA's name")
@aio
async def test_trusted_confdir_is_an_openssl_capath(pki, tmp_path):
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca)],
                            capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(pki.ca, tmp_path / f"{digest}.0")
    async with Server(pki.server_context()) as srv:
        up = configured(ssl_verify_upstream_trusted_confdir=str(tmp_path))
        try:
            reply = await up.send(plan_for(srv.url), "POST", ())
            await reply.read()
        finally:
            await up.close()
    assert reply.status == 200


@aio
async def test_client_cert_required_by_the_server(pki):
    async with Server(pki.server_context(require_client_cert=True)) as srv:
        up = configured(ssl_verify_upstream_trusted_ca=str(pki.ca), client_certs=str(pki.client))
        try:
            reply = await up.send(plan_for(srv.url), "POST", ())
            await reply.read()
        finally:
            await up.close()
    assert reply.status == 200


def test_body_size_limit_users_value_kept_apart_from_keymuxs_own():
    up = Upstream()
    with mitm() as tctx:
        up.configure(tctx.options, set(tctx.options.keys()))
        assert up.request_limit(32 << 20) == str(32 << 20)  # no user value: max_body
        tctx.options.update(body_size_limit=str(32 << 20))  # keymux's own write comes back
        up.configure(tctx.options, {"body_size_limit"})
        assert up.user_body_limit is None
        tctx.options.update(body_size_limit="1k")
        up.configure(tctx.options, {"body_size_limit"})
        assert up.user_body_limit == 1024 and up.request_limit(32 << 20) == "1024"
        tctx.options.update(body_size_limit="1024")  # keymux's write again: still the user's
        up.configure(tctx.options, {"body_size_limit"})
        assert up.user_body_limit == 1024
        with pytest.raises(exceptions.OptionsError):
            tctx.options.update(ssl_verify_upstream_trusted_ca="/nonexistent/ca.pem")
            up.configure(tctx.options, {"ssl_verify_upstream_trusted_ca"})


@aio
async def test_user_body_limit_caps_bodies_and_cuts_streams():
    async with Server() as srv:
        up = configured(body_size_limit="1k")
        try:
            reply = await up.send(plan_for(srv.url), "POST", (), cap=64 << 20)
            with pytest.raises(UpstreamError, match="over"):
                await reply.read()
            reply = await up.send(plan_for(srv.url, "/v1/stream"), "POST", ())
            got = b""
            with pytest.raises(UpstreamError, match="body_size_limit"):
                async for chunk in reply.chunks(5):
                    got += chunk
        finally:
            await up.close()
    assert len(got) == 1024 and reply.conn.timestamp_end is not None


@aio
async def test_a_changed_option_rebuilds_the_session_without_cutting_a_stream():
    async with Server() as srv:
        srv.gate = asyncio.Event()
        up = configured()
        up.lean = False  # aiohttp's sessions (the lean client's pool: the test below)
        try:
            reply = await up.send(plan_for(srv.url, "/v1/stream"), "POST", ())
            old = up._session
            with mitm() as tctx:
                tctx.options.update(ssl_insecure=True)
                up.configure(tctx.options, {"ssl_insecure"})
            assert up._session is None and not old.closed  # retired, still streaming
            srv.gate.set()
            chunks = [c async for c in reply.chunks(5)]
            await asyncio.sleep(0)  # the close is scheduled on the loop
            await asyncio.sleep(0.05)
            assert len(chunks) >= 1 and old.closed
            again = await up.send(plan_for(srv.url), "POST", ())
            await again.read()
            assert up._session is not old and again.status == 200
        finally:
            await up.close()


@aio
async def test_a_changed_option_retires_the_lean_pool_without_cutting_a_stream():
    async with Server() as srv:
        srv.gate = asyncio.Event()
        up = configured()
        try:
            reply = await up.send(plan_for(srv.url, "/v1/stream"), "POST", ())
            old = up._pool
            with mitm() as tctx:
                tctx.options.update(ssl_insecure=True)
                up.configure(tctx.options, {"ssl_insecure"})
            assert up._pool is not old and old.closed  # retired, still streaming
            srv.gate.set()
            body = b"".join([c async for c in reply.chunks(5)])
            assert body == 4 * (b"data: " + b"y" * 400 + b"\n\n")
            again = await up.send(plan_for(srv.url), "POST", ())
            await again.read()
            assert again.status == 200 and not again.conn.reused and not old.idle
        finally:
            await up.close()


@aio
async def test_direct_attempts_go_through_the_lean_client_unless_keymux_sender_is_aiohttp():
    async with Server() as srv:
        up = configured()
        try:
            reply = await up.send(plan_for(srv.url), "POST", ())
            assert isinstance(reply, h1reply.H1Reply) and reply.status == 200
            assert await reply.read()
            up.lean = False  # --set keymux_sender=aiohttp
            reply = await up.send(plan_for(srv.url), "POST", ())
            assert isinstance(reply, upstream.AiohttpReply) and await reply.read()
        finally:
            await up.close()


@aio
async def test_a_refused_connection_says_so_and_stamps_the_end():
    up = configured()
    try:
        with pytest.raises(UpstreamError, match="cannot connect"):
            await up.send(plan_for("http://127.0.0.1:9/v1"), "POST", ())
    finally:
        await up.close()
    assert up._busy.get(up._session, 0) == 0


@pytest.mark.parametrize("lean", [True, False])
@aio
async def test_capture_costs_little(capsys, lean):
    """Not a benchmark: prints µs per attempt (send + read) with capture, for the report."""
    async with Server() as srv:
        up = configured()
        up.lean = lean
        try:
            for _ in range(20):
                await (await up.send(plan_for(srv.url), "POST", ())).read()
            n, t0 = 300, time.perf_counter()
            for _ in range(n):
                await (await up.send(plan_for(srv.url), "POST", ())).read()
            per = (time.perf_counter() - t0) / n * 1e6
            if lean:  # facts read once per connection, kept on it
                assert up._pool.idle and all(c.facts for cs in up._pool.idle.values() for c in cs)
            else:
                assert len(upstream.conncapture._facts) >= 1
        finally:
            await up.close()
    with capsys.disabled():
        print(f"\nsend+read on loopback, same process ({'lean' if lean else 'aiohttp'}): "
              f"{per:.0f} µs per attempt")
