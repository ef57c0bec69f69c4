"""Prometheus metrics, ``keymux_*``, in a registry this gateway owns.

Labels come only from what the operator configured (provider and key names, status
classes, model globs); a model a client invents is counted as ``other``.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .globs import GlobSet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MAX_MODEL_LABELS = 100  # even configured globs must not grow the series without bound
# keymux's own time per request: tens of microseconds when all is well, milliseconds when not
OVERHEAD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
                    0.05, 0.1)
_PATH_CLASSES = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                 "/v1/embeddings": "embeddings", "/v1/models": "models"}
_PATH_PREFIXES = (("/v1/messages", "messages"), ("/v1/responses", "responses"),
                  ("/v1/models/", "models"))


def path_class(path: str) -> str:
    """The ``path`` label of keymux_overhead_seconds: a fixed set, whatever a client sends."""
    path = path.partition("?")[0]
    found = _PATH_CLASSES.get(path)
    if found is not None:
        return found
    for prefix, name in _PATH_PREFIXES:
        if path.startswith(prefix):
            return name
    return "other"  # admin, health, metrics, unknown paths


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"


class Metrics:
    def __init__(self, snapshot: Callable[[], list[dict]], wall_now: Callable[[], float],
                 providers: Callable[[], dict[str, dict]] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The series every request updates: plain dicts and lists (see _FastCounter).
        self.requests = _FastCounter("keymux_requests", "Upstream answers by key and status class",
                                     ["provider", "key", "status_class"], registry=r)
        self.gateway_answers = Counter("keymux_gateway_answers",
                                       "Answers the gateway gave itself, by status and code",
                                       ["status", "code"], registry=r)
        self.refusals_dropped = Counter("keymux_request_log_refusals_dropped",
                                        "Refusals not written to the request log (over its "
                                        "rate bound)", registry=r)
        self.latency = _FastHistogram("keymux_request_duration_seconds",
                                      "Time from sending upstream to the last byte",
                                      ["provider", "key"], LATENCY_BUCKETS, registry=r)
        self.ttfb = _FastHistogram("keymux_time_to_first_byte_seconds",
                                   "Time from sending upstream to the response headers",
                                   ["provider", "key"], LATENCY_BUCKETS, registry=r)
        self.overhead_s = _FastHistogram(
            "keymux_overhead_seconds", "Each request's time inside keymux: its time in the "
            "gateway minus the time spent waiting for the upstream or for a free key",
            ["path", "outcome"], OVERHEAD_BUCKETS, registry=r)
        self.reloads = Counter("keymux_config_reload", "Config reloads by result (ok, error)",
                               ["result"], registry=r)
        for result in ("ok", "error"):  # both series exist from the start: rate() and alerts see 0
            self.reloads.labels(result)
        self.reload_ok = Gauge("keymux_config_last_reload_successful",
                               "1 if the last config reload (or the first load) succeeded, "
                               "0 while a failed one leaves the previous config serving",
                               registry=r)
        self.reload_ok.set(1)
        self.reissues = Counter("keymux_reissues", "Upstream attempts that re-issue a failed "
                                "one, by why that one failed",
                                ["provider", "outcome"], registry=r)
        self.tokens = _FastCounter("keymux_tokens", "Tokens reported by the upstream",
                                   ["provider", "key", "model", "direction"], registry=r)
        self.spend_usd = Counter("keymux_spend_usd", "What answers cost in USD (keypool.prices;"
                                 " requests of unknown price are not in it)",
                                 ["provider", "model", "key", "client"], registry=r)
        r.register(_PoolCollector(snapshot, wall_now))
        if providers is not None:
            r.register(_ProviderCollector(providers))
        self._model_globs = GlobSet()
        self._model_labels: set[str] = set()
        # prometheus_client's labels() costs microseconds per call: resolve each child once.
        self._children: dict[tuple, object] = {}
        self._spend_children: dict[tuple, object] = {}  # (provider, model, key, client) -> child

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()
        self.reload_ok.set(1 if ok else 0)

    def reissued(self, provider: str, outcome: str) -> None:
        """``outcome``: the failed attempt's policy class (auth, quota, rate_limited, server)."""
        self._child(self.reissues, provider, outcome).inc()

    def watch_budgets(self, ratios: Callable[[], list[tuple[str, str, str, float]]]) -> None:
        """keypool.budgets' used/limit per (scope, name, period), read at scrape time."""
        self.registry.register(_BudgetCollector(ratios))

    def watch_store(self, status: Callable[[], dict]) -> None:
        """The state store's writer, read at scrape time (Writer.status)."""
        self.registry.register(_StoreCollector(status))

    def set_model_globs(self, globs: GlobSet) -> None:
        self._model_globs = globs

    def model_label(self, model: str | None) -> str:
        if not model or not self._model_globs.matches(model):
            return "other"
        if model not in self._model_labels:
            if len(self._model_labels) >= MAX_MODEL_LABELS:
                return "other"
            self._model_labels.add(model)
        return model

    def _child(self, metric, *labels):
        k = (id(metric), labels)
        child = self._children.get(k)
        if child is None:
            child = self._children[k] = metric.labels(*labels)
        return child

    def observe(self, provider: str, key: str, status: int | None, latency: float,
                ttfb: float | None, model: str | None, tokens_in: int, tokens_out: int) -> None:
        self.requests.inc((provider, key, status_class(status)))
        pk = (provider, key)
        self.latency.observe(pk, latency)
        if ttfb is not None:
            self.ttfb.observe(pk, ttfb)
        if tokens_in or tokens_out:
            m = self.model_label(model)
            self.tokens.inc((provider, key, m, "input"), tokens_in)
            self.tokens.inc((provider, key, m, "output"), tokens_out)

    def overhead(self, path: str, outcome: str, seconds: float) -> None:
        """``outcome``: routed (an upstream's answer or stream) or gateway (keymux answered
        itself: a refusal, health, the model list, an admin path)."""
        # a client's raw path never keys anything: only its class
        self.overhead_s.observe((path_class(path), outcome), seconds if seconds > 0 else 0.0)

    def spend(self, provider: str, model: str | None, key: str, client: str, usd: float) -> None:
        """``client``: a configured client's name, or "-" on an open gateway."""
        k = (provider, model, key, client)
        child = self._spend_children.get(k)
        if child is None:
            if len(self._spend_children) >= 10_000:  # raw model names: keep the cache bounded
                self._spend_children.clear()
            child = self._spend_children[k] = self._child(
                self.spend_usd, provider, self.model_label(model), key, client)
        child.inc(usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FastHistogram:
    """A histogram family without prometheus_client's lock and child lookup per observation
    (~2 µs each, several on every request): bucket counts in plain lists, updated on the
    event loop only, turned into cumulative buckets at scrape. The scrape is the same as
    ``Histogram``'s but for its ``_created`` samples (tests/unit/test_overhead_metric.py)."""

    def __init__(self, name: str, doc: str, labels: list[str], buckets: tuple, registry):
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.le = (*map(floatToGoString, buckets), "+Inf")
        self.series: dict[tuple, list] = {}  # label values -> counts per bucket + [sum]
        registry.register(self)

    def observe(self, labels: tuple, value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0] * len(self.le) + [0.0]
        s[bisect_left(self.buckets, value)] += 1  # le: the first bound >= the value
        s[-1] += value

    def describe(self):
        return []

    def collect(self):
        h = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, s in list(self.series.items()):
            total, buckets = 0, []
            for le, n in zip(self.le, s):
                total += n
                buckets.append((le, total))
            h.add_metric(list(labels), buckets, s[-1])
        yield h


class _FastCounter:
    """A counter family kept in a plain dict (see _FastHistogram)."""

    def __init__(self, name: str, doc: str, labels: list[str], registry):
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple, float] = {}
        registry.register(self)

    def inc(self, labels: tuple, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def describe(self):
        return []

    def collect(self):
        c = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in list(self.values.items()):
            c.add_metric(list(labels), value)
        yield c


class _PoolCollector:
    """Key states read at scrape time from a pool snapshot (no bookkeeping on the hot path)."""

    STATES = ("ok", "cooling", "dead", "disabled", "over_budget")

    def __init__(self, snapshot: Callable[[], list[dict]], wall_now: Callable[[], float]):
        self.snapshot = snapshot
        self.wall_now = wall_now

    def describe(self):
        return []

    def collect(self):
        in_flight = GaugeMetricFamily("keymux_key_in_flight", "Requests in flight per key",
                                      labels=["provider", "key"])
        state = GaugeMetricFamily("keymux_key_state", "1 for the state each key is in",
                                  labels=["provider", "key", "state"])
        until = GaugeMetricFamily("keymux_key_cooldown_until_timestamp_seconds",
                                  "When a cooling key becomes usable again (0: not cooling)",
                                  labels=["provider", "key"])
        now = self.wall_now()
        for k in self.snapshot():
            labels = [k["provider"], k["name"]]
            in_flight.add_metric(labels, k["in_flight"])
            for s in self.STATES:
                state.add_metric(labels + [s], 1.0 if k["state"] == s else 0.0)
            cooling = k["cooldown_s"] > 0
            until.add_metric(labels, (now + k["cooldown_s"]) if cooling else 0.0)
        yield from (in_flight, state, until)


class _StoreCollector:
    """Whether the state store keeps up: errors, rows waiting in memory, rows dropped."""

    def __init__(self, status: Callable[[], dict]):
        self.status = status

    def describe(self):
        return []

    def collect(self):
        s = self.status()
        yield CounterMetricFamily("keymux_store_errors", "Failed writes to the state store",
                                  value=s["errors"])
        yield GaugeMetricFamily("keymux_store_pending_rows",
                                "Request-log rows kept in memory until the store can write",
                                value=s["pending_rows"])
        yield CounterMetricFamily("keymux_store_dropped_rows",
                                  "Request-log rows dropped because the store could not write",
                                  value=s["dropped_rows"])


class _ProviderCollector:
    """1 while a provider is in outage (most of its keys failing together), read at scrape."""

    def __init__(self, providers: Callable[[], dict[str, dict]]):
        self.providers = providers

    def describe(self):
        return []

    def collect(self):
        outage = GaugeMetricFamily("keymux_provider_outage",
                                   "1 while the provider is in outage and being probed",
                                   labels=["provider"])
        for name, st in self.providers().items():
            outage.add_metric([name], 1.0 if st["state"] == "outage" else 0.0)
        yield outage


class _BudgetCollector:
    """How much of each configured budget is used: 0..1, past 1 when a request crossed it."""

    def __init__(self, ratios: Callable[[], list[tuple[str, str, str, float]]]):
        self.ratios = ratios

    def describe(self):
        return []

    def collect(self):
        used = GaugeMetricFamily("keymux_budget_used_ratio",
                                 "Spent / limit of each client and key budget in its current "
                                 "period (of a client's daily_usd and daily_tokens, the higher)",
                                 labels=["scope", "name", "period"])
        for scope, name, period, ratio in self.ratios():
            used.add_metric([scope, name, period], ratio)
        yield used
