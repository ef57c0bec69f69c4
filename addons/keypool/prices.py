"""What a request cost, in USD: ``price:`` overrides from keys.yaml, else genai-prices.

genai-prices (Pydantic's price database) is read from the data bundled with the package:
keymux never calls its ``UpdatePrices`` (which would fetch prices over the network).
Its ``calc_price`` costs ~120 µs a call (Decimal arithmetic, unit registries), too much
for every request: ``Pricer`` resolves each (provider, model) once to four per-token rates
and multiplies floats (well under 1 µs). A model whose price genai-prices cannot express
as those four rates (tiered prices) is priced by genai-prices itself, every time.

An unknown price is ``None`` ("unknown"), never 0: a custom provider without ``price:``,
a model genai-prices does not know, an answer without usage.

Token semantics follow genai-prices: ``input`` counts every input token, cached ones
included; cache reads and writes are the parts of it billed at their own rates. A rate
that is not given (a model without a cache-write price) falls back to the input rate.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Callable, Mapping

from .globs import GlobSet
from .usage import Usage

logger = logging.getLogger("keymux")

# keymux's built-in providers -> genai-prices' provider ids. A custom provider has none:
# its models are priced only by its ``price:`` (a self-hosted "gpt-4o" is not OpenAI's bill).
GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google",
                   "deepseek": "deepseek", "xai": "x-ai", "groq": "groq", "mistral": "mistral",
                   "openrouter": "openrouter"}
RATE_FIELDS = ("input", "output", "cached_input", "cache_write")  # keys.yaml, USD per 1M tokens
MILLION = 1_000_000
MAX_CACHED = 4096                  # (provider, model) resolutions kept; cleared past this
RESOLVE_EVERY_S = 3600.0           # genai-prices has dated prices: look again hourly


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token (not per million)."""
    input: float
    output: float
    cached_input: float
    cache_write: float

    @classmethod
    def per_million(cls, input: float, output: float, cached_input: float | None = None,
                    cache_write: float | None = None) -> "Rates":
        return cls(input / MILLION, output / MILLION,
                   (input if cached_input is None else cached_input) / MILLION,
                   (input if cache_write is None else cache_write) / MILLION)

    def cost(self, u: Usage) -> float:
        total = u.input_total
        read, write = min(u.cache_read, total), min(u.cache_write, total)
        plain = max(0, total - read - write)
        return (plain * self.input + read * self.cached_input + write * self.cache_write
                + u.output * self.output)


@dataclass(frozen=True)
class PriceTable:
    """A provider's ``price:``: (glob, rates) in the file's order, the first match wins."""
    entries: tuple[tuple[str, Rates], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_globs", tuple((GlobSet([g]), r) for g, r in self.entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def rates(self, model: str | None) -> Rates | None:
        for globs, rates in self._globs:
            if globs.matches(model or ""):
                return rates
        return None


NO_PRICES = PriceTable()


class Pricer:
    """Cost of one attempt's usage; cheap on the hot path (one dict lookup, four products).

    ``providers``: provider name -> its ``PriceTable`` (from the config); ``wall``: the
    clock's wall time (dated prices in genai-prices are resolved for the current hour).
    """

    def __init__(self, providers: Mapping[str, PriceTable], wall: Callable[[], float]):
        self.tables = dict(providers)
        self.wall = wall
        self._cache: dict[tuple[str, str | None], tuple[float, object]] = {}

    def cost(self, provider: str, model: str | None, usage: Usage,
             now: float | None = None) -> float | None:
        """USD, or None when the price is unknown. ``now``: the wall time, if the caller has it."""
        hit = self._cache.get((provider, model))
        if now is None:
            now = self.wall()
        if hit is None or hit[0] <= now:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            hit = self._cache[(provider, model)] = (now + RESOLVE_EVERY_S,
                                                   self._resolve(provider, model, now))
        how = hit[1]
        if how is None:
            return None
        if isinstance(how, Rates):
            return how.cost(usage)
        if isinstance(how, TimeOfDay):  # prices that change within the day: read them now
            how = _rates_of(how.info.get_prices(datetime.fromtimestamp(now, UTC)))
            return how.cost(usage) if isinstance(how, Rates) else (
                None if how is None else _genai_cost(how, usage))
        return _genai_cost(how, usage)  # a genai-prices ModelPrice (tiered)

    def _resolve(self, provider: str, model: str | None, now: float) -> object:
        table = self.tables.get(provider)
        if table:
            rates = table.rates(model)
            if rates is not None:
                return rates
        pid = GENAI_PROVIDERS.get(provider)
        if pid is None or not model:
            return None
        try:
            return genai_rates(pid, model, now)
        except Exception:  # noqa: BLE001 - a price database bug must not fail a request
            logger.exception("keymux: genai-prices failed on %s/%s; its cost is unknown",
                             provider, model[:100])
            return None


@dataclass(frozen=True, slots=True)
class TimeOfDay:
    """A model whose price depends on the time of day (DeepSeek's off-peak hours)."""
    info: object


def warm() -> None:
    """Load genai-prices' table now (at start, off the loop) rather than on the first lookup."""
    from genai_prices import data_snapshot
    data_snapshot.get_snapshot()


def genai_rates(provider_id: str, model: str, wall: float) -> object:
    """Rates for genai-prices' model, its ModelPrice when rates cannot express it, a
    TimeOfDay when they change within the day, or None."""
    from genai_prices import data_snapshot, types  # imported on the first lookup only

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    if isinstance(info.prices, list) and any(
            isinstance(c.constraint, types.TimeOfDateConstraint) for c in info.prices):
        return TimeOfDay(info)
    return _rates_of(info.get_prices(datetime.fromtimestamp(wall, UTC)))


def _rates_of(price: object) -> object:
    from genai_prices import types

    given = {k: v for k, v in price.__dict__.items() if v is not None and not k.startswith("_")}
    if any(isinstance(v, types.TieredPrices) for v in given.values()):
        return price
    if "input_mtok" not in given and "output_mtok" not in given:
        return None  # priced per image, second, request...: not by tokens
    rate = {k: float(v) for k, v in given.items() if k.endswith("_mtok")}
    return Rates.per_million(rate.get("input_mtok", 0.0), rate.get("output_mtok", 0.0),
                             rate.get("cache_read_mtok"), rate.get("cache_write_mtok"))


def _genai_cost(price: object, u: Usage) -> float | None:
    from genai_prices import Usage as GUsage

    try:
        calc = price.calc_price(genai_usage(u, GUsage))
    except Exception:  # noqa: BLE001
        return None
    return float(calc["total_price"])


def genai_usage(u: Usage, cls=None):
    """keymux's Usage as genai-prices' (the tests compare against ``calc_price`` with it)."""
    if cls is None:
        from genai_prices import Usage as cls
    return cls(input_tokens=u.input_total, output_tokens=u.output,
               cache_read_tokens=u.cache_read or None, cache_write_tokens=u.cache_write or None)


def table_from(raw: Mapping[str, object]) -> PriceTable:
    """A ``price:`` as plain data (already validated by config.py): either one set of rates
    ``{input, output, cached_input?, cache_write?}`` for every model, or globs to rates."""
    if raw and all(k in RATE_FIELDS for k in raw):
        return PriceTable((("*", _rates(raw)),))
    return PriceTable(tuple((glob, _rates(r)) for glob, r in raw.items()))


def _rates(r: Mapping[str, float]) -> Rates:
    return Rates.per_million(r["input"], r["output"], r.get("cached_input"), r.get("cache_write"))
