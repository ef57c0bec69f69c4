"""Upstream answer -> what happens to the key and to the request.

Pure: no mitmproxy, no clock reads. Time comes in as ``now`` (Unix wall time, because
upstreams speak in HTTP dates and RFC 3339 timestamps), randomness as a ``random.Random``.
Nothing here raises on a malformed answer: an upstream's garbage must not break the gateway.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from .config import Cooldown

Headers = Mapping[str, str]  # names in lower case

FAILURE_CLASSES = ("rate_limited", "quota", "auth", "server", "client_error")
MAX_DELAY_S = 86_400.0      # no upstream hint parks a key for more than a day
_SCAN_BYTES = 64 * 1024     # error bodies are small; never scan a huge one whole
_JSON_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str        # ok | rate_limited | quota | auth | server | client_error
    retry: bool         # re-issue on another key
    cooldown_s: float   # 0.0 when the key is not cooled
    scope: str          # "key" | "model" | "none"
    escalate: bool = False
    hint: str = ""      # where the cooldown's length came from (a header), for the log


@dataclass(frozen=True, slots=True)
class Budget:
    """What the upstream says is left, learned from successful answers."""
    remaining_requests: int | None
    requests_reset_s: float | None
    remaining_tokens: int | None
    tokens_reset_s: float | None


OK = Verdict("ok", False, 0.0, "none")
CLIENT_ERROR = Verdict("client_error", False, 0.0, "none")  # the request's fault: same on any key

# Machine codes are trusted anywhere in a 429 body; OpenAI puts them in "code" or "type".
_QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached", "billing_not_active")
_QUOTA_PHRASES = ("exceeded your current quota", "credit balance is too low")
_ANTHROPIC_DRAINED = "your credit balance is too low"


# -- classification ----------------------------------------------------------------------

def classify(status: int | None, headers: Headers, body: bytes | None, *,
             cooldown: Cooldown, failures_in_row: int = 0, now: float,
             rng: random.Random | None = None) -> Verdict:
    """One upstream answer (``status`` None: no answer at all) -> a Verdict."""
    if status is None or not 100 <= status <= 599:  # no answer, or not HTTP: upstream's fault
        return _server(cooldown, failures_in_row, rng)
    if status < 400:
        return OK
    if status == 429:
        return _too_many(headers, body, cooldown, now)
    if status == 402 or (status == 400 and _anthropic_drained(body)):
        return _quota(cooldown)
    if status in (401, 403):
        return Verdict("auth", True, float(cooldown.auth_error_s), "key")
    if status >= 500 or status == 408:  # 408: the upstream gave up waiting, not our request
        return _server(cooldown, failures_in_row, rng)
    return CLIENT_ERROR


def _quota(cooldown: Cooldown) -> Verdict:
    # A drained account does not come back in seconds: park it like a bad key.
    return Verdict("quota", True, float(cooldown.auth_error_s), "key")


def _too_many(headers: Headers, body: bytes | None, cooldown: Cooldown, now: float) -> Verdict:
    wait, hint = retry_hint(headers, body, now)
    text = _text(body)
    # Gemini says "exceeded your current quota" on its per-minute limits too, with a
    # RetryInfo: when the upstream names a time the key comes back, only codes mean quota.
    if any(c in text for c in _QUOTA_CODES) or (
            wait is None and any(p in text for p in _QUOTA_PHRASES)):
        return _quota(cooldown)
    seconds = float(cooldown.rate_limited_s) if wait is None else wait
    seconds = min(seconds, float(cooldown.max_s))  # no hint, however absurd, parks it longer
    return Verdict("rate_limited", True, seconds, "model", hint=hint)  # other models may still have room


def _anthropic_drained(body: bytes | None) -> bool:
    # Anthropic answers a drained account with a 400. Only the start of the message counts:
    # a 400 may echo the client's input, and a client must not be able to park a key.
    doc = _json(body)
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return isinstance(message, str) and message.strip().lower().startswith(_ANTHROPIC_DRAINED)


def _server(cooldown: Cooldown, failures_in_row: int, rng: random.Random | None) -> Verdict:
    n = min(max(int(failures_in_row), 0), 64)  # the cap is hit long before; bounds 2**n
    base = min(float(cooldown.max_s), cooldown.server_error_s * 2.0 ** n)
    # Jitter spreads the keys that failed together so they do not all return at once.
    factor = rng.uniform(0.9, 1.1) if rng is not None else 1.0
    return Verdict("server", True, base * factor, "key", escalate=True)


# -- retry hints -------------------------------------------------------------------------

def retry_after(headers: Headers, body: bytes | None, now: float) -> float | None:
    """Seconds until the upstream says to retry, from the first usable hint; None if none."""
    return retry_hint(headers, body, now)[0]


def retry_hint(headers: Headers, body: bytes | None, now: float) -> tuple[float | None, str]:
    """``retry_after`` and the name of the hint it came from ("" when none)."""
    for source, name in _HINTS:
        wait = source(headers, body, now)
        if wait is not None:
            return _clamp(wait), name
    return None, ""


def _retry_after_ms(headers: Headers, body: bytes | None, now: float) -> float | None:
    ms = _number(_header(headers, "retry-after-ms"))
    return None if ms is None else ms / 1000.0


def _retry_after(headers: Headers, body: bytes | None, now: float) -> float | None:
    value = _header(headers, "retry-after")
    seconds = _number(value)
    if seconds is not None or value is None:
        return seconds
    when = _when(parsedate_to_datetime, value)
    return None if when is None else when - now


def _openai_reset(headers: Headers, body: bytes | None, now: float) -> float | None:
    requests = _duration(headers, "x-ratelimit-reset-requests")
    tokens = _duration(headers, "x-ratelimit-reset-tokens")
    # The exhausted limit is the one to wait for; unknown: wait for both.
    if requests is not None and _header(headers, "x-ratelimit-remaining-requests") == "0":
        return requests
    if tokens is not None and _header(headers, "x-ratelimit-remaining-tokens") == "0":
        return tokens
    present = [x for x in (requests, tokens) if x is not None]
    return max(present) if present else None


def _anthropic_reset(headers: Headers, body: bytes | None, now: float) -> float | None:
    names = ("requests", "tokens", "input-tokens", "output-tokens")
    times = [_when(datetime.fromisoformat, _header(headers, f"anthropic-ratelimit-{n}-reset"))
             for n in names]
    times = [t for t in times if t is not None]
    return max(times) - now if times else None


def _gemini_delay(headers: Headers, body: bytes | None, now: float) -> float | None:
    doc = _json(body)
    for item in doc if isinstance(doc, list) else [doc]:  # streamed answers come in a list
        error = item.get("error") if isinstance(item, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        for d in details if isinstance(details, list) else ():
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                wait = parse_duration(d.get("retryDelay"))
                if wait is not None:
                    return wait
    return None


_HINTS = ((_retry_after_ms, "retry-after-ms"), (_retry_after, "Retry-After"),
          (_openai_reset, "x-ratelimit-reset-*"), (_anthropic_reset, "anthropic-ratelimit-*-reset"),
          (_gemini_delay, "RetryInfo"))


# -- budget ------------------------------------------------------------------------------

def budget(headers: Headers, now: float) -> Budget | None:
    """What the upstream says is left (OpenAI or Anthropic headers); None if it says nothing."""
    openai = (_count(headers, "x-ratelimit-remaining-requests"),
              _duration(headers, "x-ratelimit-reset-requests"),
              _count(headers, "x-ratelimit-remaining-tokens"),
              _duration(headers, "x-ratelimit-reset-tokens"))
    anthropic = (_count(headers, "anthropic-ratelimit-requests-remaining"),
                 _until(headers, "anthropic-ratelimit-requests-reset", now),
                 _count(headers, "anthropic-ratelimit-tokens-remaining"),
                 _until(headers, "anthropic-ratelimit-tokens-reset", now))
    for values in (openai, anthropic):
        if any(v is not None for v in values):
            return Budget(*values)
    return None


# -- parsing -----------------------------------------------------------------------------

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"   # strict: float() would also take "nan", "1_0", "1e9"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"  # ms before m, or "20ms" would read as 20m + junk
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_BARE = re.compile(rf"[+-]?{_NUM}\Z")
_GO = re.compile(rf"[+-]?(?:{_NUM}{_UNIT})+\Z")
_PART = re.compile(rf"({_NUM})({_UNIT})")
_DIGITS = re.compile(r"\d{1,18}\Z")


def parse_duration(text: str) -> float | None:
    """Go duration ("1s", "6m0s", "20ms", "1h2m3.5s") or a bare number of seconds."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    text = text.strip()
    if _BARE.match(text):
        return float(text)
    if not _GO.match(text):
        return None
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    return -seconds if text.startswith("-") else seconds


