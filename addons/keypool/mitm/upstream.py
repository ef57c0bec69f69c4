"""keymux's own HTTP client for upstream attempts (aiohttp, one pooled session).

keymux sends every attempt itself, so that a 429, a 5xx, a reset or a timeout can be
re-issued on another key before anything reaches the client, and so that connections to a
provider are reused across client connections (mitmproxy reuses them only within one).
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from yarl import URL

from ..reissue import UpstreamError
from ..ticket import Plan

# Hop-by-hop and framing headers: aiohttp (towards the upstream) and mitmproxy (towards
# the client) write their own.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "host", "content-length", "content-encoding",
})


class AiohttpReply:
    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        # aiohttp decompresses, so encoding and length no longer describe the body.
        self.fields = [(k, v) for k, v in resp.raw_headers
                       if k.decode("latin-1").lower() not in HOP_BY_HOP]

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(_describe(e)) from None

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

    async def send(self, plan: Plan, method: str,
                   fields: tuple[tuple[bytes, bytes], ...]) -> AiohttpReply:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in plan.rewrite_fields(fields)
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        try:
            resp = await self._open().request(
                # encoded=True: the canonical URL goes out byte for byte (yarl would otherwise
                # re-normalise it, e.g. decode %2F in the query).
                method, URL(plan.url, encoded=True), headers=headers, data=plan.ticket.body, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(_describe(e)) from None
        return AiohttpReply(resp)

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
