"""mitmproxy's own HTTP/1 error answers in OpenAI's error JSON instead of HTML.

mitmproxy answers some requests itself, before or without any addon hook deciding: a body
over ``body_size_limit`` (keymux sets it to ``routing.max_body_mb``: 413 before the body is
read), a request line or header it cannot parse (400), ``CONNECT`` in reverse mode (400).
It writes those through ``mitmproxy.proxy.layers.http._http1.make_error_response``, which
offers no hook; keymux replaces that one function. It is internal API: ``install`` checks
that it is there and reports False (the HTML stays) rather than failing on another version.
"""
from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import http1

from ..answers import error

MESSAGES = {
    413: ("the request body is larger than routing.max_body_mb", "request_too_large"),
    502: ("the upstream failed", "upstream_failed"),
}


def make_error_response(status_code: int, message: str = "") -> bytes:
    """What mitmproxy sends for its own errors; the connection is closed after it."""
    if status_code in MESSAGES:
        text, code = MESSAGES[status_code]
    elif "CONNECT" in message:
        text, code = "keymux is not a forward proxy: CONNECT is not supported", "method_not_allowed"
    else:  # a parse error: the client's own bytes, bounded
        text, code = f"malformed HTTP request: {message[:200]}", "bad_request"
    answer = error(status_code, text, code)
    resp = http.Response.make(status_code, answer.body, {**answer.headers, "connection": "close"})
    resp.reason = answer.reason
    return http1.assemble_response(resp)


def install() -> bool:
    """Replace mitmproxy's HTML error pages; idempotent."""
    try:
        from mitmproxy.proxy.layers.http import _http1
    except ImportError:
        return False
    if not callable(getattr(_http1, "make_error_response", None)):
        return False
    _http1.make_error_response = make_error_response
    return True