def _header(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if isinstance(value, str) else None


def _number(text: str | None) -> float | None:
    # Negative or non-numeric delays are invalid, not "now": the next hint gets its turn.
    return float(text) if text is not None and re.fullmatch(_NUM, text) else None


def _count(headers: Headers, name: str) -> int | None:
    value = _header(headers, name)
    return int(value) if value is not None and _DIGITS.match(value) else None


def _duration(headers: Headers, name: str) -> float | None:
    seconds = parse_duration(_header(headers, name))
    return None if seconds is None else _clamp(seconds)


def _until(headers: Headers, name: str, now: float) -> float | None:
    when = _when(datetime.fromisoformat, _header(headers, name))
    return None if when is None else _clamp(when - now)


def _when(parse: Any, text: str | None) -> float | None:
    """A date string -> Unix time, by ``parse``; None if it is not one."""
    if text is None or len(text) > 64:
        return None
    try:
        dt = parse(text)
        # A date without a zone is UTC: that is what HTTP and these APIs mean.
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_DELAY_S)


def _text(body: bytes | None) -> str:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return ""
    return bytes(body[:_SCAN_BYTES]).decode("utf-8", "replace").lower()


def _json(body: bytes | None) -> Any:
    if not isinstance(body, (bytes, bytearray, memoryview)) or not 0 < len(body) <= _JSON_BYTES:
        return None
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):  # includes UnicodeDecodeError; truncated, HTML, ...
        return None
