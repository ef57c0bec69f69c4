"""The mock provider's HTTP/1.1 server: routes, keys, behaviours, the control API.

Run by :class:`keypool.demo.mock_upstream.MockUpstream` (in a thread) or its CLI; see that
module for the protocol it speaks and the order of its checks.
"""
from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import time
from typing import Callable
from urllib.parse import parse_qs

from keypool.redact import mask

from . import mock_hostile as hostile
from . import mock_http as H
from . import mock_responses as R
from .mock_models import ModelCatalog
from .mock_behaviour import RESET, MockState


# (path suffix, method, endpoint); first match wins, so longer suffixes come first.
_ROUTES = (
    ("/chat/completions", "POST", "chat"),
    ("/messages/count_tokens", "POST", "count_tokens"),
    ("/messages", "POST", "messages"),
    ("/completions", "POST", "completions"),
    ("/embeddings", "POST", "embeddings"),
    ("/responses", "POST", "responses"),
    ("/models", "GET", "models"),
)
_ANTHROPIC_ENDPOINTS = {"messages", "count_tokens"}
_NONSTREAM = {"chat": R.chat_completion, "completions": R.text_completion, "responses": R.response,
              "messages": R.anthropic_message}
_STREAM = {"chat": R.chat_completion_stream, "completions": R.text_completion_stream,
           "responses": R.response_stream, "messages": R.anthropic_stream}


def _route(method: str, path: str) -> str | None:
    path = path.rstrip("/")
    for suffix, m, name in _ROUTES:
        if path.endswith(suffix):
            return name if m == method else None
    return None


