"""The last addon in mitmproxy's chain: nothing leaves unless keymux answered or routed it.

mitmproxy forwards any request that no addon answered, to the ``--mode reverse:`` target,
with the client's headers. keymux answers every request itself or points it at its own
relay; anything else means keymux is not loaded (its script failed to load) or a bug got
past its hooks. This addon is added to mitmproxy's own chain once per process (after the
script's place in it), so it stays when the script goes, and it fails closed:

- no keymux instance live: 503 ``keymux_not_loaded``;
- a live flow keymux neither answered nor routed to its relay: 500 ``keymux_internal_error``.
"""
from __future__ import annotations

import logging

from mitmproxy import http

from . import boundary, runtime

logger = logging.getLogger("keymux")


class FailClosed:
    name = "keymux_failclosed"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if runtime.active is None:
            boundary.answer_not_loaded(flow)
        elif not routed_by_keymux(flow):
            logger.error("keymux: a request was neither answered nor routed by keymux; "
                         "answered 500 instead of forwarding it")
            boundary.answer_failure(flow)


def routed_by_keymux(flow: http.HTTPFlow) -> bool:
    """Whether the flow goes exactly where keymux pointed it (its loopback relay)."""
    target = flow.metadata.get(boundary.MARK)
    req = flow.request
    return target is not None and (req.host, req.port, req.path) == target
