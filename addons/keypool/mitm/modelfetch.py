"""Fetches each provider's model list in the background (``keypool.modellist`` keeps it).

A nested addon of ``Keymux``: at start, then once a second it asks ``ModelLists.due`` which
providers need a fetch (never fetched, changed by a reload, older than the TTL, or failed a
minute ago) and fetches those, one GET (Anthropic: a page at a time) with one usable key
through keymux's own sender (``Upstream.send``), as ``mitm/keytest.py`` sends a key test.
The request path never fetches: ``/v1/models`` answers from the cache. Only a list request
that arrives before the first fetch has ended waits for it, at most ``FIRST_WAIT_S``.

The fetch holds no lease on the key and is not judged: no cooldown, no dead key, nothing
in the key's counters or the request log (see ``modellist.fetch_keys``).
"""
from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions, http

from .. import modellist
from ..gateway import Gateway
from ..keytest import FIELDS, message_of
from ..keystate import Lease
from ..redact import scrub
from ..reissue import UpstreamError
from ..routing import Route
from ..ticket import Plan, Ticket

logger = logging.getLogger("keymux")

OPTION = "keymux_model_list_ttl"
POLL_S = 1.0          # how often due() is asked: a reload's new provider is fetched this soon
FETCH_TIMEOUT_S = 15.0  # one page, connection included
FIRST_WAIT_S = 3.0    # the longest a list request waits for the very first fetch


async def _wait(first: asyncio.Event) -> None:
    try:
        async with asyncio.timeout(FIRST_WAIT_S):
            await first.wait()
    except TimeoutError:
        pass  # answered from what is there: the config's names


class FetchFailed(Exception):
    """A provider's list could not be read; the message holds no secret."""


class ModelFetch:
    def __init__(self, keymux) -> None:
        self.keymux = keymux  # its gateway (swapped by a config change) and its sender
        self._task: asyncio.Task | None = None
        self._first: asyncio.Event | None = None  # until the first round has ended

    def load(self, loader) -> None:
        loader.add_option(OPTION, int, modellist.DEFAULT_TTL_S,
                          "Seconds a provider's model list (for /v1/models) is kept before "
                          "it is fetched again; 0 fetches none (the config's model names only).")

    def configure(self, updated: set[str]) -> None:
        if OPTION in updated or not updated:
            ttl = getattr(ctx.options, OPTION)
            if ttl < 0:
                raise exceptions.OptionsError(f"keymux: {OPTION} must be 0 or more")
            if self.keymux.gateway is not None:
                modellist.of(self.keymux.gateway).ttl_s = ttl

    def running(self) -> None:
        if self.keymux.gateway is not None:
            modellist.of(self.keymux.gateway).ttl_s = getattr(ctx.options, OPTION)
        self._first = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._forever())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def requestheaders(self, flow: http.HTTPFlow):
        """A model list asked for before the first fetch ended waits for it (bounded).
        Sync on purpose: every other request pays one attribute check, no coroutine
        (mitmproxy awaits what a hook returns)."""
        first = self._first
        if first is None or flow.response or flow.request.method != "GET" \
                or not flow.request.path.startswith("/v1/models"):
            return None
        return _wait(first)

    async def _forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # a bug here must not end the refreshes for good
                logger.error("keymux: model list refresh failed: %s: %s", type(e).__name__, e)
            if self._first is not None:
                self._first.set()  # wakes the list requests that waited for it
                self._first = None
            await asyncio.sleep(POLL_S)

    async def refresh(self) -> None:
        gw = self.keymux.gateway
        if gw is None:
            return
        due = modellist.of(gw).due(gw.config)
        if due:
            await asyncio.gather(*(self._fetch(gw, name) for name in due))

    async def _fetch(self, gw: Gateway, name: str) -> None:
        lists, config = modellist.of(gw), gw.config
        sig = modellist.signature(config, name)
        provider = config.providers[name]
        error = "no usable key (every enabled key is cooling, dead or at its limits)"
        if name in gw.pool.outages.down:
            error = "the provider is in an outage"
            keys = []
        else:
            keys = modellist.fetch_keys(gw.pool.by_provider.get(name, ()), gw.clock.monotonic())
        for key in keys:
            try:
                ids = await self._list(gw, provider, key)
            except FetchFailed as e:
                error = f"key {key.name}: {e}"
                continue
            # an upstream that echoes a key in an id must not show it to every client
            ids = [m for m in ids if gw.masker.masked_text(m) == m]
            if gw.config is config:  # not replaced by a reload while we waited
                was = lists.entries.get(name)
                lists.stored(name, sig, ids)
                if was is None or not was.ok:
                    logger.info("keymux: model list of provider '%s': %d models", name, len(ids))
            return
        if gw.config is config:
            was = lists.entries.get(name)
            lists.failed(name, sig, error)
            if was is None or was.ok or was.error != error:  # one line per new failure
                logger.warning("keymux: cannot fetch the model list of provider '%s' (%s); "
                               "/v1/models shows %s", name, error,
                               "its last good list" if lists.ids(name) else
                               "only its model names from keys.yaml")

    async def _list(self, gw: Gateway, provider, key) -> list[str]:
        anthropic = provider.auth == "x-api-key"
        ids: list[str] = []
        after = None
        for _ in range(modellist.MAX_PAGES):
            page, after = await self._page(gw, provider, key, modellist.page_path(anthropic, after))
            ids += page
            if after is None or len(ids) >= modellist.MAX_IDS:
                break
        return ids[:modellist.MAX_IDS]

    async def _page(self, gw: Gateway, provider, key, path: str) -> tuple[list[str], str | None]:
        now = gw.clock.monotonic()
        ticket = Ticket(path=path, route=Route(provider, None, 0), client=None, body=None,
                        stream=False, strip_usage=False, anthropic=False, est_tokens=0,
                        arrived=now, deadline=now + FETCH_TIMEOUT_S)
        # Not a pool lease: it holds no slot, and nothing settles or releases it.
        plan = Plan(ticket=ticket, lease=Lease(key, None, ()), started=now)
        reply = None
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                reply = await self.keymux.upstream.send(plan, "GET", FIELDS, modellist.BODY_CAP)
                body = await reply.read()
        except TimeoutError:
            raise FetchFailed(f"no answer within {FETCH_TIMEOUT_S:g} s") from None
        except UpstreamError as e:
            raise FetchFailed(str(e)) from None
        finally:
            if reply is not None:
                reply.close()
        if reply.status != 200:
            said = scrub(gw.masker.masked_text(message_of(body)), gw._secrets)[:200]
            raise FetchFailed(f"status {reply.status}: {said}")
        try:
            return modellist.parse(body)
        except ValueError as e:
            raise FetchFailed(str(e)) from None
