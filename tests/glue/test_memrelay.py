"""memrelay: mitmproxy's connection to the relay in memory, through the patched
``open_connection`` of ``mitmproxy.proxy.server``; what that patch relies on is pinned."""
import asyncio
import inspect
import logging

import pytest
from mitmproxy.proxy import server

from keypool.echo import Masker
from keypool.mitm import h1reply, memrelay
from keypool.mitm.relay import Relay

from .conftest import GLUE_K1, glue_fetch
from .test_h1client import Raw, chunked
from .test_relay import FakeReply


async def until(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def started() -> Relay:
    r = Relay()
    await r.start()
    return r


async def mitm_connect(port: int):
    """What mitmproxy's ConnectionHandler.open_connection calls, as it calls it."""
    return await server.asyncio.open_connection("127.0.0.1", port, local_addr=None)


def test_mitmproxys_server_connections_are_what_the_patch_expects():
    """mitmproxy 12.2.3: server connections opened through the module's ``asyncio`` global
    and used through reader.read and the writer methods the in-memory writer has."""
    source = inspect.getsource(server.ConnectionHandler)
    assert "reader, writer = await asyncio.open_connection(" in source
    assert "data = await reader.read(65535)" in source
    assert memrelay._fits(server)
    used = {"write(", "drain()", "close()", "is_closing()", "write_eof()", "get_extra_info("}
    for name in used:
        assert "writer." + name in inspect.getsource(server) or name == "drain()"
    for name in ("write", "drain", "close", "is_closing", "write_eof", "get_extra_info"):
        assert callable(getattr(memrelay.MitmWriter, name))


async def test_install_replaces_asyncio_in_mitmproxys_server_module_once():
    relays = memrelay.install()
    assert relays is not None
    assert server.asyncio.__name__ == memrelay.SHIM
    assert memrelay.install() is relays  # a reloaded script finds the same registry
    assert server.asyncio.sleep is asyncio.sleep  # everything else is asyncio's own
    assert server.asyncio.open_connection is not asyncio.open_connection


async def test_a_parked_stream_reaches_mitmproxys_reader_in_memory():
    r = await started()
    try:
        cut = 9
        chunks = [b"data: {\"echo\": \"" + GLUE_K1[:cut].encode(),
                  GLUE_K1[cut:].encode() + b"\"}\n\n", b"data: [DONE]\n\n"]
        reply = FakeReply(chunks, fields=[(b"x-echo", GLUE_K1.encode())])
        token = r.park(reply, masker=Masker([GLUE_K1]))
        reader, writer = await mitm_connect(r.port)
        assert isinstance(reader._transport, memrelay._Throttle)  # no socket
        assert writer.get_extra_info("peername") == ("127.0.0.1", r.port)
        status, fields, got, _ = await glue_fetch(r.port, "/" + token,
                                                  reader_writer=(reader, writer))
        body = b"".join(got)
        assert status == 200 and b"[DONE]" in body
        assert GLUE_K1.encode() not in body and GLUE_K1 not in repr(fields)
        await asyncio.wait_for(reply.closed.wait(), 2)
        # keep-alive: the same connection asks again (the token is gone: 410)
        status, _, _, _ = await glue_fetch(r.port, "/" + token, reader_writer=(reader, writer))
        assert status == 410
        writer.close()
    finally:
        await r.close()


async def test_the_in_memory_connect_suspends_once_as_a_real_one_does():
    """mitmproxy runs open_connection as an eager task and stores the connection's
    handler after create_task returns: a connect that never suspended would have its
    reader and writer overwritten (mitmproxy: "assert writer" on the first write)."""
    r = await started()
    try:
        coro = mitm_connect(r.port)
        coro.send(None)  # suspended, not finished (StopIteration would fail the test)
        coro.close()
    finally:
        await r.close()


async def test_other_addresses_get_a_real_socket():
    async def serve(reader, writer):
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    memrelay.install()
    try:
        reader, writer = await mitm_connect(srv.sockets[0].getsockname()[1])
        assert isinstance(writer, asyncio.StreamWriter)
        writer.close()
    finally:
        srv.close()


async def test_a_slow_reader_pauses_the_upstream_read_and_gets_every_byte():
    big = b"x" * 65536
    r = await started()
    try:
        async with Raw(chunked(*[big] * 64)) as up:
            reply = await up.send()
            token = r.park(reply)
            reader, writer = await mitm_connect(r.port)
            writer.write(f"GET /{token} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await until(lambda: reply._conn.paused)  # nobody reads: the upstream waits
            # what came before the relay attached (up to PENDING_CAP) and one socket read
            # past the limit, not the 4 MB the upstream has to send
            held = len(reader._buffer)
            assert held < h1reply.PENDING_CAP + 2 * memrelay.LIMIT + (256 << 10)
            await reader.readuntil(b"\r\n\r\n")
            body = 0
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if not size:
                    break
                body += size
            assert body == len(big) * 64
            writer.close()
    finally:
        await r.close()


async def one_then_silence(writer):
    """An upstream that sends one chunk, then nothing."""
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
    await writer.drain()
    await asyncio.sleep(10)


async def test_mitmproxy_closing_its_side_closes_a_silent_stream_at_once():
    r = await started()
    try:
        async with Raw(one_then_silence) as up:
            reply = await up.send()
            token = r.park(reply, idle_s=30)
            reader, writer = await mitm_connect(r.port)
            writer.write(f"GET /{token} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await reader.readuntil(b"one\r\n")
            writer.close()  # the client left: mitmproxy closes its server connection
            await until(lambda: reply._error is not None)  # the upstream reply is closed
            await until(lambda: not memrelay._tasks)  # and the relay's handler ended
    finally:
        await r.close()


async def test_a_stream_silent_past_its_idle_limit_ends_mitmproxys_read():
    r = await started()
    try:
        async with Raw(one_then_silence) as up:
            reply = await up.send()
            token = r.park(reply, idle_s=0.2)
            pair = await mitm_connect(r.port)
            status, _, got, _ = await asyncio.wait_for(
                glue_fetch(r.port, "/" + token, reader_writer=pair), 5)
            assert status == 200 and got is None  # broke off before the last chunk
            assert await asyncio.wait_for(pair[0].read(), 2) == b""  # EOF
    finally:
        await r.close()


async def test_a_mitmproxy_that_differs_keeps_the_loopback_relay(monkeypatch, caplog):
    monkeypatch.setattr(server, "asyncio", asyncio)  # as if never patched
    monkeypatch.setattr(server, "keymux_memrelay_refused", False, raising=False)
    monkeypatch.setattr(memrelay, "_fits", lambda module: False)
    with caplog.at_level(logging.WARNING, logger="keymux"):
        assert memrelay.install() is None
        assert memrelay.install() is None
    assert server.asyncio is asyncio
    assert sum("loopback socket" in m for m in caplog.messages) == 1  # logged once
    r = await started()
    try:
        token = r.park(FakeReply([b"data: one\n\n"]))
        status, _, got, (_, w) = await glue_fetch(r.port, "/" + token)  # over TCP
        w.close()
        assert status == 200 and got == [b"data: one\n\n"]
    finally:
        await r.close()


@pytest.fixture(autouse=True)
def _no_leftover_tasks():
    yield
    memrelay._tasks.clear()


async def test_an_aiohttp_reply_is_closed_too_when_mitmproxy_closes_its_side():
    import aiohttp

    from keypool.mitm.upstream import AiohttpReply

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    r = await started()
    try:
        async with aiohttp.ClientSession() as session:
            port = srv.sockets[0].getsockname()[1]
            reply = AiohttpReply(await session.get(f"http://127.0.0.1:{port}/"))
            token = r.park(reply, idle_s=30)
            reader, writer = await mitm_connect(r.port)
            writer.write(f"GET /{token} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await reader.readuntil(b"one\r\n")
            writer.close()
            await until(lambda: not memrelay._tasks)  # the relay's handler ended
            assert reply._resp.closed
    finally:
        await r.close()
        srv.close()
