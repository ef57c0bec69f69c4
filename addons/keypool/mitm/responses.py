"""Responses for the client, built directly.

``Response.make`` re-encodes the body and sets headers one by one, which costs more than
the rest of a hook; keymux's bodies are final and its header fields already bytes.
"""
from __future__ import annotations

import time

from mitmproxy import http

from ..answers import Answer, reason as reason_phrase


def response(status: int, reason: str, body: bytes,
             fields: list[tuple[bytes, bytes]]) -> http.Response:
    headers = http.Headers([*fields, (b"content-length", str(len(body)).encode())])
    now = time.time()
    return http.Response(b"HTTP/1.1", status, (reason or reason_phrase(status)).encode(),
                         headers, body, None, now, now)


def from_answer(answer: Answer) -> http.Response:
    """The gateway's own answer (its headers are a str dict)."""
    fields = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
    return response(answer.status, answer.reason, answer.body, fields)
