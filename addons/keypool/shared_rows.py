"""The rows shared events leave in Redis, written with their publication and read back
when a process (re)connects (keypool.shared_redis). Encoding only: the caller runs the
pipeline and owns the connection.

- ``PREFIX:cool:KEY``: a hash per key, scope -> {end (Unix), reason, fp}; expires with
  its longest cooldown;
- ``PREFIX:outage``: one hash, provider -> its live outage (an ``OutageEvent``'s dict:
  since, next probe, fp); the field is removed when the outage ends; the hash expires a
  day after its last write (a row left by a fleet that stopped costs one probe);
- ``PREFIX:spend:LABEL``: a hash per period, "who|dim|name" -> [usd, tokens], each
  process's own totals of budgeted clients and keys (keypool.spend, Ledger.own).
"""
from __future__ import annotations

import json
import logging

from .shared import Event, decode
from .shared_health import OutageEvent

logger = logging.getLogger("keymux")

OUTAGE_KEEP_S = 86_400
SPEND_KEEP_S = 40 * 86_400  # a month's totals outlive the month a little


def write(pipe, prefix: str, ev) -> None:
    """Queue on ``pipe`` the rows an event changes (a learned budget leaves none)."""
    if isinstance(ev, Event):
        h = f"{prefix}:cool:{ev.key}"
        if ev.kind == "cool":
            row = json.dumps({"end": ev.end, "reason": ev.reason, "fp": ev.fp})
            pipe.hset(h, mapping={s: row for s in ev.scopes})
            pipe.expireat(h, int(ev.end) + 1, gt=True)
            pipe.expireat(h, int(ev.end) + 1, nx=True)
        else:
            pipe.hdel(h, *ev.scopes)
    elif isinstance(ev, OutageEvent):
        h = f"{prefix}:outage"
        if ev.kind == "outage":
            pipe.hset(h, ev.provider, json.dumps(ev.to_dict()))
            pipe.expire(h, OUTAGE_KEEP_S)
        else:
            pipe.hdel(h, ev.provider)


async def read(client, prefix: str) -> list:
    """Every cooldown and outage Redis holds, as events (a malformed row is skipped)."""
    events: list = []
    names = [k async for k in client.scan_iter(match=f"{prefix}:cool:*", count=500)]
    for full in names:
        name = full.decode().split(":cool:", 1)[1]
        for scope, raw in (await client.hgetall(full)).items():
            d = json.loads(raw)
            events.append(Event("cool", name, d["fp"], (scope.decode(),), d["end"], d["reason"]))
    for provider, raw in (await client.hgetall(f"{prefix}:outage")).items():
        try:
            events.append(decode(json.loads(raw)))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("keymux: shared state: ignored a malformed outage row for %r",
                           provider.decode(errors="replace"))
    return events


def write_spend(pipe, prefix: str, channel: str, origin: str, who: str, label: str, dim: str,
                name: str, usd: float, tokens: int) -> None:
    """This process's (``who``) running total, stored and published."""
    h = f"{prefix}:spend:{label}"
    pipe.hset(h, f"{who}|{dim}|{name}", json.dumps([usd, tokens]))
    pipe.expire(h, SPEND_KEEP_S)
    pipe.publish(channel, json.dumps({
        "kind": "spend", "origin": origin, "who": who, "label": label,
        "dim": dim, "name": name, "usd": usd, "tokens": tokens}))


async def read_spend(client, prefix: str, label: str) -> list[tuple]:
    """Every process's totals of one period: (who, label, dim, name, usd, tokens)."""
    rows = []
    for field, raw in (await client.hgetall(f"{prefix}:spend:{label}")).items():
        who, dim, name = field.decode().split("|", 2)
        usd, tokens = json.loads(raw)
        rows.append((who, label, dim, name, usd, tokens))
    return rows
