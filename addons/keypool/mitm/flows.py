"""What keymux's flows show in mitmweb, ``-w`` files and mitmdump's output: the truth.

- A request the gateway answered itself names host ``keymux`` (nobody else was contacted),
  is marked, and its comment says why (``401 unknown client token``).
- A routed request shows what was sent: the provider's URL, the headers with the key
  masked, the body as sent (``gpt-4o-mini``, not ``mock/gpt-4o-mini``), the connection
  keymux's sender really used (``reply.conn``, a ``ConnInfo``) and its real timings.
- Its comment starts with the keys tried and their outcome (``demo-3 429 → demo-1 200``),
  so the flow list names the key; failed attempts are flows of their own (``attempts.py``).
- A streamed answer keeps a copy of what was streamed, up to ``keymux_flow_body_kb``.
"""
from __future__ import annotations

import itertools
import json
import uuid
from weakref import WeakKeyDictionary

from cryptography import x509
from mitmproxy import certs, connection, ctx, http
from mitmproxy.net import server_spec

from ..answers import Answer
from ..providers import CLIENT_AUTH_HEADERS
from ..redact import is_masked, mask_credential, scrub
from ..ticket import Plan, Ticket
from . import responses
from .upstream import HOP_BY_HOP

HOST = "keymux"  # RequestData.host is a str (scheme and path are bytes)
REFUSED = ":no_entry:"          # the gateway refused the request (4xx)
BUSY = ":hourglass:"            # no key free now: 429/503 from the pool
BROKEN = ":boom:"               # keymux's own failure: 500
OWN = ":information_source:"    # the gateway's own endpoints (health, metrics, models)
REISSUED = ":repeat:"           # the answer came from a later attempt
FAILED = ":x:"                  # the upstream failed (its status >= 400, or no answer)

# Framing the flow's body no longer matches (aiohttp sends its own content-length).
# What keymux's sender leaves out (hop-by-hop, framing; aiohttp writes Host and length).
_FRAMING = frozenset(h.encode() for h in HOP_BY_HOP)


# -- the gateway's own answers --------------------------------------------------------

def answered(flow: http.HTTPFlow, answer: Answer, secrets=()) -> None:
    """The gateway answers: the response, and a flow that says it was the gateway."""
    mask_client_auth(flow.request)
    flow.response = responses.from_answer(answer)
    gateway_flow(flow, answer.status, why(answer, secrets))


def gateway_flow(flow: http.HTTPFlow, status: int, comment: str) -> None:
    """Name host ``keymux`` (in the URL mitmweb's list shows too; the client's own Host
    header is kept in the metadata), mark, explain."""
    req = flow.request
    sent = req.host_header
    if sent is not None and sent != HOST:
        flow.metadata.setdefault("keymux", {})["client_host"] = sent
        req.host_header = HOST
    sock = flow.client_conn.sockname
    req.data.scheme, req.data.host = b"http", HOST
    req.data.port = sock[1] if sock else 0  # the port the client reached
    # Not the --mode reverse: target, which nobody contacted (safe: answered flows never
    # connect, so mitmproxy never uses this server connection).
    flow.server_conn = _server(address=(HOST, req.data.port))
    flow.marked = marker(status)
    flow.comment = comment


def mask_client_auth(req: http.Request) -> None:
    """A second line of defence: ``clientauth.ClientAuth`` masked these in requestheaders."""
    for name in CLIENT_AUTH_HEADERS:
        if name in req.headers and not is_masked(value := req.headers[name]):
            req.headers[name] = mask_credential(value)


def marker(status: int) -> str:
    if status < 400:
        return OWN
    if status in (429, 503):
        return BUSY
    if status == 500:
        return BROKEN
    if status in (502, 504):
        return FAILED
    return REFUSED


