"""keymux's own HTTP client for upstream attempts (aiohttp, one pooled session).

keymux sends every attempt itself, so that a 429, a 5xx, a reset or a timeout can be
re-issued on another key before anything reaches the client, and so that connections to a
provider are reused across client connections (mitmproxy reuses them only within one).

A whole (non-streamed) body is read only up to a cap (``routing.max_response_mb``, or the
user's mitmproxy ``body_size_limit`` if smaller; error bodies, which are only classified and
relayed, up to ``ERROR_BODY_CAP``). aiohttp inflates gzip/deflate/br in bounded steps, and
the cap counts inflated bytes, so a compression bomb stops there too. A body over its cap is
an attempt without an answer (``UpstreamError``): the key is judged as for a broken-off
body, and the client gets 502 if no other key answers. A stream is cut past the user's
``body_size_limit`` (none by default).

mitmproxy's upstream options (TLS trust, client certificates, ...) and the upstream proxy
(environment or per provider) are applied through ``sendopts.SendOptions``; every reply
carries ``reply.conn``, a ``ConnInfo`` (``conncapture``). See docs/upstream.md.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import aiohttp
from mitmproxy import exceptions
from mitmproxy.utils import human
from yarl import URL

from ..reissue import UpstreamError
from ..ticket import Plan
from . import conncapture, h1client, sendopts
from .conninfo import ConnInfo

logger = logging.getLogger("keymux")

# Hop-by-hop and framing headers: aiohttp (towards the upstream) and mitmproxy (towards
# the client) write their own.
ERROR_BODY_CAP = 1 << 20  # an error message is never this long
DEFAULT_CAP = 64 << 20

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "host", "content-length", "content-encoding",
})
_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)  # bytes.lower(): no decode to compare
_now = time.time


class AiohttpReply:
    def __init__(self, resp: aiohttp.ClientResponse, cap: int = DEFAULT_CAP,
                 conn: ConnInfo | None = None, stream_cap: int | None = None,
                 on_done=None):
        self._resp = resp
        self.cap = cap if resp.status < 400 else min(cap, ERROR_BODY_CAP)
        self.stream_cap = stream_cap  # the user's body_size_limit: a stream is cut past it
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        # aiohttp decompresses, so encoding and length no longer describe the body.
        self.fields = [(k, v) for k, v in resp.raw_headers
                       if k.lower() not in _HOP_BYTES]
        self.conn = conn or ConnInfo(("", 0))
        self._on_done = on_done  # once: the session's in-flight count

    def _done(self) -> None:
        if self.conn.timestamp_end is None:
            self.conn.timestamp_end = _now()
        if self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done()

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
        finally:
            self._done()
        return bytes(body)

    def _too_big(self) -> UpstreamError:
        self.close()  # drop the connection rather than drain the rest
        return UpstreamError(f"answer over {self.cap / (1 << 20):g} MB")

    async def chunks(self, idle_s: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; a stream silent for ``idle_s`` is cut off (TimeoutError),
        one past ``stream_cap`` bytes too (UpstreamError)."""
        content, left = self._resp.content, self.stream_cap
        idle = _Idle(idle_s) if idle_s is not None else None
        try:
            while True:
                if idle is None:
                    data = await content.readany()
                else:
                    idle.reading = idle.loop.time()
                    try:
                        data = await content.readany()
                    except asyncio.CancelledError:
                        idle.expired()  # TimeoutError if the idle limit cancelled the read
                        raise
                    idle.reading = None
                if not data:
                    return
                if left is not None:
                    if len(data) > left:  # up to the limit, then cut off
                        if left:
                            yield data[:left]
                        self.close()
                        raise UpstreamError(f"stream over body_size_limit ({self.stream_cap} bytes)")
                    left -= len(data)
                yield data
        finally:
            if idle is not None:
                idle.stop()
            self._done()

    def close(self) -> None:
        self._resp.close()
        self._done()


