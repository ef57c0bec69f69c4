"""A guard that outlives the -s script: no keymux, no forwarding.

If a touched script fails to load, mitmproxy keeps serving without it, as a plain reverse
proxy: requests, client tokens and all, would go to the ``--mode reverse:`` target. This
addon is added to mitmproxy's own chain (after the script's place in it) once per process,
so it stays when the script goes, and answers 503 until a keymux instance is live again.
"""
from __future__ import annotations

from mitmproxy import http

from .. import answers
from . import responses, runtime


class FailClosed:
    name = "keymux_failclosed"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or runtime.active is not None:
            return
        flow.response = responses.from_answer(answers.error(
            503, "keymux is not loaded (its script failed to load); no request is forwarded "
            "until it is fixed", "keymux_not_loaded"))
