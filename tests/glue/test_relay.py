"""relay.Relay over real loopback sockets: what mitmproxy fetches from a parked reply."""
import asyncio

import aiohttp

from keypool.echo import Masker
from keypool.mitm import relay as relay_mod
from keypool.mitm.relay import Relay
from keypool.mitm.upstream import AiohttpReply

from .conftest import GLUE_K1, glue_fetch


class FakeReply:
    """A parked upstream reply: scripted chunks, optionally an exception after them."""

    def __init__(self, chunks, *, fields=(), raise_after: BaseException | None = None,
                 status=200, reason="OK"):
        self.status, self.reason = status, reason
        self.fields = list(fields)
        self._chunks, self._raise = list(chunks), raise_after
        self.closed = asyncio.Event()
        self.idle_s = "unset"

    async def chunks(self, idle_s=None):
        self.idle_s = idle_s
        for c in self._chunks:
            await asyncio.sleep(0)  # arrive as separate reads
            yield c
        if self._raise is not None:
            raise self._raise

    def close(self):
        self.closed.set()


async def started() -> Relay:
    r = Relay()
    await r.start()
    return r


async def test_a_parked_reply_is_fetched_chunk_by_chunk():
    r = await started()
    try:
        chunks = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
        reply = FakeReply(chunks, fields=[(b"content-type", b"text/event-stream")])
        token = r.park(reply, idle_s=7.0)
        status, fields, got, (_, w) = await glue_fetch(r.port, "/" + token)
        w.close()
        assert status == 200
        assert ("content-type", "text/event-stream") in fields
        assert ("transfer-encoding", "chunked") in fields
        assert got == chunks
        assert reply.idle_s == 7.0
        await asyncio.wait_for(reply.closed.wait(), 2)
        assert token not in r.parked  # one fetch only
    finally:
        await r.close()


async def test_a_key_echoed_across_chunks_in_a_header_and_the_reason_is_masked():
    r = await started()
    try:
        cut = 9
        chunks = [b"data: {\"echo\": \"" + GLUE_K1[:cut].encode(),
                  GLUE_K1[cut:].encode() + b"\"}\n\n", b"data: [DONE]\n\n"]
        reply = FakeReply(chunks, fields=[(b"x-echo", GLUE_K1.encode())],
                          reason=f"bad {GLUE_K1}")
        token = r.park(reply, masker=Masker([GLUE_K1]))
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        status, fields, got, _ = await glue_fetch(r.port, "/" + token,
                                                  reader_writer=(reader, writer))
        writer.close()
        body = b"".join(got)
        assert status == 200
        assert GLUE_K1.encode() not in body and b"[DONE]" in body
        assert GLUE_K1 not in repr(fields)
        assert body.count(GLUE_K1[-4:].encode()) == 1  # the masked form took its place
    finally:
        await r.close()


async def test_an_unknown_token_is_410_and_the_connection_serves_the_next_request():
    r = await started()
    try:
        status, _, body, conn = await glue_fetch(r.port, "/no-such-token")
        assert status == 410 and body == []
        token = r.park(FakeReply([b"x"]))
        status, _, body, (_, w) = await glue_fetch(r.port, "/" + token, reader_writer=conn)
        w.close()
        assert status == 200 and body == [b"x"]
    finally:
        await r.close()


async def test_a_reply_nobody_fetches_is_closed(monkeypatch):
    monkeypatch.setattr(relay_mod, "UNCLAIMED_S", 0.05)
    r = await started()
    try:
        reply = FakeReply([b"never read"])
        token = r.park(reply)
        await asyncio.wait_for(reply.closed.wait(), 2)
        assert token not in r.parked
        status, _, _, (_, w) = await glue_fetch(r.port, "/" + token)
        w.close()
        assert status == 410
    finally:
        await r.close()


async def test_close_discards_every_parked_reply():
    r = await started()
    replies = [FakeReply([b"a"]), FakeReply([b"b"])]
    for reply in replies:
        r.park(reply)
    await r.close()
    assert all(reply.closed.is_set() for reply in replies) and not r.parked


async def test_a_reply_that_breaks_mid_stream_closes_the_connection():
    r = await started()
    try:
        reply = FakeReply([b"data: one\n\n"], raise_after=ConnectionResetError("gone"))
        token = r.park(reply)
        status, _, got, (reader, writer) = await glue_fetch(r.port, "/" + token)
        assert status == 200
        assert got is None  # no last chunk: mitmproxy sees a broken-off body
        assert await asyncio.wait_for(reader.read(), 2) == b""  # and the connection is closed
        writer.close()
        assert reply.closed.is_set()
    finally:
        await r.close()


async def _stalling_upstream():
    """An upstream that sends its head and one chunk, then falls silent."""
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n" b"b\r\ndata: one\n\n\r\n")
        await writer.drain()
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_stream_silent_for_longer_than_idle_s_is_cut_off():
    server, port = await _stalling_upstream()
    r = await started()
    async with aiohttp.ClientSession() as session:
        try:
            resp = await session.get(f"http://127.0.0.1:{port}/")
            token = r.park(AiohttpReply(resp), idle_s=0.2)
            loop = asyncio.get_running_loop()
            began = loop.time()
            status, _, got, (_, w) = await glue_fetch(r.port, "/" + token)
            w.close()
            assert status == 200 and got is None  # the first chunk, then cut off
            assert 0.15 < loop.time() - began < 2
        finally:
            await r.close()
            server.close()
