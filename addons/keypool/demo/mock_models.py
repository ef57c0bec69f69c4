"""The mock's model lists: ``GET .../models`` in OpenAI's shape, and Anthropic's (with
``anthropic-version``: ``limit``/``after_id`` pages, ``has_more``, ``first_id``/``last_id``).

A test sets the list (or an error status) per key secret, or for every key; ``reset``
returns to the default, a realistic list. Thread-safe: the test thread sets, the mock's
loop reads.
"""
from __future__ import annotations

import threading
from urllib.parse import parse_qs

from . import mock_responses as R

DEFAULT_MODELS = (
    "gpt-4o-mini", "gpt-4o", "gpt-4o-2024-08-06", "gpt-4.1", "gpt-4.1-mini", "o3-mini",
    "text-embedding-3-small", "whisper-1", "claude-haiku-4-5", "claude-sonnet-4-5",
    "claude-opus-4-1", R.DEFAULT_MODEL,
)
CREATED = 1_700_000_000


class ModelCatalog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str | None, tuple[tuple[str, ...], int]] = {}

    def set(self, ids: list[str] | tuple[str, ...] | None = None, *, key: str | None = None,
            status: int = 200) -> None:
        """The list ``key`` (None: every key without its own) gets, or an error ``status``."""
        with self._lock:
            self._by_key[key] = (tuple(DEFAULT_MODELS if ids is None else ids), status)

    def reset(self) -> None:
        with self._lock:
            self._by_key.clear()

    def answer(self, key: str | None, anthropic: bool, target: str) -> tuple[int, dict]:
        with self._lock:
            ids, status = self._by_key.get(key) or self._by_key.get(None) or (DEFAULT_MODELS, 200)
        if status != 200:
            return status, R.error_body(status, anthropic=anthropic)
        if not anthropic:
            return 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "keymux-mock"}
                for m in ids]}
        return 200, _anthropic_page(ids, target.partition("?")[2])


def _anthropic_page(ids: tuple[str, ...], query: str) -> dict:
    q = parse_qs(query)
    try:
        limit = max(1, min(1000, int(q.get("limit", ["20"])[0])))
    except ValueError:
        limit = 20
    after = q.get("after_id", [None])[0]
    start = ids.index(after) + 1 if after in ids else 0
    page = ids[start:start + limit]
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in page]
    return {"data": data, "has_more": start + limit < len(ids),
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}
