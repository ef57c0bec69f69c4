"""POST /_keymux/keys/NAME/test: one cheap upstream call with one named key.

The admin's "test this key" (the web UI's button). The request the gateway answers is not
sent upstream; instead it becomes a ``KeyTest`` ticket whose only attempt is a ``GET
/v1/models`` (mapped onto the provider's base URL) with that key, whatever the key's state
(disabled, cooling, dead: the admin asks about exactly that key). The attempt is judged by
the normal policy (``Gateway.judge``): a 401/403 marks the key dead, a 429 cools it, and a
success ends a whole-key cooldown, which is how a dead key whose secret was fixed at the
provider comes back without waiting ``auth_error_s``. The answer is a JSON summary, never
the upstream's body: its error message only, masked and cut short.

Pure: the mitmproxy glue (``mitm/keytest.py``) sends the attempt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from . import answers
from .answers import Answer
from .redact import scrub
from .routing import Route
from .ticket import Plan, Ticket

if TYPE_CHECKING:
    from .gateway import Gateway

TEST_PATH = "/v1/models"  # every preset serves it; it costs no tokens
TEST_TIMEOUT_S = 20.0     # at most this long, and at most routing.timeout_s
MESSAGE_CHARS = 200
# What the attempt sends besides the key and the provider's own headers.
FIELDS = ((b"accept", b"application/json"),)


@dataclass(slots=True)
class KeyTest(Ticket):
    """A ticket for one named key; the glue sends it itself (see ``mitm/keytest.py``)."""
    key_name: str = ""


def admit(gw: "Gateway", method: str, name: str, headers: Mapping[str, str]) -> Answer | KeyTest:
    from .endpoints import admin_refusal  # endpoints routes here: import late
    if method != "POST":
        return answers.error(405, "use POST to test a key", "method_not_allowed")
    refused = admin_refusal(gw, headers, write=True)
    if refused is not None:
        return refused
    key = gw.pool.by_name.get(name)
    if key is None:
        return answers.error(404, f"no key named '{name[:64]}'", "key_not_found")
    now = gw.clock.monotonic()
    timeout = min(float(gw.config.routing.timeout_s), TEST_TIMEOUT_S)
    route = Route(gw.config.providers[key.spec.provider], None, 0)
    return KeyTest(path=TEST_PATH, route=route, client=None, body=None, stream=False,
                   strip_usage=False, anthropic=False, est_tokens=1, arrived=now,
                   deadline=now + timeout, arrived_wall=gw.clock.wall(), key_name=name)


def plan(gw: "Gateway", ticket: KeyTest) -> Plan | Answer:
    """The one attempt: a lease on the named key whatever its state."""
    lease = gw.pool.lease_named(ticket.key_name)
    if lease is None:  # removed by a reload since admit (the glue awaits nothing in between)
        return answers.error(404, f"no key named '{ticket.key_name[:64]}'", "key_not_found")
    return Plan(ticket=ticket, lease=lease, started=gw.clock.monotonic())


def settle(gw: "Gateway", plan: Plan, status: int | None, headers: Mapping[str, str],
           body: bytes | None, error: str | None = None, answered: int | None = None) -> Answer:
    """Judge the attempt as any other, account it, and say what happened."""
    verdict = gw.judge(plan, status, headers, body, error=error, answered=answered)
    gw.finish(plan, status, outcome=verdict.outcome)  # a no-op when judge finished it
    key = plan.key
    if verdict.outcome == "ok":
        gw.pool.revive(key)
    attempt = plan.ticket.attempts[-1]
    message = error or (message_of(body) if status is not None and status >= 400 else None)
    if message:
        message = scrub(gw.masker.masked_text(message), gw._secrets)[:MESSAGE_CHARS]
    return answers.json_answer(200, {
        "key": key.name, "provider": key.spec.provider, "ok": verdict.outcome == "ok",
        "status": status, "outcome": verdict.outcome,
        "latency_ms": round(attempt["latency_s"] * 1000),
        "state": key.state(gw.clock.monotonic()), "error": message or None})


def message_of(body: bytes | None) -> str:
    """The error message of an OpenAI- or Anthropic-shaped error body, else its start."""
    text = (body or b"")[:64 * 1024].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text[:MESSAGE_CHARS].split())
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    return " ".join(text[:MESSAGE_CHARS].split())
