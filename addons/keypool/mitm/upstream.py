"""keymux's own HTTP client for upstream attempts (aiohttp, one pooled session).

keymux sends every attempt itself, so that a 429, a 5xx, a reset or a timeout can be
re-issued on another key before anything reaches the client, and so that connections to a
provider are reused across client connections (mitmproxy reuses them only within one).

A whole (non-streamed) body is read only up to a cap (``routing.max_response_mb``; error
bodies, which are only classified and relayed, up to ``ERROR_BODY_CAP``). aiohttp inflates
gzip/deflate/br in bounded steps, and the cap counts inflated bytes, so a compression bomb
stops there too. A body over its cap is an attempt without an answer (``UpstreamError``):
the key is judged as for a broken-off body, and the client gets 502 if no other key answers.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp

from ..reissue import UpstreamError
from ..ticket import Plan

# Hop-by-hop and framing headers: aiohttp (towards the upstream) and mitmproxy (towards
# the client) write their own.
ERROR_BODY_CAP = 1 << 20  # an error message is never this long
DEFAULT_CAP = 64 << 20

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "host", "content-length", "content-encoding",
})


class AiohttpReply:
    def __init__(self, resp: aiohttp.ClientResponse, cap: int = DEFAULT_CAP):
        self._resp = resp
        self.cap = cap if resp.status < 400 else min(cap, ERROR_BODY_CAP)
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        # aiohttp decompresses, so encoding and length no longer describe the body.
        self.fields = [(k, v) for k, v in resp.raw_headers
                       if k.decode("latin-1").lower() not in HOP_BY_HOP]

    async def read(self) -> bytes:
        """The whole body, inflated, or UpstreamError past ``cap`` bytes."""
        try:
            declared = self._resp.content_length  # inflated, a body is rarely smaller
        except ValueError:
            declared = None
        if declared is not None and declared > self.cap:
            raise self._too_big()
        body = bytearray()
        content = self._resp.content
        try:
            while data := await content.readany():
                body += data
                if len(body) > self.cap:
                    raise self._too_big()
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(_describe(e)) from None
        return bytes(body)

    def _too_big(self) -> UpstreamError:
        self._resp.close()  # drop the connection rather than drain the rest
        return UpstreamError(f"answer over {self.cap / (1 << 20):g} MB")

    async def chunks(self, idle_s: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; a stream silent for ``idle_s`` is cut off (TimeoutError)."""
        content = self._resp.content
        while True:
            async with asyncio.timeout(idle_s):
                data = await content.readany()
            if not data:
                return
            yield data

    def close(self) -> None:
        self._resp.close()


class Upstream:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def send(self, plan: Plan, method: str, fields: tuple[tuple[bytes, bytes], ...],
                   cap: int = DEFAULT_CAP) -> AiohttpReply:
        """Send one attempt; ``cap``: the most bytes of its body ``read`` accepts."""
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in plan.rewrite_fields(fields)
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        try:
            resp = await self._open().request(
                method, plan.url, headers=headers, data=plan.ticket.body, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(_describe(e)) from None
        return AiohttpReply(resp, cap)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _describe(e: BaseException) -> str:
    """Why an attempt got no answer, in words that carry no URL query or header."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or type(e.os_error).__name__}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "upstream closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "upstream broke off the body"
    return type(e).__name__
