"""AiohttpReply.chunks' idle limit (one timer per stream, moved lazily): what an
``asyncio.timeout`` per read guaranteed still holds."""
import asyncio

import aiohttp
import pytest

from keypool.mitm.upstream import AiohttpReply


async def _paced_upstream(gaps: list[float]):
    """A chunked SSE answer: one event, then one more after each of ``gaps`` seconds."""
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n" b"b\r\ndata: one\n\n\r\n")
        await writer.drain()
        for gap in gaps:
            await asyncio.sleep(gap)
            writer.write(b"b\r\ndata: two\n\n\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_all(port: int, idle_s: float) -> list[bytes]:
    async with aiohttp.ClientSession() as session:
        reply = AiohttpReply(await session.get(f"http://127.0.0.1:{port}/"))
        return [c async for c in reply.chunks(idle_s)]


async def test_a_stream_that_keeps_talking_outlives_its_idle_limit():
    server, port = await _paced_upstream([0.1] * 6)  # 0.6 s in all, never 0.3 s silent
    try:
        got = await asyncio.wait_for(_read_all(port, 0.3), 5)
        assert b"".join(got) == b"data: one\n\n" + b"data: two\n\n" * 6
    finally:
        server.close()


async def test_a_silence_longer_than_the_limit_after_chunks_is_a_timeout():
    server, port = await _paced_upstream([0.05, 0.05, 5])
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_read_all(port, 0.3), 5)
        assert 0.35 < loop.time() - began < 2
    finally:
        server.close()


async def test_a_read_cancelled_from_outside_stays_a_cancellation():
    server, port = await _paced_upstream([5])
    try:
        task = asyncio.create_task(_read_all(port, 3.0))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        server.close()