def why(answer: Answer, secrets=()) -> str:
    """``401 unknown client token``: the error's message, secrets masked."""
    if answer.status < 400:
        return f"{answer.status} answered by keymux"
    try:
        message = json.loads(answer.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.reason
    return scrub(f"{answer.status} {message}", list(secrets))


def tested(answer: Answer) -> str:
    """An admin's key test did reach the provider: ``key test k1: openai 401 dead (85 ms)``,
    not "answered by keymux" (the summary is keymux's, the status is the provider's)."""
    try:
        r = json.loads(answer.body)
        got = r["status"] if r["status"] is not None else r["error"]
        return f"key test {r['key']}: {r['provider']} {got} {r['outcome']} ({r['latency_ms']} ms)"
    except (ValueError, KeyError, TypeError):
        return why(answer)


# -- a routed request: what was sent, and where ---------------------------------------

def sent_fields(plan: Plan, fields) -> tuple:
    """The header fields as sent, the key masked; framing that fits the body as sent."""
    shown = [(k, v) for k, v in plan.rewrite_fields(fields, secret=False)
             if k.lower() not in _FRAMING]
    body = plan.ticket.body
    if body:
        shown.append((b"content-length", str(len(body)).encode()))
    return tuple(shown)


def show_request(req: http.Request, plan: Plan, shown: tuple) -> None:
    """The flow's request becomes the one sent upstream (headers first: the URL setters
    rewrite the Host header)."""
    req.headers.fields = shown
    p = plan.provider
    d = req.data
    d.scheme, d.port, d.host = p.scheme.encode(), p.port, p.host
    d.path = plan.path.encode()
    d.content = plan.ticket.body or b""
    req.host_header = p.host if p.port == (443 if p.scheme == "https" else 80) \
        else f"{p.host}:{p.port}"


def story(attempts: list[dict], last: str | None = None) -> str:
    """``demo-3 429 → demo-1 200``: every attempt's key and outcome, in order."""
    steps = [f"{a['key']} {a['status'] or a['error']}" for a in attempts]
    if last is not None:
        steps.append(last)
    return " → ".join(steps)


def show_routed(flow: http.HTTPFlow, ticket: Ticket, plan: Plan, reply, shown: tuple) -> None:
    """The client flow of an answered attempt: request as sent, comment, marker, metadata."""
    show_request(flow.request, plan, shown)
    attempts = ticket.attempts
    n = len(attempts) or 1
    status = reply.status
    flow.comment = (f"{story(attempts)} · attempt {n} of {n}, key {plan.key.masked}" if n > 1
                    else f"{plan.key.name} {status} · key {plan.key.masked}")
    if n > 1:
        flow.marked = REISSUED
    elif status >= 400:
        flow.marked = FAILED
    flow.metadata["keymux"] = meta(ticket, plan.key.name)


def show_refused(flow: http.HTTPFlow, ticket: Ticket, answer: Answer, secrets=()) -> None:
    """No key answered (pool busy, every attempt failed, timed out): the gateway's answer."""
    mask_client_auth(flow.request)
    flow.response = responses.from_answer(answer)
    text = why(answer, secrets)
    gateway_flow(flow, answer.status,
                 f"{story(ticket.attempts)} → {text}" if ticket.attempts else text)
    flow.metadata["keymux"] = meta(ticket, None)


def meta(ticket: Ticket, key: str | None) -> dict:
    r = ticket.route
    return {"key": key, "provider": r.provider.name, "model": r.model,
            "client": ticket.client, "rule": r.rule, "attempts": ticket.attempts}


# -- the upstream connection ----------------------------------------------------------

def upstream_server(conn, plan: Plan) -> connection.Server:
    """A mitmproxy ``Server`` for the connection keymux's sender used (or, without a
    ``ConnInfo``, the provider's address)."""
    p = plan.provider
    if conn is None:
        return _server(address=(p.host, p.port), tls=p.scheme == "https",
                       sni=p.host if p.scheme == "https" else None)
    return _server(
        address=tuple(conn.address), peername=conn.peername, sockname=conn.sockname,
        tls=conn.tls_version is not None, sni=conn.sni, tls_version=conn.tls_version,
        cipher=conn.cipher, alpn=conn.alpn.encode() if conn.alpn else None,
        certificate_list=_certs(conn.certificates), via=_via(conn.via),
        timestamp_start=conn.timestamp_start, timestamp_tcp_setup=conn.timestamp_tcp_setup,
        timestamp_tls_setup=conn.timestamp_tls_setup)  # no end: the connection stays pooled


# Server(...) costs ~17 µs (dataclass defaults, uuid4 from os.urandom); a closed Server's
# fields are plain values, so a copy of a template's with a fresh id is the same object
# for ~3 µs. The ids stay unique: a random per-process prefix and a counter.
_TEMPLATE = connection.Server(address=None).__dict__
_ID_PREFIX = str(uuid.uuid4())[:24]
_ids = itertools.count()


def _server(**fields) -> connection.Server:
    server = connection.Server.__new__(connection.Server)
    d = server.__dict__
    d.update(_TEMPLATE)
    d.update(fields)
    d["id"] = f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFFFFFF:012x}"
    return server


