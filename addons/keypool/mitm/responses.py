"""Responses for the client, built directly.

``Response.make`` re-encodes the body and sets headers one by one, which costs more than
the rest of a hook; keymux's bodies are final and its header fields already bytes. Even
``Response(...)`` type-checks each of its eight fields (mitmproxy's ``__post_init__``
under ``__debug__``: ~20 µs, most of what building an answer costs); keymux's types are
fixed here, so the message data is filled in directly (tests/addon/test_responses.py pins
that it equals what ``Response(...)`` builds).
"""
from __future__ import annotations

import time

from mitmproxy import http

from ..answers import Answer, reason as reason_phrase


def response(status: int, reason: str, body: bytes,
             fields: list[tuple[bytes, bytes]]) -> http.Response:
    headers = http.Headers([*fields, (b"content-length", str(len(body)).encode())])
    now = time.time()
    data = object.__new__(http.ResponseData)
    data.__dict__.update(http_version=b"HTTP/1.1", status_code=status,
                         reason=(reason or reason_phrase(status)).encode(), headers=headers,
                         content=body, trailers=None, timestamp_start=now, timestamp_end=now)
    resp = object.__new__(http.Response)
    resp.data = data
    return resp


def from_answer(answer: Answer) -> http.Response:
    """The gateway's own answer (its headers are a str dict)."""
    fields = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
    return response(answer.status, answer.reason, answer.body, fields)
