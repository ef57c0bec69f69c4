"""Request-log rows for what the gateway refused itself (401, 403, 413, 429 over rpm, ...).

Only /v1/... requests get a row (never /health, /metrics, /_keymux/*). A refused request
costs one small dict appended to the Recorder; the writer thread writes it. A flood (an
attacker's 401s) is bounded: at most ``per_second`` refusal rows a second, the rest only
counted (``dropped``, and the metric ``keymux_request_log_refusals_dropped_total``), so
nobody can fill the disk by being refused.

The row never holds what the client presented: no token, no body, no raw path (a path
class from a fixed set stands for it). The reason is keymux's own message, which holds
no secret, cut to ``MAX_REASON`` characters.
"""
from __future__ import annotations

import json

from .answers import Answer
from .ticket import MODEL_PATHS

PER_SECOND = 50      # refusal rows recorded per second, at most
MAX_REASON = 300     # characters of a refusal's message kept
KNOWN_PATHS = MODEL_PATHS | {"/v1/models"}


class Seen:
    """What ``admission.admit`` had learnt when it answered: filled as it goes."""

    __slots__ = ("path", "client", "model", "provider")

    def __init__(self) -> None:
        self.path: str | None = None      # the canonical path, once known
        self.client: str | None = None    # the client's name, once identified
        self.model: str | None = None     # the body's model, once read and valid
        self.provider: str | None = None  # once routed


def path_class(path: str) -> str:
    """A bounded stand-in for a client's path: a known endpoint, or a class of them."""
    path = path.partition("?")[0]
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "/v1/*"


def logged(path: str) -> bool:
    """Whether a refusal of this path gets a row: API requests only."""
    return path.startswith("/v1/")


def error_of(answer: Answer) -> tuple[str | None, str | None]:
    """The answer's error code (x-keymux-error) and message, read from keymux's own JSON."""
    code = answer.headers.get("x-keymux-error")
    try:
        message = json.loads(answer.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str):
        message = message[:MAX_REASON]
    else:
        message = None
    return code, message


class RefusalLimit:
    """At most ``per_second`` rows per wall-clock second; the rest counted as dropped."""

    __slots__ = ("per_second", "_second", "_count", "dropped")

    def __init__(self, per_second: int = PER_SECOND):
        self.per_second = per_second
        self._second = -1
        self._count = 0
        self.dropped = 0

    def allow(self, now: float) -> bool:
        second = int(now)
        if second != self._second:
            self._second, self._count = second, 0
        if self._count >= self.per_second:
            self.dropped += 1
            return False
        self._count += 1
        return True


def row(now: float, answer: Answer, seen: Seen, latency_s: float | None = None) -> dict:
    code, message = error_of(answer)
    return {"ts": now, "client": seen.client, "key": None, "provider": seen.provider,
            "model": seen.model, "status": answer.status, "attempts": [],
            "latency_s": latency_s, "error_code": code, "error": message,
            "path": path_class(seen.path or "")}
