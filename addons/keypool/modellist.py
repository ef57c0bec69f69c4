"""The model list clients see at ``GET /v1/models``: real model ids, never a glob.

Each provider's own list (its ``/models`` endpoint, fetched in the background by the glue,
``mitm/modelfetch.py``) is cached here with a TTL. The answer is built from it:

- a fetched id is listed when the provider's ``models`` globs (if any) match it and some
  enabled key of the provider may serve it (its ``models`` globs, if any, match);
- the config's non-glob names (provider's and keys') are listed too, fetched or not;
- then the client's allow-list filters (on the model as forwarded, prefix stripped);
- each id is shown as a client must send it to reach that provider: bare when routing
  sends the bare id there, else ``provider/id`` (routing rule 2), so an id served by two
  providers appears once bare (where the bare id goes) and once prefixed for the other.

A provider whose list was never fetched (or failed, with no earlier good list) shows its
non-glob names only; ``health`` says why. A failed refresh keeps the last good list.

Pure: the clock is injected and nothing here does I/O.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable
from urllib.parse import quote

from .clock import Clock
from .config import Config
from .globs import GlobSet, is_wildcard
from .routing import RouteError, Router

if TYPE_CHECKING:
    from .gateway import Gateway
    from .keystate import KeyState

DEFAULT_TTL_S = 3600      # a provider's list is fetched again after this long
RETRY_S = 60.0            # a failed fetch is tried again after this (or the TTL, if shorter)
LIST_PATH = "/v1/models"  # mapped onto each provider's base_url (gemini: .../openai/models)
ANTHROPIC_PAGE = 1000     # Anthropic's largest page (``limit``)
MAX_PAGES = 10            # pagination stops here: a list of 10,000 ids is not a model picker
MAX_IDS = 10_000
MAX_ID_CHARS = 256        # an id longer than this is no model name: dropped
BODY_CAP = 8 << 20        # a model list body is never this long


@dataclass(frozen=True, slots=True)
class Entry:
    """What is known of one provider's list."""
    ids: tuple[str, ...] | None   # the last good list (None: never fetched)
    fetched_at: float | None      # wall time of that list
    checked: float                # monotonic time of the last attempt, good or not
    ok: bool                      # the last attempt succeeded
    error: str | None             # why the last attempt failed (no secret)
    signature: int                # what the list depends on in the config (see signature)


class ModelLists:
    """Every provider's cached list; ``ttl_s`` 0 turns fetching off (config names only)."""

    def __init__(self, clock: Clock, ttl_s: float = DEFAULT_TTL_S):
        self.clock = clock
        self.ttl_s = ttl_s
        self.entries: dict[str, Entry] = {}
        self.version = 0  # bumped on every change: the listing cache's key
        self._listing: tuple[tuple, list[Shown]] | None = None

    def due(self, config: Config) -> list[str]:
        """Providers (with an enabled key) whose list should be fetched now: never
        fetched, changed in the config, older than the TTL, or failed RETRY_S ago."""
        if self.ttl_s <= 0:
            return []
        now = self.clock.monotonic()
        out = []
        for name in keyed(config):
            e = self.entries.get(name)
            if e is None or e.signature != signature(config, name):
                out.append(name)
                continue
            wait = self.ttl_s if e.ok else min(RETRY_S, self.ttl_s)
            if now - e.checked >= wait:
                out.append(name)
        return out

    def stored(self, name: str, sig: int, ids: Iterable[str]) -> None:
        now = self.clock.monotonic()
        self.entries[name] = Entry(tuple(dict.fromkeys(ids)), self.clock.wall(), now, True, None, sig)
        self.version += 1

    def failed(self, name: str, sig: int, error: str) -> None:
        """A failed fetch keeps the last good list of the same provider config."""
        prev = self.entries.get(name)
        keep = prev is not None and prev.signature == sig
        self.entries[name] = Entry(prev.ids if keep else None, prev.fetched_at if keep else None,
                                   self.clock.monotonic(), False, error, sig)
        self.version += 1

    def ids(self, name: str) -> tuple[str, ...]:
        if self.ttl_s <= 0:  # fetching turned off: the config's names only, as documented
            return ()
        e = self.entries.get(name)
        return e.ids if e is not None and e.ids is not None else ()

    def health(self, config: Config) -> dict[str, dict]:
        """Per keyed provider: ``ok``, ``fetched_at`` (of the list served), ``models``
        (how many ids it has), ``error`` (the last attempt's), ``stale`` (a good list
        kept after a failed refresh)."""
        if self.ttl_s <= 0:
            return {}
        out = {}
        for name in keyed(config):
            e = self.entries.get(name)
            if e is None:
                out[name] = {"ok": False, "fetched_at": None, "models": 0,
                             "error": "not fetched yet", "stale": False}
                continue
            out[name] = {"ok": e.ok, "fetched_at": e.fetched_at,
                         "models": len(e.ids or ()), "error": e.error,
                         "stale": not e.ok and e.ids is not None}
        return out

    def listing(self, config: Config, router: Router, anthropic: bool) -> list["Shown"]:
        """Every listed model (before the client's allow-list), cached until the config
        or a list changes: the endpoint filters this per client."""
        key = (id(config), id(router), self.version, self.ttl_s > 0, anthropic)
        if self._listing is None or self._listing[0] != key:
            self._listing = (key, build(config, router, self.ids, anthropic))
        return self._listing[1]


