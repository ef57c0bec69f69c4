"""Sends a key test (``keypool.keytest``): one GET on the provider with one key, awaited in
the request hook like any attempt, never blocking the loop."""
from __future__ import annotations

import asyncio

from ..answers import Answer
from ..gateway import Gateway
from ..keytest import FIELDS, KeyTest, plan as plan_for, settle
from ..reissue import UpstreamError
from .upstream import ERROR_BODY_CAP, Upstream


async def run(gw: Gateway, upstream: Upstream, ticket: KeyTest) -> Answer:
    plan = plan_for(gw, ticket)
    if isinstance(plan, Answer):
        return plan
    reply = None
    try:
        try:
            async with asyncio.timeout(max(0.0, ticket.deadline - gw.clock.monotonic())):
                reply = await upstream.send(plan, "GET", FIELDS, ERROR_BODY_CAP)
                gw.first_byte(plan)
                # a success says all we need; only an error's body is read (for its message)
                body = await reply.read() if reply.status >= 400 else None
        except TimeoutError:
            return settle(gw, plan, None, {}, None, error="timeout", answered=_status(reply))
        except UpstreamError as e:
            return settle(gw, plan, None, {}, None, error=str(e), answered=_status(reply))
        return settle(gw, plan, reply.status, reply.headers, body)
    except BaseException:
        gw.abandon(plan)  # cancelled or a bug: free the key, blame nobody (no-op once settled)
        raise
    finally:
        if reply is not None:
            reply.close()


def _status(reply) -> int | None:
    return None if reply is None else reply.status
