"""Wire-level HTTP/1.1 helpers of the mock upstream: request head and body parsing, response heads.

Deliberately minimal and allocation-light (it sits on the benchmark hot path); the mock
only has to understand what real HTTP clients and proxies send it.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from http import HTTPStatus

from . import mock_responses as R

MAX_BODY = 16 * 1024 * 1024
REASONS = {s.value: s.phrase for s in HTTPStatus} | {529: "Overloaded"}


class BadRequest(Exception):
    """The request cannot be parsed; answer ``status`` and close the connection."""

    def __init__(self, status: int):
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]], dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400)
    pairs: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400)
        name, value = name.strip().lower(), value.strip()
        pairs.append((name, value))
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return parts[0], parts[1], parts[2], pairs, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts, total = [], 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400) from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise BadRequest(413)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    cl = headers.get("content-length")
    if not cl:
        return b""
    try:
        n = int(cl)
    except ValueError:
        raise BadRequest(400) from None
    if n < 0:
        raise BadRequest(400)
    if n > MAX_BODY:
        raise BadRequest(413)
    return await reader.readexactly(n) if n else b""


def head(status: int, ctype: str, extra: dict | None, close: bool, length: int | None,
         chunked: bool = True) -> bytes:
    """Status line and headers; ``length=None`` starts a stream (chunked unless HTTP/1.0)."""
    out = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\ncontent-type: {ctype}\r\n"]
    if length is not None:
        out.append(f"content-length: {length}\r\n")
    else:
        out.append("cache-control: no-cache\r\ntransfer-encoding: chunked\r\n" if chunked else
                   "cache-control: no-cache\r\n")
    if extra:
        out.extend(f"{k}: {v}\r\n" for k, v in extra.items())
    if close:
        out.append("connection: close\r\n")
    out.append("\r\n")
    return "".join(out).encode("latin-1")


def json_response(status: int, payload: bytes, extra: dict | None, close: bool) -> bytes:
    return head(status, "application/json", extra, close, len(payload)) + payload


def error_response(status: int, message: str) -> bytes:
    return json_response(status, R.dumps(R.error_body(status, message=message)), None, True)


def rst(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST (what a crashing upstream or a reset looks like)."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()

