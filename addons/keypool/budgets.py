"""Client and key budgets (keys.yaml ``budget:``), read from the spend ledger.

A **client** over any of its budgets (``daily_usd``, ``monthly_usd``, ``daily_tokens``) is
refused at admission with 429 ``budget_exceeded`` and ``Retry-After`` = seconds until that
period resets (keypool.periods: ``routing.daily_reset`` in ``routing.timezone``). A **key**
over its ``daily_usd``/``monthly_usd`` leaves rotation until its period resets.

"Over" counts what is committed: spent in the period (the ledger's running totals) plus
the estimates that requests in flight hold. Each admitted request of a client or on a key
with a budget reserves an estimate (``estimate``): its input as ~4 body bytes a token, its
output as the request's ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``)
or 256, priced like the answer will be. The hold is moved to the key an attempt is sent
with, and released once the request is over (its real cost is added by then), on every
way out. So concurrent requests see each other: a request is admitted only while
committed < limit; it may cross the limit, by at most its own cost.

A request whose price is unknown reserves and spends 0 USD: only ``daily_tokens`` limits it.
Pure; the time is passed in (wall clock, Unix seconds).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

from . import answers
from .answers import Answer
from .clock import Clock
from .config import Config
from .config_money import Budget
from .keylog import NOTICE
from .limits import _BUDGET_FIELDS
from .periods import zone
from .spend import Ledger
from .spend_sums import Hold
from .usage import Usage

DEFAULT_OUTPUT_TOKENS = 256  # a request without max_tokens: the same guess as the tpm limits
WORDS = {"day": "daily", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Over:
    """A client over a budget: what to tell it."""
    message: str
    retry_after: float   # seconds until the period resets

    def answer(self, anthropic: bool = False) -> Answer:
        return answers.error(429, self.message, "budget_exceeded",
                             retry_after=self.retry_after, anthropic=anthropic)


def estimate(body: dict | None, body_len: int) -> tuple[int, int]:
    """(input, output) tokens a request may use, before it is sent (see the module doc)."""
    out = DEFAULT_OUTPUT_TOKENS
    if isinstance(body, dict):
        for name in _BUDGET_FIELDS:
            v = body.get(name)
            if isinstance(v, int) and not isinstance(v, bool):
                out = max(0, v)
                break
    return max(1, -(-max(0, body_len) // 4)), out


class Budgets:
    def __init__(self, ledger: Ledger, clock: Clock, keylog=None,
                 price: Callable[[str, str | None, Usage, float], float | None] | None = None):
        self.ledger, self.clock = ledger, clock
        self.keylog = keylog           # a KeyLog: one line when a key leaves or returns
        self.price = price or (lambda provider, model, usage, wall: None)
        self.clients: dict[str, Budget] = {}
        self.keys: dict[str, Budget] = {}
        self.active = False            # any budget configured: requests reserve estimates
        self._out: dict[str, str] = {}  # key -> the limit it is out of rotation for (logged)
        self.shared = None  # keypool.shared_redis.RedisState: budgets across processes

    def update(self, config: Config) -> None:
        """A reload: the new limits apply to the next request; holds in flight stay."""
        self.clients = {c.name: c.budget for c in config.clients or () if c.budget}
        self.keys = {k.name: k.budget for k in config.keys if k.budget}
        self.active = bool(self.clients or self.keys)
        for name in list(self._out):
            if name not in self.keys:  # its budget is gone: it serves again
                self._returned(name, "its budget was removed")

    # -- clients ----------------------------------------------------------------------

    def over(self, client: str, budget: Budget, wall: float) -> Over | None:
        """The client's exceeded budget that resets last, or None to admit."""
        worst = None
        for kind, period, limit in budget.limits():
            used = self._committed(kind, "client", client, period, wall)
            if used >= limit:
                end = self.ledger.period_end(period, wall)
                if worst is None or end > worst[0]:
                    worst = (end, kind, period, limit, used)
        if worst is None:
            return None
        end, kind, period, limit, used = worst
        return self.over_message(client, kind, period, limit, used, wall)

    def over_message(self, client: str, kind: str, period: str, limit: float, used: float,
                     wall: float) -> Over:
        """What a client over one limit is told (here, or by the shared check)."""
        end = self.ledger.period_end(period, wall)
        what = f"{limit:g} USD" if kind == "usd" else f"{int(limit)} tokens"
        done = f"{used:.4g} USD" if kind == "usd" else f"{int(used)} tokens"
        return Over(f"client '{client}' is over its {WORDS[period]} budget of {what} ({done} "
                    f"spent or reserved); it resets at {self._when(end)}", end - wall)

    def hold(self, client: str | None, provider: str, model: str | None, body: dict | None,
             body_len: int, wall: float) -> Hold:
        """Reserve a request's estimate for its client (``rebind`` adds its key)."""
        tin, tout = estimate(body, body_len)
        usd = self.price(provider, model, Usage(input=tin, output=tout, seen=True), wall)
        return self.ledger.reserve(None, client, usd or 0.0, tin + tout)

    def rebind(self, hold: Hold, key: str) -> Hold:
        """The request's next attempt goes to ``key``: the estimate moves there."""
        target = key if key in self.keys else None  # only a key with a budget reads it
        if hold.released or hold.key == target:
            return hold
        self.ledger.release(hold)
        return self.ledger.reserve(target, hold.client, hold.usd, hold.tokens)

    def share(self, key: str, client: str | None, wall: float) -> None:
        """After a spend: tell the other processes this one's own totals of the budgeted
        key and client (they add them to theirs: keypool.shared_redis). Not before Redis
        was first reached: its own earlier total there is not known yet (Ledger.own)."""
        if self.shared is None or self.ledger.base is None:
            return
        for dim, name, table in (("key", key, self.keys), ("client", client, self.clients)):
            if name is not None and name in table:
                for period in ("day", "month"):
                    usd, tokens = self.ledger.own(dim, name, period, wall)
                    self.shared.spent(self.ledger.label(period, wall), dim, name, usd, tokens)

    # -- keys -------------------------------------------------------------------------

    def key_wait(self, key: str, wall: float) -> float:
        """0.0 while ``key`` may serve, else seconds until the period it is over resets.
        Logs a key leaving (its spend reached a limit) or returning (the period reset)."""
        budget = self.keys.get(key)
        if budget is None:
            return 0.0
        wait, spent_out = 0.0, ""
        for kind, period, limit in budget.limits():
            if self.ledger.committed("key", key, period, wall) >= limit:
                wait = max(wait, self.ledger.period_end(period, wall) - wall)
                if self.ledger.spent("key", key, period, wall) >= limit:
                    spent_out = spent_out or f"{WORDS[period]} budget of {limit:g} USD"
        if spent_out and key not in self._out:
            self._out[key] = spent_out
            self._log(logging.WARNING, f"keymux: key {key} reached its {spent_out}: out of "
                                       f"rotation until {self._when(wall + wait)}")
        elif not spent_out and key in self._out:
            self._returned(key, "its budget period reset, or its budget was raised")
        return wait

    def sweep(self, wall: float) -> None:
        """Periodically: log keys whose period reset, even when no request asks for them."""
        for key in list(self._out):
            self.key_wait(key, wall)

    def hold_rows(self, key, now: float) -> list[dict]:
        """Pool.hold_checks: a key at its budget, as a ``held_back`` row."""
        budget = self.keys.get(key.name)
        if budget is None:
            return []
        wait = self.key_wait(key.name, self.clock.wall())
        if wait <= 0:
            return []
        detail = self._out.get(key.name) or "reserved by requests in flight"
        return [{"reason": "budget", "detail": detail, "model": "",
                 "seconds_left": round(wait, 3)}]

    # -- reading ----------------------------------------------------------------------

    def view(self, scope: str, name: str, wall: float) -> dict | None:
        """Each limit of a client or key: limit, used (spent), reserved, resets_at."""
        budget = (self.clients if scope == "client" else self.keys).get(name)
        if budget is None:
            return None
        out = {}
        for kind, period, limit in budget.limits():
            field = {"usd": f"{WORDS[period]}_usd", "tokens": "daily_tokens"}[kind]
            used = self._spent(kind, scope, name, period, wall)
            out[field] = {"limit": limit if kind == "usd" else int(limit),
                          "used": round(used, 8) if kind == "usd" else int(used),
                          "reserved": round(self._committed(kind, scope, name, period, wall)
                                            - used, 8),
                          "resets_at": self.ledger.period_end(period, wall)}
        return out

    def ratios(self, wall: float) -> list[tuple[str, str, str, float]]:
        """(scope, name, period, used/limit) for /metrics: per period, the limit nearest
        its end (a client's daily_usd and daily_tokens are one ``day`` series)."""
        out = []
        for scope, table in (("client", self.clients), ("key", self.keys)):
            for name, budget in table.items():
                best: dict[str, float] = {}
                for kind, period, limit in budget.limits():
                    r = self._spent(kind, scope, name, period, wall) / limit
                    best[period] = max(best.get(period, 0.0), r)
                out += [(scope, name, p, r) for p, r in best.items()]
        return out

    # -- helpers ----------------------------------------------------------------------

    def _committed(self, kind: str, dim: str, name: str, period: str, wall: float) -> float:
        if kind == "usd":
            return self.ledger.committed(dim, name, period, wall)
        return self.ledger.committed_tokens(dim, name, period, wall)

    def _spent(self, kind: str, dim: str, name: str, period: str, wall: float) -> float:
        if kind == "usd":
            return self.ledger.spent(dim, name, period, wall)
        return self.ledger.tokens(dim, name, period, wall)

    def _returned(self, key: str, why: str) -> None:
        self._out.pop(key, None)
        self._log(NOTICE, f"keymux: key {key} is back in rotation ({why})")

    def _log(self, level: int, line: str) -> None:
        if self.keylog is not None:
            self.keylog.line(level, line)

    def _when(self, end: float) -> str:
        """A reset moment in the budgets' time zone, as a client or operator reads it."""
        p = self.ledger.periods
        local = dt.datetime.fromtimestamp(end, zone(p.timezone))
        return f"{local:%Y-%m-%d %H:%M} {p.timezone}"
