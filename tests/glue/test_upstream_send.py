"""upstream.Upstream against a local aiohttp server: what is sent, and the body caps.

Asserted: what the upstream receives and how a reply fails; not how the sender is built
(issue 10's `sender` work adds TLS and proxy options to it).
"""
import asyncio
import gzip
import inspect

import pytest
from aiohttp import web
from mitmproxy import http

from keypool.config import load_config
from keypool.gateway import Gateway
from keypool.mitm import upstream as upstream_mod
from keypool.mitm.upstream import Upstream
from keypool.reissue import UpstreamError

from .conftest import GLUE_K1, GLUE_K2, GLUE_TOKEN, glue_keys_yaml

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
CLIENT_FIELDS = (
    (b"host", b"127.0.0.1:8080"), (b"authorization", f"Bearer {GLUE_TOKEN}".encode()),
    (b"content-type", b"application/json"), (b"connection", b"keep-alive, x-private"),
    (b"x-api-key", GLUE_TOKEN.encode()), (b"content-length", str(len(CHAT)).encode()),
)


class Upstreamish:
    """An aiohttp server on loopback: records what it got, answers what a test set."""

    def __init__(self):
        self.got: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.answer = lambda request: web.json_response({"ok": True})

    async def handle(self, request: web.Request):
        self.got.append(request)
        self.bodies.append(await request.read())
        answer = self.answer(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def plan_for(base_url: str, tmp_path, body: bytes = CHAT):
    """A gateway's first attempt at a client's chat request (the key it leased)."""
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(base_url, extra=f"state_dir: {tmp_path / 'state'}"))
    gw = Gateway(load_config(path))
    ticket = gw.admit("POST", "/v1/chat/completions", http.Headers(CLIENT_FIELDS), body)
    return gw.pick(ticket)


async def test_the_key_is_sent_never_the_client_token(tmp_path):
    async with Upstreamish() as up:
        plan = plan_for(up.url, tmp_path)
        sender = Upstream()
        try:
            reply = await sender.send(plan, "POST", CLIENT_FIELDS)
            assert reply.status == 200 and await reply.read() == b'{"ok": true}'
        finally:
            await sender.close()
    (request,) = up.got
    assert request.headers["authorization"] == f"Bearer {plan.key.spec.secret}"
    assert plan.key.spec.secret in (GLUE_K1, GLUE_K2)
    sent = repr(list(request.raw_headers)) + repr(request.path_qs)
    assert GLUE_TOKEN not in sent and "x-private" not in sent
    assert request.headers["host"] == up.url.removeprefix("http://")  # the provider's, not ours
    assert request.path == "/v1/chat/completions"
    assert up.bodies[0] == plan.ticket.body


async def test_a_body_over_the_cap_is_an_upstream_error(tmp_path):
    async with Upstreamish() as up:
        up.answer = lambda r: web.Response(body=b"x" * 50_000)
        sender = Upstream()
        try:
            reply = await sender.send(plan_for(up.url, tmp_path), "POST", CLIENT_FIELDS, cap=10_000)
            with pytest.raises(UpstreamError, match="answer over"):
                await reply.read()
        finally:
            await sender.close()


async def test_a_chunked_body_over_the_cap_is_cut_while_reading(tmp_path):
    async def chunked(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(b"y" * 4096)
        await resp.write_eof()
        return resp

    async with Upstreamish() as up:
        up.answer = chunked
        sender = Upstream()
        try:
            reply = await sender.send(plan_for(up.url, tmp_path), "POST", CLIENT_FIELDS, cap=10_000)
            with pytest.raises(UpstreamError, match="answer over"):
                await reply.read()
        finally:
            await sender.close()


async def test_an_error_body_has_its_own_smaller_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream_mod, "ERROR_BODY_CAP", 1000)
    async with Upstreamish() as up:
        up.answer = lambda r: web.Response(status=500, body=b"e" * 5000)
        sender = Upstream()
        try:
            reply = await sender.send(plan_for(up.url, tmp_path), "POST", CLIENT_FIELDS,
                                      cap=1 << 20)
            assert reply.status == 500 and reply.cap == 1000
            with pytest.raises(UpstreamError):
                await reply.read()
            up.answer = lambda r: web.Response(status=200, body=b"o" * 5000)
            reply = await sender.send(plan_for(up.url, tmp_path), "POST", CLIENT_FIELDS,
                                      cap=1 << 20)
            assert len(await reply.read()) == 5000  # a success may be larger
        finally:
            await sender.close()


async def test_a_gzip_bomb_stops_at_the_cap_counted_inflated(tmp_path):
    bomb = gzip.compress(b"\0" * (16 << 20), 6)  # ~16 KB on the wire, 16 MB inflated
    assert len(bomb) < 200_000
    async with Upstreamish() as up:
        up.answer = lambda r: web.Response(body=bomb, headers={"content-encoding": "gzip"})
        sender = Upstream()
        try:
            reply = await sender.send(plan_for(up.url, tmp_path), "POST", CLIENT_FIELDS,
                                      cap=1 << 20)
            assert "content-encoding" not in {k.lower() for k, _ in
                                              ((k.decode(), v) for k, v in reply.fields)}
            with pytest.raises(UpstreamError, match="answer over 1 MB"):
                await reply.read()
        finally:
            await sender.close()


async def test_a_refused_connection_is_an_upstream_error_without_key_or_url(tmp_path):
    async with Upstreamish() as up:
        url = up.url  # a port that was just listening and is now closed
    plan = plan_for(url, tmp_path)
    sender = Upstream()
    try:
        with pytest.raises(UpstreamError) as e:
            await sender.send(plan, "POST", CLIENT_FIELDS)
    finally:
        await sender.close()
    message = str(e.value)
    assert message.startswith("cannot connect")
    for secret in (GLUE_K1, GLUE_K2, GLUE_TOKEN, url.removeprefix("http://")):
        assert secret not in message


async def test_a_reset_before_the_answer_is_an_upstream_error(tmp_path):
    async def reset(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sender = Upstream()
    try:
        with pytest.raises(UpstreamError) as e:
            await sender.send(plan_for(url, tmp_path), "POST", CLIENT_FIELDS)
        assert GLUE_K1 not in str(e.value) and GLUE_K2 not in str(e.value)
    finally:
        await sender.close()
        server.close()
