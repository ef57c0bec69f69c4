"""A request's admission: path, client, body, route, budget and rate checks -> Answer | Ticket."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from . import answers, endpoints, exposure
from .answers import Answer
from .canon import Refused, canonical_target, inflate, model_problem, too_large
from .clients import presented_token
from .limits import estimate_tokens
from .refusals import Seen
from .routing import PROVIDER_HEADERS, RouteError
from .shared_ask import ask_for
from .ticket import MODEL_PATHS, Ticket, read_json, rewrite_body

if TYPE_CHECKING:
    from .gateway import Gateway


def admit(gw: Gateway, method: str, path: str, headers: Mapping[str, str],
          body: bytes | None, seen: Seen) -> Answer | Ticket:
    """``body`` is as the client sent it (still compressed): it is inflated only once
    the client is authenticated, and only up to max_body_mb. ``seen`` gathers what a
    refusal's log row may tell (path, client name, model, provider)."""
    try:
        target = canonical_target(path)
    except Refused as e:
        seen.path = path
        return answers.error(e.status, e.message, e.code)
    route_path = seen.path = target.path  # every decision below is taken on this one form
    if (refused := exposure.guard(gw, route_path, headers)) is not None:  # browsers, open binds
        return refused
    own = endpoints.reserved(gw, method, route_path, headers)
    if own is not None:
        return own
    anthropic = route_path.startswith("/v1/messages")
    if not route_path.startswith("/v1/"):
        return answers.error(404, f"keymux serves /v1/... paths, not {route_path[:100]}",
                             "unknown_path")
    client = None
    if not gw.clients.open:
        client = gw.clients.identify(presented_token(headers))
        if client is None:
            return answers.error(401, "missing or invalid client token", "invalid_client_token",
                                 anthropic=anthropic)
        seen.client = client.name
    if method == "GET" and (route_path == "/v1/models" or route_path.startswith("/v1/models/")):
        return endpoints.models(gw, route_path, headers, client)
    try:
        body, data = read_body(gw, route_path, headers, body)
    except Refused as e:
        return answers.error(e.status, e.message, e.code, anthropic=anthropic)
    model = seen.model = data.get("model") if data else None
    if route_path in MODEL_PATHS and not model:
        return answers.error(400, "the request body must name a 'model'", "missing_model",
                             anthropic=anthropic)
    header = headers.get(PROVIDER_HEADERS[0]) or headers.get(PROVIDER_HEADERS[1])
    try:
        route = gw.router.resolve(path=route_path, model=model, header=header)
    except RouteError as e:
        route, route_error = None, e
    wanted = route.model if route else model
    if route:
        seen.provider = route.provider.name
    if not gw.clients.allows(client, wanted):
        return answers.error(403, f"client '{client.name}' may not use model '{wanted[:100]}'",
                             "model_not_allowed", anthropic=anthropic)
    if route is None:
        return answers.error(route_error.status, route_error.message, route_error.code,
                             anthropic=anthropic)
    if client is not None and client.budget is not None:  # before rpm: uses no slot
        over = gw.budgets.over(client.name, client.budget, gw.clock.wall())
        if over is not None:
            return over.answer(anthropic)
    now = gw.clock.monotonic()
    if client is not None and client.rpm:
        wait = gw.client_rate.check(client.name, client.rpm, now)
        if wait > 0:
            return answers.error(429, f"client '{client.name}' is over its {client.rpm} "
                                 "requests per minute", "client_rate_limited",
                                 retry_after=wait, anthropic=anthropic)
    return _ticket(gw, target.upstream, route_path, route, client, data, model, body, anthropic,
                   now)


def _ticket(gw: Gateway, upstream: str, route_path: str, route, client, data: dict | None,
            model: str | None, body: bytes | None, anthropic: bool, now: float) -> Ticket:
    """The admitted request, its body rewritten for the route, its budget estimate held."""
    new_body, strip = rewrite_body(route_path, route, data, model, body)
    ticket = Ticket(path=upstream, route=route, client=client.name if client else None,
                    body=new_body, stream=bool(data and data.get("stream") is True),
                    strip_usage=strip, anthropic=anthropic,
                    est_tokens=estimate_tokens(data, len(body or b"")),
                    arrived=now, deadline=now + gw.config.routing.timeout_s,
                    arrived_wall=gw.clock.wall())
    if gw.budgets.active:  # no await from the check in admit to here: one step
        ticket.hold = gw.budgets.hold(ticket.client, route.provider.name, route.model,
                                      data, len(body or b""), ticket.arrived_wall)
    if client is not None and gw.pool.shared.shares_limits:  # and across processes
        ticket.ask = ask_for(client, ticket.hold, gw.budgets, ticket.arrived_wall, anthropic)
    return ticket


def read_body(gw: Gateway, route_path: str, headers: Mapping[str, str],
              body: bytes | None) -> tuple[bytes | None, dict | None]:
    """The body inflated (bounded) and its JSON read; Refused (4xx) if it cannot be."""
    limit = gw.max_body
    if body and len(body) > limit:  # mitmproxy's body_size_limit normally stops it first
        raise too_large(limit)
    if body:
        body = inflate(body, headers.get("content-encoding", ""), limit)
    data = read_json(route_path, headers, body)
    if data is not None and "model" in data:
        problem = model_problem(data["model"])
        if problem:
            raise Refused(400, problem, "invalid_model")
    return body, data
