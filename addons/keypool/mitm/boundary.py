"""The exception boundary around every hook: an unexpected error answers, it never forwards.

mitmproxy logs an exception that escapes a hook and carries on with the flow, so a
request keymux failed to route would go on to the ``--mode reverse:`` target with the
client's token. Each keymux hook therefore catches everything (but cancellation), logs
one traceback with every secret masked, and answers the client 500
``keymux_internal_error`` if nothing has been sent to it yet. Accounting is released by
the hooks' own ``finally`` blocks; this module only decides what the client and log see.
"""
from __future__ import annotations

import logging
import traceback
from typing import Iterable

from mitmproxy import http

from .. import answers
from ..redact import scrub
from . import flows, responses

logger = logging.getLogger("keymux")

MARK = "keymux_routed"  # flow.metadata: where keymux pointed the flow (the relay), if anywhere


def internal_error() -> http.Response:
    return responses.from_answer(answers.error(
        500, "keymux hit an internal error; the request was not forwarded",
        "keymux_internal_error"))


def not_loaded() -> http.Response:
    return responses.from_answer(answers.error(
        503, "keymux is not loaded (its script or config failed to load); no request is "
        "forwarded until it is fixed", "keymux_not_loaded"))


def log_failure(step: str, exc: BaseException, secrets: Iterable[str]) -> None:
    """One log record: the traceback, with every configured secret and bearer masked."""
    text = "".join(traceback.format_exception(exc))
    logger.error("keymux: internal error in %s (answered 500, nothing forwarded):\n%s",
                 step, scrub(text, list(secrets)))


def answer_failure(flow: http.HTTPFlow) -> None:
    """Answer 500 in place of whatever the flow was about to do (before any byte was sent)."""
    mask_client_auth(flow.request)
    flow.metadata.pop(MARK, None)
    flow.response = internal_error()
    flows.gateway_flow(flow, 500, "500 keymux internal error: nothing forwarded")


def answer_not_loaded(flow: http.HTTPFlow) -> None:
    """503 while no keymux instance is loaded: the gateway's answer, and the flow says so."""
    mask_client_auth(flow.request)
    flow.response = not_loaded()
    flows.gateway_flow(flow, 503, "503 keymux is not loaded: nothing forwarded")


def fail_headers(flow: http.HTTPFlow) -> None:
    """In ``responseheaders``: turn the response about to be sent into the 500.

    A new ``flow.response`` set here would be filled with the upstream's body later, so the
    one mitmproxy holds is rewritten and its body replaced by a stream callable."""
    err = internal_error()
    resp = flow.response
    resp.status_code, resp.reason = err.status_code, err.reason
    resp.headers = http.Headers([(k, v) for k, v in err.headers.fields
                                 if k.lower() != b"content-length"])
    body = [err.raw_content]

    def replace(data: bytes) -> list[bytes]:
        out, body[:] = body[:], []  # the error once, the upstream's bytes never
        return out

    resp.stream = replace
    flow.comment = "keymux internal error: answered 500"
    flow.marked = flows.BROKEN


mask_client_auth = flows.mask_client_auth  # the client's token, masked on every flow it shows
