"""The gateway's decisions, free of I/O: a request's facts in, an ``Answer`` or a ``Plan`` out.

    request -> reserved path? -> authenticate -> read model -> route -> allowed? -> pick key
            -> Plan (rewrite the request, send it)         ... upstream answers ...
            -> finish(plan, status, usage) -> pool counters, metrics

The mitmproxy glue (``keypool.mitm``) applies a Plan to a flow; tests call ``handle``
directly. Headers are a case-insensitive mapping (mitmproxy's ``Headers``) or a dict with
lower-case names.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Mapping

from . import answers, endpoints
from .answers import Answer
from .clients import ClientAuth, presented_token
from .clock import Clock, SystemClock
from .config import Config
from .globs import GlobSet
from .metrics import Metrics
from .pool import KeyState, NoKeyAvailable, Pool
from .providers import CLIENT_AUTH_HEADERS, ProviderSpec
from .routing import PROVIDER_HEADERS, Route, RouteError, Router
from .usage import Usage

# Paths whose body names the model; a request there without a JSON model is a 400.
MODEL_PATHS = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/messages/count_tokens",
})
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
STRIP_HEADERS = CLIENT_AUTH_HEADERS + PROVIDER_HEADERS
_DROP = frozenset(h.encode() for h in STRIP_HEADERS)


@dataclass(slots=True)
class Plan:
    """One upstream attempt: which key, where to, and what to change in the request."""

    key: KeyState
    provider: ProviderSpec
    model: str | None
    client: str | None
    path: str                      # upstream path, query included
    body: bytes | None             # a rewritten body, or None to send the client's as is
    stream: bool                   # the client asked for a stream
    strip_usage: bool              # keymux asked for stream usage: remove it again
    started: float                 # monotonic, when the plan was made
    rule: int                      # the routing rule that chose the provider
    ttfb: float | None = None
    finished: bool = field(default=False)

    def rewrite_fields(self, fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
        """The request's header fields for upstream, in one pass over them: every client
        credential and routing hint dropped, the real key in its place, the provider's
        required headers added unless the client sent its own."""
        drop = _DROP
        kept = [(k, v) for k, v in fields if k.lower() not in drop]
        present = {k.lower() for k, _ in kept}
        for name, value in self.provider.headers:
            if name.encode() not in present:
                kept.append((name.encode(), value.encode()))
        if self.stream:  # the usage tap reads plain SSE, not gzip
            kept = [(k, v) for k, v in kept if k.lower() != b"accept-encoding"]
            kept.append((b"accept-encoding", b"identity"))
        kept.append((self.provider.auth_header.encode(),
                     self.provider.auth_value(self.key.spec.secret).encode()))
        return tuple(kept)

    @property
    def label(self) -> str:
        """How a flow names its key: never the secret."""
        return f"key {self.key.name} ({self.key.masked})"


class Gateway:
    def __init__(self, config: Config, clock: Clock | None = None,
                 rng: random.Random | None = None, admin_token: str | None = None):
        self.clock = clock or SystemClock()
        self.admin_token = admin_token or None
        self.started_wall = self.clock.wall()
        self.reload_error: str | None = None
        self.pool = Pool(config, self.clock, rng)
        self.metrics = Metrics(self.pool.snapshot, self.clock.wall)
        self.update(config)

    def update(self, config: Config) -> None:
        """Swap in a new config as one step; key state carries over (see Pool.update)."""
        self.router = Router(config)
        self.clients = ClientAuth(config.clients)
        self.pool.update(config)
        globs = [g for p in config.providers.values() for g in p.models]
        self.metrics.set_model_globs(GlobSet(globs + [g for k in config.keys for g in k.models]))
        self.config = config
        self.loaded_wall = self.clock.wall()

    # -- request side --------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str],
               body: bytes | None) -> Answer | Plan:
        result = self._handle(method, path, headers, body)
        if isinstance(result, Answer) and result.status >= 400:
            self.metrics.gateway_answers.labels(str(result.status),
                                                result.headers.get("x-keymux-error", "")).inc()
        return result

    def _handle(self, method: str, path: str, headers: Mapping[str, str],
                body: bytes | None) -> Answer | Plan:
        route_path = path.partition("?")[0]
        own = endpoints.reserved(self, method, route_path, headers)
        if own is not None:
            return own
        anthropic = route_path.startswith("/v1/messages")
        if not route_path.startswith("/v1/"):
            return answers.error(404, f"keymux serves /v1/... paths, not {route_path[:100]}",
                                 "unknown_path")
        client = None
        if not self.clients.open:
            client = self.clients.identify(presented_token(headers))
            if client is None:
                return answers.error(401, "missing or invalid client token", "invalid_client_token",
                                     anthropic=anthropic)
        if method == "GET" and (route_path == "/v1/models" or route_path.startswith("/v1/models/")):
            return endpoints.models(self, route_path, headers, client)
        data, bad = _read_json(route_path, headers, body)
        if bad:
            return answers.error(400, bad, "invalid_json", anthropic=anthropic)
        model = data.get("model") if data else None
        if model is not None and not isinstance(model, str):
            return answers.error(400, "'model' must be a string", "invalid_model", anthropic=anthropic)
        if route_path in MODEL_PATHS and not model:
            return answers.error(400, "the request body must name a 'model'", "missing_model",
                                 anthropic=anthropic)
        header = headers.get(PROVIDER_HEADERS[0]) or headers.get(PROVIDER_HEADERS[1])
        try:
            route: Route | None = self.router.resolve(path=route_path, model=model, header=header)
            route_error = None
        except RouteError as e:
            route, route_error = None, e
        wanted = route.model if route else model
        if not self.clients.allows(client, wanted):
            return answers.error(403, f"client '{client.name}' may not use model '{wanted[:100]}'",
                                 "model_not_allowed", anthropic=anthropic)
        if route_error:
            return answers.error(route_error.status, route_error.message, route_error.code,
                                 anthropic=anthropic)
        try:
            key = self.pool.pick(route.provider.name, route.model)
        except NoKeyAvailable as e:
            if e.retry_after is None:
                return answers.error(404, e.message, "no_key_available", anthropic=anthropic)
            return answers.error(429, e.message, "all_keys_cooling", retry_after=e.retry_after,
                                 anthropic=anthropic)
        new_body, strip = _rewrite_body(route_path, route, data, model, body)
        return Plan(key=key, provider=route.provider, model=route.model,
                    client=client.name if client else None,
                    path=route.provider.upstream_path(path), body=new_body,
                    stream=bool(data and data.get("stream") is True), strip_usage=strip,
                    started=self.clock.monotonic(), rule=route.rule)

    # -- answer side ---------------------------------------------------------------

    def first_byte(self, plan: Plan) -> None:
        plan.ttfb = self.clock.monotonic() - plan.started

    def finish(self, plan: Plan, status: int | None, usage: Usage | None = None) -> None:
        """Account one attempt exactly once: status None means no answer (reset, disconnect)."""
        if plan.finished:
            return
        plan.finished = True
        latency = self.clock.monotonic() - plan.started
        u = usage or Usage()
        ok = status is not None and status < 400
        self.pool.release(plan.key, ok=ok, latency=latency, tokens_in=u.input, tokens_out=u.output)
        self.metrics.observe(plan.provider.name, plan.key.name, status, latency, plan.ttfb,
                             plan.model, u.input, u.output)


def _read_json(route_path: str, headers: Mapping[str, str], body: bytes | None):
    """The body as a JSON object where the model must be read (or JSON is declared)."""
    must = route_path in MODEL_PATHS
    if not body or not (must or "json" in headers.get("content-type", "")):
        return None, ("the request body must be JSON naming a 'model'" if must and not body else None)
    try:
        data = json.loads(body)
    except ValueError as e:
        return None, (f"the request body is not valid JSON: {e}" if must else None)
    if not isinstance(data, dict):
        return None, ("the request body must be a JSON object" if must else None)
    return data, None


def _rewrite_body(route_path: str, route: Route, data: dict | None, model: str | None,
                  body: bytes | None) -> tuple[bytes | None, bool]:
    """Strip a routing prefix from the model, and ask for stream usage where we can."""
    if data is None:
        return None, False
    opts = data.get("stream_options")
    inject = (route.provider.stream_usage and route_path in USAGE_PATHS
              and data.get("stream") is True
              and not (isinstance(opts, dict) and opts.get("include_usage") is True))
    if route.model == model and not inject:
        return None, False
    if route.model == model and opts is None:
        # The common case: splice the option in front instead of re-encoding a long prompt.
        i = body.index(b"{") + 1
        return body[:i] + b'"stream_options":{"include_usage":true},' + body[i:], True
    data = dict(data, model=route.model)
    if inject:
        data["stream_options"] = dict(opts if isinstance(opts, dict) else {}, include_usage=True)
    return json.dumps(data, ensure_ascii=False).encode(), inject
