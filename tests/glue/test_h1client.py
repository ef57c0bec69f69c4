"""keymux's lean HTTP/1.1 client (h1client, h1reply, h1parse) against a raw loopback server:
framing, inflating, keep-alive, the retry of a dead pooled connection, and the limits a
hostile upstream meets."""
import asyncio
import gzip
import socket
import struct
import zlib

import brotli
import pytest

from keypool.mitm import h1client, h1framing, h1parse
from keypool.mitm.conninfo import ConnInfo
from keypool.mitm.upstream import _HOP_BYTES
from keypool.reissue import UpstreamError


class Raw:
    """A loopback server answering each request with the next scripted bytes (a callable
    may also act on the writer); counts connections and requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                if callable(answer):
                    if await answer(writer) is False:
                        return
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.pool = h1client.Pool()
        return self

    async def __aexit__(self, *exc):
        self.pool.close()
        self.server.close()

    async def send(self, body=b"{}", method="POST", cap=1 << 20, stream_cap=None):
        head = h1client.request_head(method, f"http://127.0.0.1:{self.port}/v1/x?a=%2F",
                                     "127.0.0.1", self.port, 80, [(b"x-a", b"1")],
                                     _HOP_BYTES, body)
        return await h1client.send(
            self.pool, "127.0.0.1", self.port, None, None, head, body,
            ConnInfo(("127.0.0.1", self.port)), head_only=method == "HEAD", cap=cap,
            error_cap=1000, stream_cap=stream_cap, hop=_HOP_BYTES)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(*parts: bytes, extra: bytes = b"") -> bytes:
    out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + extra + b"\r\n"
    for p in parts:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


async def test_the_request_goes_out_as_given_and_the_connection_is_reused():
    async with Raw(ok(b"one"), ok(b"two")) as up:
        first = await up.send()
        assert first.status == 200 and await first.read() == b"one"
        second = await up.send()
        assert await second.read() == b"two"
        assert up.connections == 1 and second.conn.reused and not first.conn.reused
    sent = up.requests[0]
    assert sent.startswith(b"POST /v1/x?a=%2F HTTP/1.1\r\nHost: 127.0.0.1:"
                           + str(up.port).encode() + b"\r\n")
    assert b"x-a: 1\r\n" in sent and sent.endswith(b"Content-Length: 2\r\n\r\n{}")


async def test_chunked_with_extensions_trailers_and_an_informational_answer_first():
    answer = (b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
              + chunked(b"hello ", b"world").replace(b"6\r\n", b"6;ext=1\r\n")
              .replace(b"0\r\n\r\n", b"0\r\nx-trailer: t\r\n\r\n"))
    async with Raw(answer) as up:
        reply = await up.send()
        assert reply.status == 200 and await reply.read() == b"hello world"
        assert (b"transfer-encoding", b"chunked") not in reply.fields
        assert await (await up.send()).read() == b"hello world" and up.connections == 1


async def test_a_close_delimited_body_is_read_to_the_end_and_not_reused():
    async def close_delimited(writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000)
        await writer.drain()
        return False

    async with Raw(close_delimited) as up:
        assert await (await up.send()).read() == b"z" * 100_000
        assert await (await up.send()).read() == b"z" * 100_000
        assert up.connections == 2


@pytest.mark.parametrize("encoding,encode", [
    (b"gzip", gzip.compress), (b"deflate", zlib.compress),
    (b"deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as aiohttp detects it
    (b"br", brotli.compress)])
async def test_bodies_are_inflated_and_their_encoding_dropped(encoding, encode):
    body = b'{"text": "%s"}' % (b"abc" * 5000)
    async with Raw(ok(encode(body), b"content-encoding: " + encoding + b"\r\n")) as up:
        reply = await up.send()
        assert await reply.read() == body
        assert all(k.lower() != b"content-encoding" for k, _ in reply.fields)


@pytest.mark.parametrize("encoding,encode", [(b"gzip", gzip.compress), (b"br", brotli.compress)])
async def test_a_bomb_stops_at_the_cap_counted_inflated(encoding, encode):
    bomb = encode(b"\0" * (32 << 20))
    async with Raw(ok(bomb, b"content-encoding: " + encoding + b"\r\n")) as up:
        reply = await up.send(cap=1 << 20)
        with pytest.raises(UpstreamError, match="answer over 1 MB"):
            await reply.read()


async def test_a_pooled_connection_the_upstream_closed_is_not_an_error():
    async def answer_then_close(writer):
        writer.write(ok(b"once"))
        await writer.drain()
        return False  # closes the kept-alive connection

    async with Raw(answer_then_close) as up:
        assert await (await up.send()).read() == b"once"
        await asyncio.sleep(0.05)  # the close reaches the pool (or not: the retry covers it)
        reply = await up.send()
        assert await reply.read() == b"once" and up.connections == 2


def drop_the_second(served: list, reset: bool):
    async def answer(writer):
        served.append(1)
        if len(served) == 2:  # the second request, on the kept connection: no answer
            if reset:  # SO_LINGER 0: the close is a reset (RST), not a FIN
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            return False  # a clean close (FIN) otherwise
        writer.write(ok(b"fine"))
        await writer.drain()
    return answer


async def test_a_reused_connection_closed_before_a_byte_is_retried_once_on_a_new_one():
    served = []
    async with Raw(drop_the_second(served, reset=False)) as up:
        assert await (await up.send()).read() == b"fine"
        reply = await up.send()
        assert await reply.read() == b"fine" and not reply.conn.reused
        assert up.connections == 2 and len(served) == 3


async def test_a_reset_on_a_reused_connection_is_the_upstreams_answer_not_retried():
    served = []
    async with Raw(drop_the_second(served, reset=True)) as up:
        assert await (await up.send()).read() == b"fine"
        with pytest.raises(UpstreamError, match="closed the connection"):
            await up.send()
        assert len(served) == 2


async def test_a_fresh_connection_dropped_without_a_byte_is_an_error():
    async def drop(writer):
        writer.transport.abort()
        return False

    async with Raw(drop) as up:
        with pytest.raises(UpstreamError, match="closed the connection|ConnectionReset"):
            await up.send()
        assert up.connections == 1


# -- a hostile upstream's limits --------------------------------------------------------

@pytest.mark.parametrize("answer,why", [
    (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (300 << 10) + b"\r\n\r\n", "header over"),
    (b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 200 + b"\r\n", "too many header fields"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
    (b"SPDY/3 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "header field"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\ncontent-encoding: zstd\r\ncontent-length: 1\r\n\r\nx", "zstd"),
])
async def test_a_malformed_or_oversized_head_is_an_upstream_error(answer, why):
    async with Raw(answer) as up:
        with pytest.raises(UpstreamError, match=why):
            reply = await up.send()
            await reply.read()


@pytest.mark.parametrize("framing,why", [
    (b"zz\r\nhello\r\n0\r\n\r\n", "chunk size"),
    (b"-5\r\nhello\r\n0\r\n\r\n", "chunk size"),
    (b"5\r\nhelloXX0\r\n\r\n", "CRLF"),
    (b"1" * 5000, "line too long"),
    (b"fffffffffffffffff\r\n", "chunk size"),
])
async def test_malformed_chunked_framing_is_an_upstream_error(framing, why):
    async with Raw(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + framing) as up:
        reply = await up.send()
        with pytest.raises(UpstreamError, match=why):
            await reply.read()


async def test_a_declared_length_over_the_cap_fails_before_reading():
    async with Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 50000000\r\n\r\nxx") as up:
        reply = await up.send(cap=1 << 20)
        with pytest.raises(UpstreamError, match="answer over 1 MB"):
            await reply.read()


async def test_an_error_answer_has_the_smaller_cap():
    async with Raw(b"HTTP/1.1 500 Oops\r\ncontent-length: 5000\r\n\r\n" + b"e" * 5000) as up:
        reply = await up.send(cap=1 << 20)
        assert reply.status == 500 and reply.reason == "Oops" and reply.cap == 1000
        with pytest.raises(UpstreamError):
            await reply.read()


def test_parse_limits_directly():
    with pytest.raises(ValueError):
        h1parse.chunk_size(b"0x10")
    with pytest.raises(ValueError):
        h1parse.chunk_size(b"")
    assert h1parse.chunk_size(b"1A ; name=value") == 26
    assert h1parse.content_length([b"7", b"7"]) == 7 and h1parse.content_length([]) is None
    with pytest.raises(ValueError):
        h1parse.content_length([b"+7"])


# -- streams: pump -----------------------------------------------------------------------

async def test_pump_hands_each_piece_over_as_it_arrives():
    gate = asyncio.Event()

    async def two_parts(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    async with Raw(two_parts) as up:
        reply, got = await up.send(), []

        def sink(piece):
            got.append(piece)
            gate.set()  # the second part is sent only once the first was handed over
            return False

        async def drain():
            pass

        await asyncio.wait_for(reply.pump(sink, drain, idle_s=5), 5)
        assert got == [b"first", b"second"]


async def test_pump_cuts_a_silent_stream_after_idle_s():
    async def one_then_silence(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with Raw(one_then_silence) as up:
        reply, got = await up.send(), []

        async def drain():
            pass

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reply.pump(lambda p: got.append(p), drain, idle_s=0.2), 5)
        assert got == [b"one"]


async def test_pump_cuts_a_stream_past_its_cap_after_the_bytes_up_to_it():
    async with Raw(chunked(b"a" * 10, b"b" * 10)) as up:
        reply, got = await up.send(stream_cap=15), []

        async def drain():
            pass

        with pytest.raises(UpstreamError, match="body_size_limit"):
            await reply.pump(lambda p: got.append(p), drain)
        assert b"".join(got) == b"a" * 10 + b"b" * 5


async def test_pump_pauses_reading_while_the_writer_holds_data():
    big = b"x" * 65536
    async with Raw(chunked(*[big] * 64)) as up:
        reply, got, drains = await up.send(), [], []

        async def drain():
            # reading is paused while the writer drains (unless the body is all in)
            drains.append(reply._conn.paused or reply._state == h1framing.DONE)
            await asyncio.sleep(0)

        def sink(piece):
            got.append(len(piece))
            return True  # as if the writer's buffer were never empty

        await asyncio.wait_for(reply.pump(sink, drain), 10)
        assert sum(got) == len(big) * 64 and drains and all(drains)
