"""keys.yaml's money and period fields: ``price:`` (providers), ``budget:`` (keys and
clients), ``routing.daily_reset`` and ``routing.timezone``; read by ``config._Reader`` (a mixin over envfile.NodeReader), every
problem a ConfigError with its line.

    clients[].budget: {daily_usd, monthly_usd, daily_tokens}   any subset, each > 0
    keys[].budget:    {daily_usd, monthly_usd}                 any subset, each > 0
"""
from __future__ import annotations

from dataclasses import dataclass

import re

from yaml.nodes import Node, ScalarNode

from .envfile import INT_TAG, STR_TAG

from .periods import valid_zone
from .prices import RATE_FIELDS, PriceTable, table_from


@dataclass(frozen=True)
class Budget:
    """Limits over a period (keypool.periods); None: no limit of that kind."""
    daily_usd: float | None = None
    monthly_usd: float | None = None
    daily_tokens: int | None = None   # clients only: input + output tokens a day

    def limits(self) -> list[tuple[str, str, float]]:
        """(kind, period, limit) of each limit set: kind usd|tokens, period day|month."""
        out = []
        if self.daily_usd is not None:
            out.append(("usd", "day", self.daily_usd))
        if self.monthly_usd is not None:
            out.append(("usd", "month", self.monthly_usd))
        if self.daily_tokens is not None:
            out.append(("tokens", "day", float(self.daily_tokens)))
        return out


_CLOCK = re.compile(r"(\d{1,2}):(\d{2})\Z")
CLIENT_BUDGET_FIELDS = ("daily_usd", "monthly_usd", "daily_tokens")
KEY_BUDGET_FIELDS = ("daily_usd", "monthly_usd")


class MoneyReader:
    """Mixed into config._Reader (which supplies fields/given/need/fail/number...)."""

    def client_budget(self, node: Node, path: str) -> Budget:
        return self._budget(node, path, CLIENT_BUDGET_FIELDS)

    def key_budget(self, node: Node, path: str) -> Budget:
        return self._budget(node, path, KEY_BUDGET_FIELDS)

    def _budget(self, node: Node, path: str, known: tuple[str, ...]) -> Budget:
        f = self.fields(node, path, known)
        kw = self.given(f, path, {"daily_usd": self.positive, "monthly_usd": self.positive,
                                  "daily_tokens": self.count})
        if not kw:
            self.fail(node, f"{path}: expected at least one of {', '.join(known)}"
                            " (or leave budget: out)")
        return Budget(**kw)

    def clock(self, node: Node, path: str) -> str:
        # YAML 1.1 reads an unquoted 12:30 as the base-60 integer 750, YAML 1.2 as text: here
        # both mean the time of day, so take the text as written (yamlrules would refuse it).
        plain = isinstance(node, ScalarNode) and node.style is None
        if plain and node.tag in (INT_TAG, STR_TAG) and _CLOCK.match(node.value):
            value = node.value
        else:
            value = self.string(node, path)
        m = _CLOCK.match(value)
        if not m or int(m[1]) > 23 or int(m[2]) > 59:
            self.fail(node, f'{path}: expected a time of day as "HH:MM" (24-hour), got {value!r}')
        return f"{int(m[1]):02d}:{m[2]}"

    def timezone(self, node: Node, path: str) -> str:
        value = self.string(node, path)
        if not valid_zone(value):
            self.fail(node, f"{path}: {value[:64]!r} is not an IANA time zone name (like UTC,"
                            " Europe/Berlin or America/New_York)")
        return value

    def price(self, node: Node, path: str) -> PriceTable:
        """``{input, output, cached_input?, cache_write?}`` (USD per 1M tokens) for every
        model, or ``{GLOB: {...}, ...}``: the first glob (in the file's order) that matches."""
        f = self.fields(node, path)
        if not f:
            self.fail(node, f"{path}: expected rates {{input: ..., output: ...}} (USD per 1M"
                            " tokens) or model globs mapped to such rates")
        if any(k in RATE_FIELDS for k in f):  # one set of rates (an unknown field is refused)
            return table_from({"*": self.rates(node, path)})
        return table_from({glob: self.rates(value, f"{path}.{glob}") for glob, value in f.items()})

    def rates(self, node: Node, path: str) -> dict[str, float]:
        f = self.fields(node, path, RATE_FIELDS)
        for name in ("input", "output"):
            self.need(f, name, path, node)
        return self.given(f, path, dict.fromkeys(RATE_FIELDS, self.seconds))
