"""One client request, attempt after attempt, until an answer the client may see.

The sender is injected (``send(plan) -> Reply``), so this loop is tested without sockets;
the mitmproxy glue gives it an HTTP client. A failed attempt (429, 5xx, 401, reset,
timeout) is re-issued on another key, up to ``max_attempts`` distinct keys and within
``timeout_s``; nothing of a failed attempt ever reaches the client. When no key is free,
the request waits for the soonest one if that is within ``queue_s``.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter
from typing import Awaitable, Callable, Mapping, Protocol

from .answers import Answer
from .gateway import Gateway
from .pool import NoKeyAvailable, ProviderOutage
from .ticket import Plan, Ticket


class UpstreamError(Exception):
    """No HTTP answer: refused, reset, TLS or DNS failure. ``str()`` says which, key-free."""


class Reply(Protocol):
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


Sender = Callable[[Plan], Awaitable[Reply]]
# Told of each attempt that failed (re-issued, or the last before a 504/429/502): the plan,
# the reply if there was one (closed), its body if it was read, and the error if no answer.
OnFailed = Callable[[Plan, "Reply | None", "bytes | None", "str | None"], None]


@dataclass(slots=True)
class Outcome:
    """Either the gateway's own answer, or the attempt whose reply the client gets.

    ``body`` is the reply's whole body, except for a successful stream, which the caller
    still has to relay (and then ``finish``)."""

    answer: Answer | None = None
    plan: Plan | None = None
    reply: Reply | None = None
    body: bytes | None = None


async def serve(gw: Gateway, ticket: Ticket, send: Sender, *,
                alive: Callable[[], bool] = lambda: True, sleep=asyncio.sleep,
                on_failed: OnFailed | None = None) -> Outcome:
    max_attempts = gw.config.routing.max_attempts
    while True:
        try:
            plan = gw.pick(ticket)
        except NoKeyAvailable as e:
            wait = _queue_wait(gw, ticket, e)
            if wait is None or not alive():
                return Outcome(answer=gw.refuse(ticket, e))
            provider = ticket.route.provider.name
            gw.waiting[provider] = gw.waiting.get(provider, 0) + 1
            ticket.queued += wait
            began = perf_counter()
            try:
                await sleep(wait)
            finally:
                gw.waiting[provider] -= 1
                ticket.waited += perf_counter() - began
            continue
        if gw.pool.shared.needs_slot(plan.key, ticket.ask):
            got = await _shared_slot(gw, plan)
            if got is False:
                continue  # another process holds the key's last slot: held back, pick again
            if got is not True:  # the client is over its rpm or budget, across processes
                gw.count_answer(got)
                return Outcome(answer=got)
        elif ticket.ask is not None:  # Redis is away: the admission's local checks stood
            ticket.ask = None
        if ticket.attempts:  # this attempt re-issues a failed one: count why that failed
            gw.metrics.reissued(ticket.route.provider.name, ticket.attempts[-1]["outcome"])
        outcome = await _attempt(gw, plan, send, on_failed)
        if outcome is not None:
            return outcome
        if gw.clock.monotonic() >= ticket.deadline:
            return Outcome(answer=gw.timed_out(ticket))
        if len(ticket.attempts) >= max_attempts or not alive():
            answer = gw.exhausted(ticket)
            gw.count_answer(answer)
            return Outcome(answer=answer)


async def _shared_slot(gw: Gateway, plan: Plan) -> bool | Answer:
    """Take the key's shared slots and, on the first call, the client's admission (one
    Redis round trip, keypool.shared_lua). False: the key is full across the processes
    and was given back, held for the wait; an Answer: the client is refused."""
    ticket = plan.ticket
    try:
        slot, wait = await gw.pool.shared.reserve(plan.key, ticket.est_tokens, ticket.ask)
    except BaseException:
        gw.abandon(plan)
        raise
    if isinstance(wait, Answer):
        ticket.ask = None
        plan.finished = True
        gw.pool.unlease(plan.lease, 0.0)
        return wait
    if wait > 0:
        plan.finished = True
        gw.pool.unlease(plan.lease, wait)
        return False
    if ticket.ask is not None:  # taken (or Redis was out of reach: local checks stood)
        if slot is not None and ticket.ask.held:
            ticket.shared_hold = slot.token
        ticket.ask = None
    plan.lease.slot = slot
    return True


def _queue_wait(gw: Gateway, ticket: Ticket, e: NoKeyAvailable) -> float | None:
    """How long to wait for a busy pool, or None to answer now."""
    if e.retry_after is None or isinstance(e, ProviderOutage):  # a down provider: 503 at once
        return None
    now = gw.clock.monotonic()
    wait = max(e.retry_after, 0.001)
    # queue_s bounds the whole time a request waits, however often it has to wait again.
    if ticket.queued + wait > gw.config.routing.queue_s or now + wait >= ticket.deadline:
        return None
    # A queue much longer than the provider has keys would only hand out late 429s: under
    # overload, refuse at once so clients back off; a burst is still smoothed.
    provider = ticket.route.provider.name
    if gw.waiting.get(provider, 0) >= 2 * len(gw.pool.by_provider.get(provider, ())) + 2:
        return None
    return wait


async def _attempt(gw: Gateway, plan: Plan, send: Sender,
                   on_failed: OnFailed | None = None) -> Outcome | None:
    """One attempt; the Outcome to return to the client, or None to re-issue.

    The plan's key is released on every way out but a returned Outcome (the caller then
    owns it): ``finish`` runs at most once, so a release here after judge's is harmless."""
    ticket = plan.ticket
    reply = None
    try:
        try:
            # Waiting for the upstream, not keymux's own time (keymux_overhead_seconds):
            # from handing the attempt to the sender to its response headers, and the body
            # read unless it is a stream the caller relays.
            began = perf_counter()
            try:
                async with asyncio.timeout_at(_loop_deadline(gw, ticket)):
                    reply = await send(plan)
                    gw.first_byte(plan)
                    body = await reply.read() if reply.status >= 400 or not ticket.stream else None
            finally:
                ticket.waited += perf_counter() - began
        except TimeoutError:
            gw.judge(plan, None, {}, None, error="timeout", answered=_status(reply))
            if on_failed is not None:
                on_failed(plan, reply, None, "timeout")
            return Outcome(answer=gw.timed_out(ticket))
        except UpstreamError as e:  # no answer, or its body broke off / was over the cap
            gw.judge(plan, None, {}, None, error=str(e), answered=_status(reply))
            if on_failed is not None:
                on_failed(plan, reply, None, str(e))
            return None
        verdict = gw.judge(plan, reply.status, reply.headers, body)
        if not verdict.retry:
            return Outcome(plan=plan, reply=reply, body=body)
        reply.close()
        if on_failed is not None:  # only now: a success costs nothing
            on_failed(plan, reply, body, None)
        return None
    except BaseException:
        gw.abandon(plan)  # cancelled (client gone) or a bug: free the key, blame nobody
        if reply is not None:
            reply.close()
        raise


def _status(reply: Reply | None) -> int | None:
    return None if reply is None else reply.status


def _loop_deadline(gw: Gateway, ticket: Ticket) -> float:
    """The ticket's deadline on the event loop's clock (the gateway's may be a fake)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (ticket.deadline - gw.clock.monotonic())