@dataclass(frozen=True, slots=True)
class Shown:
    id: str        # as the client sends it (maybe ``provider/model``)
    provider: str  # owned_by
    model: str     # as forwarded: what the client's allow-list is checked on


def keyed(config: Config) -> list[str]:
    """Providers with at least one enabled key, in the file's order."""
    return list(dict.fromkeys(k.provider for k in config.keys if k.enabled))


def signature(config: Config, name: str) -> int:
    """What a provider's list depends on: where it is asked, how, and with which keys."""
    p = config.providers[name]
    secrets = frozenset(k.secret for k in config.keys if k.enabled and k.provider == name)
    return hash((p.base_url, p.auth, p.headers, p.proxy, secrets))


def build(config: Config, router: Router, fetched: Callable[[str], tuple[str, ...]],
          anthropic: bool) -> list[Shown]:
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    out: dict[str, Shown] = {}
    for name in keyed(config):
        p = config.providers[name]
        if anthropic and p.auth != "x-api-key":
            continue  # an Anthropic client reaches only those (routing rule 3)
        keys = [k for k in config.keys if k.enabled and k.provider == name]
        key_globs = [GlobSet(k.models) for k in keys]
        own = GlobSet(p.models)
        named = [m for m in (*p.models, *(m for k in keys for m in k.models)) if not is_wildcard(m)]
        listed = [m for m in fetched(name) if not own or own.matches(m)]
        for model in dict.fromkeys((*listed, *named)):
            if any(not g or g.matches(model) for g in key_globs):
                shown = _as_sent(router, path, name, model)
                out.setdefault(shown, Shown(shown, name, model))
    return list(out.values())


def _as_sent(router: Router, path: str, name: str, model: str) -> str:
    """The id that routes to ``name`` with ``model``: bare if it does, else prefixed."""
    try:
        route = router.resolve(path=path, model=model)
    except RouteError:
        route = None
    if route is not None and route.provider.name == name and route.model == model:
        return model
    return f"{name}/{model}"


def visible(shown: list[Shown], allows: Callable[[str], bool]) -> list[Shown]:
    return [s for s in shown if allows(s.model)]


# -- what the glue asks and reads ------------------------------------------------------

def page_path(anthropic: bool, after: str | None) -> str:
    """The client-form path of one page (the provider's base_url replaces ``/v1``)."""
    if not anthropic:
        return LIST_PATH
    path = f"{LIST_PATH}?limit={ANTHROPIC_PAGE}"
    return path + f"&after_id={quote(after, safe='')}" if after else path


def parse(body: bytes) -> tuple[list[str], str | None]:
    """A models body (OpenAI's ``{"data": [{"id"}]}``, Anthropic's with ``has_more`` and
    ``last_id``) -> (ids, the ``after_id`` of the next page or None). ValueError if it is
    not a model list. Gemini's ``models/`` prefix is removed (its chat endpoint takes the
    bare name)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("the model list is not JSON") from None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("the model list has no 'data' array")
    ids = []
    for item in items:
        mid = item.get("id") if isinstance(item, dict) else None
        if isinstance(mid, str) and 0 < len(mid) <= MAX_ID_CHARS and mid.isprintable():
            ids.append(mid[len("models/"):] if mid.startswith("models/") else mid)
    more = data.get("has_more") is True and isinstance(data.get("last_id"), str)
    return ids, data["last_id"] if more else None


def fetch_keys(keys: Iterable["KeyState"], now: float, limit: int = 2) -> list["KeyState"]:
    """The keys a list fetch may use, least busy first: enabled, not cooling or dead,
    under their rpm/tpm. The fetch holds no lease and counts in no limit (one request per
    provider per TTL); a failure on it is not held against the key (a key may lack the
    permission to list models yet serve them)."""
    ok = [k for k in keys if k.spec.enabled and not k.retired
          and k.blocked_until(None, now) <= now and k.limits.wait_for(now, 0) <= 0]
    return sorted(ok, key=lambda k: k.in_flight)[:limit]


def of(gw: "Gateway") -> ModelLists:
    """The gateway's model lists (kept on it: they survive a script reload with it)."""
    lists = getattr(gw, "model_lists", None)
    if lists is None:
        lists = gw.model_lists = ModelLists(gw.clock)
    return lists
