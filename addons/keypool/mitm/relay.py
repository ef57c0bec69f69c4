"""Hands a stream keymux already opened to mitmproxy, so mitmproxy streams it.

mitmproxy streams only responses it reads from a server. When keymux has found a key
whose answer is a good stream (after re-issuing failed attempts, before any byte went to
the client), it parks that open reply here and points the flow at this loopback server;
mitmproxy then fetches it and streams it chunk by chunk like any upstream's. Its
connection to this address is in memory (``memrelay``: no socket, no syscall per chunk)
when mitmproxy's internals are as expected, over the loopback socket otherwise.

Key secrets the upstream echoes are masked here, in the head and in every chunk, before
mitmproxy (and so the client, the flow, ``-w`` files and ``-v`` logs) sees a byte.
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from ..answers import reason as reason_phrase
from ..echo import Masker
from . import memrelay

logger = logging.getLogger("keymux")
UNCLAIMED_S = 30.0  # a parked reply nobody fetched (the client left) is closed after this


class Relay:
    def __init__(self) -> None:
        # token -> (reply, idle_s, masker); and its expiry timer, cancelled when fetched
        self.parked: dict[str, tuple[object, float | None, Masker]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._local: dict | None = None  # memrelay's registry, when mitmproxy is patched

    async def start(self) -> int:
        if self._server is None:
            # The socket stays: it reserves the address and serves whatever does not come
            # through mitmproxy's patched open_connection (memrelay: in memory).
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._local = memrelay.install()
            if self._local is not None:
                self._local[("127.0.0.1", self.port)] = self._serve
        return self.port

    def park(self, reply, idle_s: float | None = None, masker: Masker = Masker(())) -> str:
        """Keep ``reply`` for mitmproxy to fetch; ``idle_s``: how long its stream may be silent;
        ``masker``: the secrets to mask in it."""
        token = secrets.token_urlsafe(18)
        self.parked[token] = (reply, idle_s, masker)
        self._expiry[token] = asyncio.get_running_loop().call_later(
            UNCLAIMED_S, self.discard, token)
        return token

    def _claim(self, token: str):
        """The parked reply for ``token`` (None: unknown or expired), taken once."""
        timer = self._expiry.pop(token, None)
        if timer is not None:
            timer.cancel()  # a fetched stream's timer would sit in the loop's heap for 30 s
        return self.parked.pop(token, None)

    def discard(self, token: str) -> None:
        """Close a parked reply nobody will fetch (expired, or its flow failed)."""
        parked = self._claim(token)
        if parked is not None:
            parked[0].close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # mitmproxy keeps the connection for the client's next stream
                head = await reader.readuntil(b"\r\n\r\n")
                token, length = _parse_head(head)
                if length:
                    await reader.readexactly(length)
                parked = self._claim(token)
                if parked is None:
                    writer.write(b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if not await _relay(*parked, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for token in list(self.parked):
            self.discard(token)
        if self._local is not None:
            self._local.pop(("127.0.0.1", self.port), None)
        if self._server is not None:
            self._server.close()


def _parse_head(head: bytes) -> tuple[str, int]:
    lines = head.decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    return target.lstrip("/"), length


async def _relay(reply, idle_s: float | None, masker: Masker,
                 writer: asyncio.StreamWriter) -> bool:
    """Write one reply as a chunked response; False if it broke off (connection unusable)."""
    reason = masker.masked_text(reply.reason or reason_phrase(reply.status))
    head = [f"HTTP/1.1 {reply.status} {reason}".encode("utf-8", "surrogateescape")]
    head += [k + b": " + v for k, v in masker.masked_fields(reply.fields)]
    head.append(b"transfer-encoding: chunked\r\n\r\n")
    writer.write(b"\r\n".join(head))
    masking = masker.stream()
    feed = masking.feed if masker else None  # no secrets configured: nothing to scan
    write, transport = writer.write, writer.transport
    watch = getattr(writer, "watch", None)  # in memory: mitmproxy leaving closes the reply
    if watch is not None:
        watch(reply)
    try:
        pump = getattr(reply, "pump", None)
        if pump is not None:
            # keymux's own client hands each piece over from its data_received: written
            # here at once, no task woken per chunk; reading pauses while the writer holds
            # data (or mitmproxy went away: drain raises, the upstream stream is closed).
            def sink(chunk: bytes) -> bool:
                if feed is not None:
                    chunk = feed(chunk)
                if chunk:
                    write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                return transport.get_write_buffer_size() or transport.is_closing()

            await pump(sink, writer.drain, idle_s)
        else:
            await _copy(reply, idle_s, feed, writer)
        rest = masking.flush()
        if rest:
            writer.write(b"%x\r\n%s\r\n" % (len(rest), rest))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
    except Exception as e:  # upstream broke off, or mitmproxy (the client) went away
        logger.info("keymux: stream cut short: %s", type(e).__name__)
        return False
    finally:
        if watch is not None:
            watch(None)
        reply.close()


async def _copy(reply, idle_s: float | None, feed, writer: asyncio.StreamWriter) -> None:
    """A reply without ``pump`` (aiohttp's): read chunk by chunk and write each."""
    write, transport = writer.write, writer.transport
    # Each read is everything aiohttp holds by then (readany), so chunks that arrived
    # together go out as one write; none waits for another.
    async for chunk in reply.chunks(idle_s):
        if feed is not None:
            chunk = feed(chunk)
        if chunk:
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            # Wait only when the socket did not take it all (or mitmproxy went away:
            # drain raises, the upstream stream is closed): a drain per chunk cost ~1 µs.
            if transport.get_write_buffer_size() or transport.is_closing():
                await writer.drain()
