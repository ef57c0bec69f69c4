"""mitmproxy's HTTP/1 server, adjusted in two places it gives addons no say in.

- Its own error answers (a bad request line or header block, bad chunked framing,
  ``body_size_limit``, its 502s) are an HTML page written straight to the socket by
  ``make_error_response``, before and outside any hook: they become OpenAI error JSON.
- It buffers an unfinished request head without limit (its reader has a "FIXME: protect
  against header size DoS"): a client can stream gigabytes of header bytes. Past
  ``MAX_HEAD_BYTES`` without the blank line that ends a head, the client gets a 431 and
  the connection is closed. Complete heads are judged by the request checks (431/414).

Both are mitmproxy 12.2.3 internals, patched once per process by ``install``;
tests/addon/test_conns.py pins what they rely on.
"""
from __future__ import annotations

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

from .. import answers

MAX_HEAD_BYTES = 256 * 1024   # far above any real request head; bounds memory per connection

# getattr: a re-imported module must wrap mitmproxy's method, not its own wrapper
_original_read_headers = getattr(_http1.Http1Server.read_headers, "keymux_original",
                                 _http1.Http1Server.read_headers)


def install() -> None:
    _http1.make_error_response = json_error_response
    _http1.Http1Server.read_headers = _read_headers_bounded


def json_error_response(status_code: int, message: str = "") -> bytes:
    """Same signature as mitmproxy's ``make_error_response``; OpenAI JSON, then close."""
    return wire(answers.error(status_code, message or answers.reason(status_code),
                              "http_protocol_error"))


def wire(answer: answers.Answer) -> bytes:
    """An answer as bytes on an HTTP/1 connection that closes after it."""
    head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
    head += [f"{k}: {v}" for k, v in answer.headers.items()]
    head += [f"content-length: {len(answer.body)}", "connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1", "replace") + answer.body


def _read_headers_bounded(self, event):
    yield from _original_read_headers(self, event)
    if (isinstance(event, events.DataReceived) and self.state == self.read_headers
            and len(self.buf) > MAX_HEAD_BYTES):  # still no complete head: stop buffering
        yield commands.SendData(self.conn, wire(answers.error(
            431, f"request head over {MAX_HEAD_BYTES} bytes", "request_head_too_large")))
        yield commands.CloseConnection(self.conn)
        self.state = self.done


_read_headers_bounded.keymux_original = _original_read_headers
