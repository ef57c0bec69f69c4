"""The client's token masked on the flow before any other addon or mitmweb can see it.

mitmproxy's ``View`` (mitmweb's flow list) adds a flow in ``requestheaders``, before the
body is read and long before keymux's ``request`` hook routes it; ``Save``, the dumper
and every user script may read the flow at any moment after. Whatever headers the flow
holds then is what they show. So ``ClientAuth`` stands at the *front* of mitmproxy's addon
chain (``install``) and, in ``requestheaders``, replaces every client credential
(``keypool.providers.CLIENT_AUTH_HEADERS``) by its masked form (``Bearer kmx…3456``).

The originals stay off the flow: in a ``WeakKeyDictionary`` keyed by the flow object
(never ``flow.metadata``, which is saved and shown), never logged. keymux reads them back
to screen the head (``fields``) and to authenticate (``take``, which drops them: nothing
needs them after). The entry also goes when the flow is answered or fails, and with the
flow itself. keymux's token check is the only reader; no request sent upstream carries a
client credential (``Plan.rewrite_fields`` drops them all).
"""
from __future__ import annotations

import asyncio
from weakref import WeakKeyDictionary

from mitmproxy import http

from ..providers import CLIENT_AUTH_HEADERS
from ..redact import is_masked, mask_credential

_AUTH = frozenset(n.encode() for n in CLIENT_AUTH_HEADERS)

Fields = tuple[tuple[bytes, bytes], ...]


class Held:
    """A flow's header fields as the client sent them, and as they were masked."""
    __slots__ = ("original", "masked")

    def __init__(self, original: Fields, masked: Fields):
        self.original, self.masked = original, masked


class ClientAuth:
    name = "keymux_clientauth"

    def __init__(self) -> None:
        self._held: WeakKeyDictionary[http.HTTPFlow, Held] = WeakKeyDictionary()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # No guard: a flow with an error (body too large, bad headers) is shown too.
        headers = flow.request.headers
        original = headers.fields
        masked = _masked(original)
        if masked is not original:
            headers.fields = masked
            self._held[flow] = Held(original, headers.fields)

    def response(self, flow: http.HTTPFlow) -> None:
        self._held.pop(flow, None)  # answered (keymux refused it, or it was served)

    def error(self, flow: http.HTTPFlow) -> None:
        self._held.pop(flow, None)

    def fields(self, flow: http.HTTPFlow) -> Fields:
        """The flow's header fields with the client's credentials as it sent them."""
        held = self._held.get(flow)
        current = flow.request.headers.fields
        return current if held is None else _restored(current, held)

    def take(self, flow: http.HTTPFlow) -> http.Headers | None:
        """A copy of the flow's headers with the client's credentials, which are then
        forgotten; None when the flow held none (its own headers serve as they are)."""
        fields = self.take_fields(flow)
        return None if fields is None else http.Headers(fields)

    def take_fields(self, flow: http.HTTPFlow) -> Fields | None:
        """``take`` as raw header fields (no ``Headers`` built: the hot path reads them)."""
        held = self._held.pop(flow, None)
        if held is None:
            return None
        return _restored(flow.request.headers.fields, held)

    def holds(self, flow: http.HTTPFlow) -> bool:
        return flow in self._held


def _masked(fields: Fields) -> Fields:
    """``fields`` with every client credential masked; the same object if it has none."""
    out = None
    for i, (name, value) in enumerate(fields):
        if name.lower() in _AUTH:
            text = value.decode("utf-8", "surrogateescape")
            if is_masked(text):  # e.g. a flow keymux published (attempt, replay): shown as is
                continue
            if out is None:
                out = list(fields)
            text = mask_credential(text)
            out[i] = (name, text.encode("utf-8", "surrogateescape"))
    return fields if out is None else tuple(out)


def _restored(current: Fields, held: Held) -> Fields:
    if current is held.masked:  # the usual case: nobody touched the headers since
        return held.original
    # Another addon changed the headers: put back each credential still in its masked
    # form; one the addon set itself (a different value) is the addon's, kept.
    pending = [(n.lower(), m, o) for (n, m), (_, o) in zip(held.masked, held.original)
               if n.lower() in _AUTH]
    out = []
    for name, value in current:
        low = name.lower()
        for j, (n, m, o) in enumerate(pending):
            if n == low and m == value:
                value = o
                del pending[j]
                break
        out.append((name, value))
    return tuple(out)


def install(master) -> ClientAuth:
    """Once per process (it outlives -s script reloads, like FailClosed), first in the
    chain: ahead of View, Save, the dumper and every script.

    keymux's ``load`` runs inside mitmproxy's own dispatch: a script is loaded while the
    chain is being iterated for ``configure`` (an insert in place would run the script
    loader's hook twice), and ``AddonManager.add`` appends to the list it read *before*
    calling ``load`` (rebinding the chain then would drop the addon being added). So the
    move waits for the loop's next turn, which comes before the proxy accepts a
    connection, and rebinds the chain (a dispatch suspended at an ``await`` keeps
    iterating the old list). Without a running loop (tests) nothing is iterating: insert.
    """
    addon = master.addons.get(ClientAuth.name)
    if addon is None:
        addon = ClientAuth()
        master.addons.register(addon)
        try:
            asyncio.get_running_loop().call_soon(_to_front, master, addon)
        except RuntimeError:
            master.addons.chain.insert(0, addon)
    return addon


def _to_front(master, addon: ClientAuth) -> None:
    chain = master.addons.chain
    if not chain or chain[0] is not addon:
        master.addons.chain = [addon, *(a for a in chain if a is not addon)]