class _Idle:
    """The idle limit of one stream: each read may wait ``idle_s``, as with an
    ``asyncio.timeout`` per read, but with one timer for the whole stream that is moved
    only when it fires early (a read costs one clock reading, not a timer; ~8 µs less per
    chunk). It cancels the reading task only while a read waits, never a relay write."""

    __slots__ = ("loop", "idle_s", "task", "reading", "fired", "_handle", "_cancelling")

    def __init__(self, idle_s: float):
        self.loop = asyncio.get_running_loop()
        self.idle_s, self.task = idle_s, asyncio.current_task()
        self._cancelling = self.task.cancelling()
        self.reading: float | None = None  # when the read now waiting began
        self.fired = False
        self._handle = self.loop.call_later(idle_s, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if self.reading is not None and now >= self.reading + self.idle_s:
            self.fired = True
            self.task.cancel()
            return
        due = self.reading + self.idle_s if self.reading is not None else now + self.idle_s
        self._handle = self.loop.call_at(due, self._check)

    def expired(self) -> None:
        """In a read's CancelledError: TimeoutError if this limit (and nothing else)
        cancelled it, as ``asyncio.timeout`` does."""
        if self.fired and self.task.uncancel() <= self._cancelling:
            raise TimeoutError from None

    def stop(self) -> None:
        self._handle.cancel()


class Upstream:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.opts: sendopts.SendOptions | None = None  # built on first use or by configure
        self._busy: dict[aiohttp.ClientSession, int] = {}  # in-flight attempts per session
        self._retiring: set[aiohttp.ClientSession] = set()
        self.user_body_limit: int | None = None  # mitmproxy's body_size_limit, as the user set it
        self._own_limit: str | None = None       # the value keymux itself last wrote
        self._warned = False
        self.lean = True  # direct attempts through h1client; False: all through aiohttp
        self._pool = h1client.Pool()

    # -- mitmproxy's options -----------------------------------------------------------

    def configure(self, options, updated: set[str]) -> None:
        """Apply mitmproxy's options to the sender (called from the addon's configure).
        A changed TLS option builds a new session: attempts in flight finish on the old one,
        which is closed when its last one ends. OptionsError: mitmproxy rolls it back."""
        if "body_size_limit" in updated and options.body_size_limit != self._own_limit:
            try:  # the user's own value (keymux's write of the request limit comes back here)
                self.user_body_limit = human.parse_size(options.body_size_limit)
            except ValueError as e:
                raise exceptions.OptionsError(f"body_size_limit: {e}") from None
        if self.opts is None or updated & set(sendopts.APPLIED):
            try:
                opts = sendopts.SendOptions.of(options)
            except ValueError as e:
                raise exceptions.OptionsError(f"keymux: {e}") from None
            self.opts = opts
            self._retire()
            _logged.clear()  # a failure seen with the old options is worth telling again
            h1client._logged.clear()
        if "keymux_sender" in options:
            if options.keymux_sender not in ("lean", "aiohttp"):
                raise exceptions.OptionsError("keymux_sender must be lean or aiohttp")
            self.lean = options.keymux_sender == "lean"
        if not self._warned:
            self._warned = True
            for line in sendopts.warnings(options) + sendopts.env_proxy_problems():
                logger.warning("keymux: %s", line)

    def request_limit(self, max_body: int) -> str:
        """mitmproxy's body_size_limit for requests: ``max_body``, or the user's if smaller."""
        limit = max_body if self.user_body_limit is None else min(max_body, self.user_body_limit)
        self._own_limit = str(limit)
        return self._own_limit

    # -- sessions ----------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.opts is None:
                self.opts = sendopts.SendOptions()
            local = (self.opts.connect_addr, 0) if self.opts.connect_addr else None
            self._session = aiohttp.ClientSession(
                connector=conncapture.Connector(limit=0, ttl_dns_cache=300, local_addr=local),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
                request_class=conncapture.Request)
            self._busy[self._session] = 0
        return self._session

    def retire(self) -> None:
        """Close once idle: attempts in flight (a script reload leaves them running, and the
        gateway outlives the script) finish on their connections, new ones open a session."""
        self._retire()

    def _retire(self) -> None:
        """The next attempt opens a new session; the old one closes once idle."""
        self._pool.close()  # idle connections now, busy ones when their answer ends
        self._pool = h1client.Pool()
        old, self._session = self._session, None
        if old is not None and not old.closed:
            self._retiring.add(old)
            self._maybe_close(old)

    def _release(self, session: aiohttp.ClientSession) -> None:
        self._busy[session] -= 1
        if session in self._retiring:
            self._maybe_close(session)

    def _maybe_close(self, session: aiohttp.ClientSession) -> None:
        if self._busy.get(session, 0) <= 0:
            self._retiring.discard(session)
            self._busy.pop(session, None)
            try:
                asyncio.get_running_loop().create_task(session.close())
            except RuntimeError:  # no loop (configured before mitmproxy runs): nothing open
                pass

    # -- sending -----------------------------------------------------------------------

    async def send(self, plan: Plan, method: str, fields: tuple[tuple[bytes, bytes], ...],
                   cap: int = DEFAULT_CAP) -> AiohttpReply:
        """Send one attempt; ``cap``: the most bytes of its body ``read`` accepts."""
        if self.opts is None:
            self.opts = sendopts.SendOptions()
        route = self.opts.route(plan.provider)
        if self.lean and route.proxy is None:
            return await self._send_lean(plan, method, fields, cap, route)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in plan.rewrite_fields(fields)
                   if k.lower() not in _HOP_BYTES]
        session = self._open()
        p = plan.provider
        if route.auth_field is not None:  # a plain-http upstream through a proxy with a login
            headers.append(route.auth_field)
        info = ConnInfo((p.host, p.port), via=route.via, timestamp_start=_now())
        self._busy[session] += 1
        token = conncapture.attempt.set(info)
        try:
            resp = await session.request(
                # encoded=True: the canonical URL goes out byte for byte (yarl would otherwise
                # re-normalise it, e.g. decode %2F in the query).
                method, URL(plan.url, encoded=True), headers=headers, data=plan.ticket.body,
                allow_redirects=False, ssl=route.ssl, proxy=route.proxy,
                proxy_headers=route.proxy_headers,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        except (aiohttp.ClientError, OSError) as e:
            self._release(session)
            info.timestamp_end = _now()
            raise UpstreamError(_failed(p.host, route.via, e)) from None
        except BaseException:
            self._release(session)
            raise
        finally:
            conncapture.attempt.reset(token)
        conncapture.capture(info, resp)
        if self.user_body_limit is not None:
            cap = min(cap, self.user_body_limit)
        return AiohttpReply(resp, cap, info, self.user_body_limit,
                            lambda: self._release(session))

    async def _send_lean(self, plan: Plan, method: str, fields, cap: int,
                         route: sendopts.Route) -> h1client.H1Reply:
        p = plan.provider
        https, body = p.scheme == "https", plan.ticket.body or b""
        head = h1client.request_head(method, plan.url, p.host, p.port, 443 if https else 80,
                                     plan.rewrite_fields(fields), _HOP_BYTES, body)
        info = ConnInfo((p.host, p.port), timestamp_start=_now())
        limit = self.user_body_limit
        local = (self.opts.connect_addr, 0) if self.opts.connect_addr else None
        try:
            return await h1client.send(
                self._pool, p.host, p.port, route.ssl if https else None, local, head, body,
                info, head_only=method == "HEAD",
                cap=cap if limit is None else min(cap, limit), error_cap=ERROR_BODY_CAP,
                stream_cap=limit, hop=_HOP_BYTES)
        except UpstreamError:
            info.timestamp_end = _now()
            raise

    async def close(self) -> None:
        self._pool.close()
        for session in [*self._retiring, self._session]:
            if session is not None and not session.closed:
                await session.close()
        self._retiring.clear()


_logged: set[tuple[str, str]] = set()  # (host, why): each told once, not once per attempt


def _failed(host: str, via: str | None, e: BaseException) -> str:
    """Describe a failed connection; a TLS or proxy failure is also logged (once per host
    and reason), since it is a setup problem rather than a flaky key."""
    why = _describe(e)
    if isinstance(e, (aiohttp.ClientSSLError, aiohttp.ClientProxyConnectionError,
                      aiohttp.ClientHttpProxyError)) and (host, why) not in _logged and len(_logged) < 256:
        _logged.add((host, why))
        hint = ""
        if isinstance(e, aiohttp.ClientConnectorCertificateError):
            hint = (" (a private CA: --set ssl_verify_upstream_trusted_ca=FILE; a test server:"
                    " --set ssl_insecure=true)")
        logger.warning("keymux: upstream %s%s: %s%s", host, f" via {via}" if via else "", why, hint)
    return why


def _describe(e: BaseException) -> str:
    """Why an attempt got no answer, in words that carry no URL query, header or proxy
    credential."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        cert = e.certificate_error
        return ("TLS certificate verification failed: "
                + (getattr(cert, "verify_message", None) or getattr(cert, "reason", None)
                   or type(cert).__name__))
    if isinstance(e, aiohttp.ClientHttpProxyError):
        return f"the proxy answered {e.status}"
    if isinstance(e, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the proxy: {e.os_error.strerror or type(e.os_error).__name__}"
    if isinstance(e, aiohttp.ClientSSLError):
        return f"TLS failed: {getattr(e.os_error, 'reason', None) or type(e.os_error).__name__}"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or type(e.os_error).__name__}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "upstream closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "upstream broke off the body"
    return type(e).__name__