def _key_of(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
        if key:
            return key
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or None


def _with_echo(places: tuple, key: str, endpoint: str, body: object, payload: bytes | list[bytes] | None,
               extra: dict | None) -> tuple[bytes | list[bytes] | None, dict | None]:
    """A hostile upstream: the raw key it was sent, back in the places ``places`` names."""
    if "body" in places and isinstance(payload, bytes):
        try:
            payload = R.dumps(R.echo_in_body(json.loads(payload), key))
        except (ValueError, AttributeError):  # a scripted text body: append it raw
            payload += b" " + key.encode()
    if "sse" in places and isinstance(payload, list):
        i, ev = R.echo_event(endpoint, body if isinstance(body, dict) else {}, key)
        payload = payload[:i] + [ev] + payload[i:]
    if "header" in places:
        extra = {**(extra or {}), "x-mock-echo": key}
    return payload, extra


class Server:
    """The asyncio HTTP/1.1 server; lives on one event loop."""

    def __init__(self, state: MockState, host: str, port: int, log: Callable[[dict], None] | None = None,
                 ssl: "ssl_module.SSLContext | None" = None):
        self.state, self.host, self.port, self.log = state, host, port, log
        self.ssl = ssl  # a server context: the mock speaks HTTPS (tests of upstream TLS)
        self.catalog = ModelCatalog()  # what GET .../models answers (per key, see set_models)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._rid = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, self.host, self.port, limit=256 * 1024,
                                                  backlog=1024, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ connection loop

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(H.error_response(431, "Request header fields too large."))
                    return
                head = head.lstrip(b"\r\n")
                if not head:
                    continue
                try:
                    method, target, version, pairs, headers = H.parse_head(head)
                    conn = headers.get("connection", "").lower()
                    keep = "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
                    if headers.get("expect", "").lower() == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body = await H.read_body(reader, headers)
                except H.BadRequest as e:
                    writer.write(H.error_response(e.status, "Malformed HTTP request."))
                    return
                if not await self._handle(method, target, version, pairs, headers, body, keep, writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    # ------------------------------------------------------------ one request

    async def _handle(self, method: str, target: str, version: str, pairs: list, headers: dict,
                      raw: bytes, keep: bool, writer: asyncio.StreamWriter) -> bool:
        path = target.partition("?")[0]
        if path.startswith("/_mock/"):
            status, obj = self._control(method, target, raw)
            writer.write(H.json_response(status, R.dumps(obj), None, not keep))
            await writer.drain()
            return keep

        endpoint = _route(method, path)
        key = _key_of(headers)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = False  # marks an unparsable body
        anthropic = endpoint in _ANTHROPIC_ENDPOINTS or (endpoint == "models" and "anthropic-version" in headers)
        rec = {"time": time.time(), "key": key, "method": method, "path": target, "headers": headers,
               "header_list": pairs, "body": body if body is not False else None, "status": 0}
        b = None
        extra: dict | None = None
        payload: bytes | list[bytes] | None = None
        ctype = "application/json"

        if endpoint is None:
            status, payload = 404, R.dumps(R.error_body(404, anthropic=anthropic, message=(
                f"Invalid URL ({method} {path})")))
        elif key is None:
            status, payload = 401, R.dumps(R.error_body(401, anthropic=anthropic, message=(
                "x-api-key header is required" if anthropic else
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")))
        else:
            d = self.state.decide(key, time.monotonic())
            b, status = d.behaviour, d.status
            if status == RESET:
                pass
            elif status != 200:
                extra = d.error_headers
                if d.scripted and isinstance(b.body, str):
                    payload, ctype = b.body.encode(), "text/plain; charset=utf-8"
                else:
                    err = b.body if d.scripted and b.body is not None else R.error_body(
                        status, anthropic=anthropic, quota=d.scripted and b.quota, masked_key=mask(key))
                    payload = R.dumps(err)
            elif body is False or (endpoint != "models" and not isinstance(body, dict)):
                status, payload = 400, R.dumps(R.error_body(400, anthropic=anthropic, message=(
                    "We could not parse the JSON body of your request.")))
            elif anthropic and endpoint != "models" and "anthropic-version" not in headers:
                status, payload = 400, R.dumps(R.error_body(400, anthropic=True, message=(
                    "anthropic-version: header is required")))
            else:
                extra = d.ok_headers
                if endpoint == "models":
                    status, obj = self.catalog.answer(key, anthropic, target)
                    payload = R.dumps(obj)
                elif endpoint == "embeddings":
                    payload = R.dumps(R.embeddings(body))
                elif endpoint == "count_tokens":
                    payload = R.dumps(R.count_tokens(body))
                elif body.get("stream") is True:
                    payload, ctype = _STREAM[endpoint](body, b.chunks), "text/event-stream; charset=utf-8"
                else:
                    payload = R.dumps(_NONSTREAM[endpoint](body, b.chunks))

        if b is not None and b.echo:
            payload, extra = _with_echo(b.echo, key, endpoint, body, payload, extra)  # type: ignore[arg-type]
        rec["status"] = status
        self.state.record(rec)
        if self.log is not None:
            self.log(rec)
        if b is not None and b.delay_ms:
            await asyncio.sleep(b.delay_ms / 1000)
        if status == RESET:
            H.rst(writer)
            return False
        if status == 200 and b is not None and b.hostile and endpoint != "models":
            stream = isinstance(body, dict) and body.get("stream") is True
            return await hostile.answer(b.hostile, key, stream, writer, keep)

        self._rid += 1
        rid = {"request-id" if anthropic else "x-request-id": f"req_mock{self._rid:08d}"}
        extra = rid | extra if extra else rid
        if isinstance(payload, bytes):
            writer.write(H.head(status, ctype, extra, not keep, len(payload)) + payload)
            await writer.drain()
            return keep

        # SSE: one HTTP chunk per event, flushed, with an optional delay in between.
        events = payload or []
        delay_ms = b.chunk_delay_ms if b is not None else 0
        if "x-mock-chunk-delay-ms" in headers:
            try:
                delay_ms = float(headers["x-mock-chunk-delay-ms"])
            except ValueError:
                pass
        chunked = version != "HTTP/1.0"
        keep = keep and chunked
        writer.write(H.head(status, ctype, extra, not keep, None, chunked))
        for i, ev in enumerate(events):
            if i and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            writer.write(b"%x\r\n%s\r\n" % (len(ev), ev) if chunked else ev)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return keep

    # ------------------------------------------------------------ control API

    def _control(self, method: str, target: str, raw: bytes) -> tuple[int, dict]:
        path, _, query = target.partition("?")
        if method == "GET" and path == "/_mock/stats":
            return 200, self.state.stats()
        if method == "GET" and path == "/_mock/requests":
            try:
                limit = int(parse_qs(query).get("limit", ["100"])[0])
            except ValueError:
                return 400, {"error": "limit must be an integer"}
            return 200, {"requests": self.state.masked_requests(limit)}
        if method == "GET" and path == "/_mock/health":
            return 200, {"ok": True}
        if method == "POST" and path == "/_mock/reset":
            self.state.reset()
            self.catalog.reset()
            return 200, {"ok": True}
        if method == "POST" and path == "/_mock/behavior":
            try:
                spec = json.loads(raw or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("body must be a JSON object")
                key = spec.pop("key", None)
                if key is not None and not isinstance(key, str):
                    raise ValueError("key must be a string or null")
                self.state.set_behavior(key, **spec)
            except (ValueError, TypeError) as e:
                return 400, {"error": str(e)}
            return 200, {"ok": True}
        return 404, {"error": f"unknown control endpoint {method} {path}"}


# ---------------------------------------------------------------- in-process API