def _certs(ders) -> list:
    out = []
    for der in ders or ():
        try:
            out.append(certs.Cert(x509.load_der_x509_certificate(der)))  # no from_der in 12.2
        except Exception:  # an unreadable certificate is shown as absent, not a failure
            break
    return out


def _via(via: str | None):
    if not via:
        return None
    try:
        return server_spec.parse(via, "http")
    except ValueError:
        return None


def show_connection(flow: http.HTTPFlow, reply, plan: Plan, *, whole: bool) -> None:
    """The flow's server connection and timings become the upstream's real ones
    (``whole``: a response keymux sets in the request hook, whose times mitmproxy stamps
    with its own clock after the hook; they are put back by ``restamp``)."""
    conn = getattr(reply, "conn", None)
    flow.server_conn = upstream_server(conn, plan)
    if conn is None:
        return
    if conn.timestamp_request_sent is not None:
        flow.request.timestamp_end = conn.timestamp_request_sent
    if whole:
        _held[flow] = conn
    elif flow.response is not None and conn.timestamp_response_start is not None:
        flow.response.timestamp_start = conn.timestamp_response_start


# A whole response set in the request hook: mitmproxy then sets its timestamp_start (before
# responseheaders) and timestamp_end (before response) to "now"; the upstream's wait here.
_held: WeakKeyDictionary = WeakKeyDictionary()


def restamp(flow: http.HTTPFlow, *, end: bool) -> None:
    """In responseheaders (``end=False``) and response (``end=True``): the upstream's times."""
    conn = _held.pop(flow, None) if end else _held.get(flow)
    if conn is None or flow.response is None:
        return
    stamp = conn.timestamp_end if end else conn.timestamp_response_start
    if stamp is not None:
        setattr(flow.response, "timestamp_end" if end else "timestamp_start", stamp)


# -- a streamed answer's copy ---------------------------------------------------------

class StreamCopy:
    """A stream callable that keeps what went to the client, up to ``cap`` bytes, around
    ``inner`` (the usage tap) or alone; it only appends, so it never delays a chunk."""

    __slots__ = ("inner", "cap", "buf", "truncated")

    def __init__(self, inner, cap: int):
        self.inner, self.cap = inner, cap
        self.buf = bytearray()
        self.truncated = False

    def __call__(self, data: bytes):
        out = self.inner(data) if self.inner is not None else data
        if type(out) is bytes:  # the common case, inlined: one length test, one append
            if len(self.buf) + len(out) <= self.cap:
                self.buf += out
            else:
                self._keep(out)
        elif isinstance(out, (bytes, bytearray)):
            self._keep(out)
        else:
            if not isinstance(out, (list, tuple)):  # a generator is read once: keep it
                out = list(out)
            for chunk in out:
                self._keep(chunk)
        return out

    def _keep(self, chunk) -> None:
        room = self.cap - len(self.buf)
        if len(chunk) <= room:
            self.buf += chunk
        else:
            if room > 0:
                self.buf += chunk[:room]
            self.truncated = True


def keep_copy(flow: http.HTTPFlow, copy: StreamCopy | None) -> None:
    """At the stream's end: the flow's body is the copy (headers untouched)."""
    if copy is None or flow.response is None:
        return
    flow.response.raw_content = bytes(copy.buf)
    if copy.truncated:
        note = f"stream copy truncated at {copy.cap // 1024} KB"
        flow.comment = f"{flow.comment}; {note}" if flow.comment else note
        flow.metadata.setdefault("keymux", {})["stream_copy_truncated"] = True



def comment_column() -> None:
    """Under mitmweb (it has ``web_columns``; mitmdump has not), the flow list shows the
    comment, so the key and outcome are in the list, unless the user chose the columns."""
    opts = ctx.options
    if "web_columns" in opts and not opts.has_changed("web_columns") \
            and "comment" not in opts.web_columns:
        opts.update(web_columns=[*opts.web_columns, "comment"])
