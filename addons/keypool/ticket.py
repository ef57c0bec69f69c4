"""What the gateway knows about one client request (``Ticket``) and one attempt (``Plan``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from .canon import Refused, parse_json
from .keystate import KeyState, Lease
from .providers import CLIENT_AUTH_HEADERS, ProviderSpec
from .routing import PROVIDER_HEADERS, Route

# Paths whose body names the model; a request there without a JSON model is a 400.
MODEL_PATHS = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/messages/count_tokens",
})
# Body fields some client libraries use to pick an upstream or a key: refused with 400, so
# no client believes it chose where its request went.
UPSTREAM_FIELDS = frozenset({
    "api_base", "api_key", "api_type", "api_version", "azure_endpoint", "base_url",
    "custom_llm_provider",
})
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
STRIP_HEADERS = CLIENT_AUTH_HEADERS + PROVIDER_HEADERS
_DROP = frozenset(h.encode() for h in STRIP_HEADERS)


@dataclass(slots=True)
class Ticket:
    """An admitted request: what every attempt at it needs, and the attempts so far."""

    path: str                      # the canonical path (canon.Target.upstream), query included
    route: Route
    client: str | None
    body: bytes | None             # what goes upstream (a rewritten body, or the client's)
    stream: bool                   # the client asked for a stream
    strip_usage: bool              # keymux asked for stream usage: remove it again
    anthropic: bool                # answer errors in a shape Anthropic's SDK reads too
    est_tokens: int
    arrived: float                 # monotonic
    deadline: float                # monotonic: timeout_s after arrival
    arrived_wall: float = 0.0      # Unix time, for the request log
    queued: float = 0.0            # seconds spent waiting for a free key (at most queue_s)
    waited: float = 0.0            # measured (perf_counter): upstream + free-key waits, for
                                   # keymux_overhead_seconds (reissue.py says what counts)
    attempts: list[dict] = field(default_factory=list)
    hold: object = None            # keypool.spend_sums.Hold: a budget's estimate, until close()
    ask: object = None             # keypool.shared_ask.Ask: the client's admission, for
                                   # the first shared reserve call (Redis) to take
    shared_hold: str | None = None  # its budget hold's token in Redis, until close()

    @property
    def tried(self) -> set[str]:
        return {a["key"] for a in self.attempts}


@dataclass(slots=True)
class Plan:
    """One upstream attempt: which key, where to, and what to change in the request."""

    ticket: Ticket
    lease: Lease
    started: float                 # monotonic, when the attempt began
    ttfb: float | None = None
    finished: bool = False
    cost: float | None = None      # USD of this attempt's usage (None: unknown, or no usage)
    _base: tuple[tuple[bytes, bytes], ...] | None = None  # rewritten fields, key not yet added
    _base_of: object = None                               # ... of these client fields

    @property
    def key(self) -> KeyState:
        return self.lease.key

    @property
    def provider(self) -> ProviderSpec:
        return self.ticket.route.provider

    @property
    def model(self) -> str | None:
        return self.ticket.route.model

    @property
    def path(self) -> str:
        return self.provider.upstream_path(self.ticket.path)

    @property
    def url(self) -> str:
        p = self.provider
        return f"{p.scheme}://{p.host}:{p.port}{self.path}"

    @property
    def label(self) -> str:
        """How a flow names its key: never the secret."""
        return f"key {self.key.name} ({self.key.masked})"

    def rewrite_fields(self, fields: tuple[tuple[bytes, bytes], ...], *,
                       secret: bool = True) -> tuple[tuple[bytes, bytes], ...]:
        """The request's header fields for upstream, in one pass over them: every client
        credential and routing hint dropped, the key in its place (the real one, or with
        ``secret=False`` the masked one a flow may keep), the provider's required headers
        added unless the client sent its own."""
        if self._base_of is not fields:  # once per attempt: upstream request and flow share it
            kept = [(k, v) for k, v in fields if k.lower() not in _DROP]
            present = {k.lower() for k, _ in kept}
            for name, value in self.provider.headers:
                if name.encode() not in present:
                    kept.append((name.encode(), value.encode()))
            if self.ticket.stream:  # the usage tap reads plain SSE, not gzip
                kept = [(k, v) for k, v in kept if k.lower() != b"accept-encoding"]
                kept.append((b"accept-encoding", b"identity"))
            self._base, self._base_of = tuple(kept), fields
        shown = self.key.spec.secret if secret else self.key.masked
        auth = (self.provider.auth_header.encode(), self.provider.auth_value(shown).encode())
        return (*self._base, auth)


def request_row(ticket: Ticket, status: int, plan: Plan | None, u, now: float) -> dict:
    """The request log's row for an answered request (``u``: its Usage; ``now``: monotonic)."""
    ttfb = plan.ttfb + (plan.started - ticket.arrived) if plan and plan.ttfb is not None else None
    return {"ts": ticket.arrived_wall, "client": ticket.client,
            "key": plan.key.name if plan else None, "provider": ticket.route.provider.name,
            "model": ticket.route.model, "status": status, "attempts": ticket.attempts,
            "latency_s": round(now - ticket.arrived, 4),
            "ttfb_s": round(ttfb, 4) if ttfb is not None else None,
            "tokens_in": u.input, "tokens_out": u.output, "stream": int(ticket.stream),
            "cost_usd": plan.cost if plan else None}


def read_json(route_path: str, headers: Mapping[str, str], body: bytes | None) -> dict | None:
    """The body as a JSON object where the model must be read, or wherever JSON is declared
    (in any case, with parameters); None where there is nothing to read. Raises Refused
    (400) for a body the gateway cannot read: on a model path that is never "no model"."""
    must = route_path in MODEL_PATHS
    if not body:
        if must:
            raise Refused(400, "the request body must be JSON naming a 'model'", "invalid_json")
        return None
    if not must and "json" not in headers.get("content-type", "").lower():
        return None
    try:
        data = parse_json(body)
    except ValueError as e:
        raise Refused(400, str(e), "invalid_json") from None
    if not isinstance(data, dict):
        if must:
            raise Refused(400, "the request body must be a JSON object", "invalid_json")
        return None
    if not UPSTREAM_FIELDS.isdisjoint(data):
        field = sorted(UPSTREAM_FIELDS.intersection(data))[0]
        raise Refused(400, f"the body field '{field}' is not supported: keymux's config alone "
                      "decides the upstream and its key", "unsupported_field")
    return data


def rewrite_body(route_path: str, route: Route, data: dict | None, model: str | None,
                 body: bytes | None) -> tuple[bytes | None, bool]:
    """Strip a routing prefix from the model, and ask for stream usage where we can.

    Returns the body to send (the client's own when nothing changes) and whether keymux
    added ``include_usage`` (so the stream tap removes it again)."""
    if data is None:
        return body, False
    opts = data.get("stream_options")
    inject = (route.provider.stream_usage and route_path in USAGE_PATHS
              and data.get("stream") is True
              and not (isinstance(opts, dict) and opts.get("include_usage") is True))
    if route.model == model and not inject:
        return body, False
    if route.model == model and "stream_options" not in data:
        # The common case: splice the option in front instead of re-encoding a long prompt.
        i = body.index(b"{") + 1
        return body[:i] + b'"stream_options":{"include_usage":true},' + body[i:], True
    data = dict(data, model=route.model)
    if inject:
        data["stream_options"] = dict(opts if isinstance(opts, dict) else {}, include_usage=True)
    try:
        return json.dumps(data, ensure_ascii=False).encode(), inject
    except UnicodeEncodeError:  # an unpaired surrogate escape stays an escape
        return json.dumps(data).encode(), inject
