"""A client's admission, shared across processes (``state: {backend: redis}``).

Admission checks a client's rpm and budget on this process's view at once (no round
trip). With shared limits, the request also carries an ``Ask``: its client's rpm and
budget hold, checked and taken by Redis in the first attempt's reserve call, together
with the key's slot (keypool.shared_lua). Refused there, the request is answered the same
429 (``client_rate_limited``, ``budget_exceeded``) and its key's slot is not taken.
Pure: no Redis here.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import answers
from .answers import Answer

# RESERVE's budget index -> (kind, period) of the limit over
LIMITS = {1: ("usd", "day"), 2: ("usd", "month"), 3: ("tokens", "day")}


@dataclass(slots=True)
class Ask:
    client: str
    rpm: int                      # 0: none
    held: bool                    # the client has a budget: the estimate is held
    usd: float = 0.0              # the hold's estimate
    tokens: int = 0
    limits: tuple[float, float, float] = (0, 0, 0)  # daily usd, monthly usd, daily tokens
    day: str = ""                 # the periods' labels: where the spend totals are
    month: str = ""
    anthropic: bool = False
    budgets: object = None        # keypool.budgets.Budgets: says why a budget refused
    wall: float = 0.0

    def refused(self, code: int, rest) -> Answer:
        """RESERVE's refusal (2: rpm, ms to wait; 3: budget index, what is committed)."""
        if code == 2:
            return answers.error(429, f"client '{self.client}' is over its {self.rpm} "
                                 "requests per minute", "client_rate_limited",
                                 retry_after=max(int(rest[0]), 1) / 1000.0,
                                 anthropic=self.anthropic)
        kind, period = LIMITS[int(rest[0])]
        used = float(rest[1].decode() if isinstance(rest[1], bytes) else rest[1])
        limit = self.limits[int(rest[0]) - 1]
        over = self.budgets.over_message(self.client, kind, period, limit, used, self.wall)
        return over.answer(self.anthropic)


def ask_for(client, hold, budgets, wall: float, anthropic: bool) -> Ask | None:
    """The shared part of a client's admission; None: nothing to share."""
    budget = client.budget if hold is not None else None
    if not client.rpm and budget is None:
        return None
    ask = Ask(client.name, client.rpm or 0, budget is not None, anthropic=anthropic,
              budgets=budgets, wall=wall)
    if budget is not None:
        lim = {(k, p): v for k, p, v in budget.limits()}
        ask.limits = (lim.get(("usd", "day"), 0), lim.get(("usd", "month"), 0),
                      lim.get(("tokens", "day"), 0))
        ask.usd, ask.tokens = hold.usd, hold.tokens
        ask.day, ask.month = budgets.ledger.label("day", wall), budgets.ledger.label("month", wall)
    return ask
