"""Hostile answers of the mock upstream (behaviour field ``hostile``), for the fault tests.

    echo          a 200 (or an SSE stream) that repeats the key it was sent: in a header, the
                  body, and, streamed, split across two HTTP chunks
    deep_usage    a 200 whose "usage" is nested 100,000 deep (or an SSE event that is)
    huge:MB       a 200 of MB megabytes of JSON, written in 64 KB pieces (never held whole)
    gzip_bomb:MB  a 200 with content-encoding gzip that inflates to MB megabytes of zeros
"""
from __future__ import annotations

import asyncio
import functools
import json
import zlib

from . import mock_http as H

MODES = ("echo", "deep_usage", "huge", "gzip_bomb")
DEEP = 100_000


def check(spec: str) -> None:
    mode, _, arg = spec.partition(":")
    if mode not in MODES:
        raise ValueError(f"hostile must be one of {', '.join(MODES)} (huge and gzip_bomb take :MB)")
    if mode in ("huge", "gzip_bomb") and not (arg.isdigit() and int(arg) > 0):
        raise ValueError(f"hostile: {mode} needs a size, e.g. {mode}:64")


async def answer(spec: str, key: str, stream: bool, writer: asyncio.StreamWriter,
                 keep: bool) -> bool:
    """Write the hostile answer; whether the connection may be kept."""
    mode, _, arg = spec.partition(":")
    if mode == "huge":
        await _huge(int(arg), writer, keep)
    elif mode == "gzip_bomb":
        bomb = _bomb(int(arg))
        writer.write(H.head(200, "application/json", {"content-encoding": "gzip"}, not keep,
                            len(bomb)) + bomb)
    elif stream:
        await _events(*((_echo_events(key), {"x-echo-key": key}) if mode == "echo"
                        else (_deep_events(), None)), writer)
    else:
        body = _echo_body(key) if mode == "echo" else _deep_body()
        extra = {"x-echo-key": key} if mode == "echo" else None
        writer.write(H.head(200, "application/json", extra, not keep, len(body)) + body)
    await writer.drain()
    return keep


def _echo_body(key: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-echo", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"your key is {key}"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode()


def _deep_body() -> bytes:
    return b'{"id": "chatcmpl-deep", "choices": [], "usage": ' + b"[" * DEEP + b"]" * DEEP + b"}"


def _chunk(content: str) -> bytes:
    return b"data: " + json.dumps({"id": "chatcmpl-s", "object": "chat.completion.chunk",
                                   "choices": [{"index": 0, "delta": {"content": content}}]}
                                  ).encode() + b"\n\n"


def _echo_events(key: str) -> list[bytes]:
    event = _chunk(f"key={key}")
    cut = event.index(key.encode()) + len(key) // 2  # the key straddles two HTTP chunks
    return [_chunk("hello"), event[:cut], event[cut:], b"data: [DONE]\n\n"]


def _deep_events() -> list[bytes]:
    return [_chunk("hello"), b'data: {"usage": ' + b"[" * DEEP + b"]" * DEEP + b"}\n\n",
            _chunk(" world"), b"data: [DONE]\n\n"]


async def _events(events: list[bytes], extra: dict | None, writer: asyncio.StreamWriter) -> None:
    writer.write(H.head(200, "text/event-stream; charset=utf-8", extra, False, None))
    for ev in events:
        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
        await writer.drain()
        await asyncio.sleep(0.02)  # separate TCP segments, so the split is real
    writer.write(b"0\r\n\r\n")


async def _huge(mb: int, writer: asyncio.StreamWriter, keep: bool) -> None:
    piece = b" " * (64 * 1024)
    body_head = b'{"pad": "'
    total = mb * (1 << 20)
    writer.write(H.head(200, "application/json", None, not keep, total) + body_head)
    left = total - len(body_head) - 2
    while left > 0:
        n = min(left, len(piece))
        writer.write(piece[:n])
        left -= n
        await writer.drain()  # raises once the reader hung up: the test is over
    writer.write(b'"}')


@functools.lru_cache(maxsize=4)
def _bomb(mb: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    block = b"\0" * (1 << 20)
    return b"".join(z.compress(block) for _ in range(mb)) + z.flush()
