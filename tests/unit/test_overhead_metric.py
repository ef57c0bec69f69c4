"""keymux_overhead_seconds: a bounded path label, and which waits the attempt loop excludes."""
import asyncio

import pytest

from keypool.metrics import Metrics, path_class
from keypool.reissue import serve

from .test_reissue import BODY, FakeReply, make


@pytest.mark.parametrize("path, cls", [
    ("/v1/chat/completions", "chat"), ("/v1/chat/completions?x=1", "chat"),
    ("/v1/completions", "completions"), ("/v1/embeddings", "embeddings"),
    ("/v1/messages", "messages"), ("/v1/messages/count_tokens", "messages"),
    ("/v1/responses", "responses"), ("/v1/responses/resp_1", "responses"),
    ("/v1/models", "models"), ("/v1/models/gpt-4o", "models"),
    ("/_keymux/health", "other"), ("/metrics", "other"), ("/v1/anything/a-client/made-up", "other"),
])
def test_path_classes_are_a_fixed_set(path, cls):
    assert path_class(path) == cls


def sample(m, path, outcome, suffix):
    return m.registry.get_sample_value(f"keymux_overhead_seconds_{suffix}",
                                       {"path": path, "outcome": outcome})


def test_observations_land_by_class_and_outcome_and_never_below_zero():
    m = Metrics(lambda: [], lambda: 0.0)
    m.overhead("/v1/chat/completions", "routed", 4e-5)
    m.overhead("/v1/chat/completions?stream=1", "routed", 6e-5)
    m.overhead("/v1/made-up/1", "gateway", -1e-6)  # clock jitter: counted as 0
    for i in range(50):  # raw client paths never become labels or cache keys
        m.overhead(f"/v1/x{i}", "gateway", 1e-5)
    assert sample(m, "chat", "routed", "count") == 2
    assert sample(m, "chat", "routed", "sum") == pytest.approx(1e-4)
    assert sample(m, "other", "gateway", "count") == 51
    assert sample(m, "other", "gateway", "sum") == pytest.approx(5e-4)
    assert len(m.overhead_s.series) == 2
    assert sample(m, "chat", "routed", "bucket") is None  # buckets carry le
    assert m.registry.get_sample_value("keymux_overhead_seconds_bucket",
                                       {"path": "chat", "outcome": "routed", "le": "5e-05"}) == 1


def test_the_attempt_loop_counts_upstream_and_queue_waits_as_waited():
    gw, clock = make(n=1)
    ticket = gw.admit("POST", "/v1/chat/completions", {"content-type": "application/json"}, BODY)

    class SlowReply(FakeReply):
        async def read(self):
            await asyncio.sleep(0.02)  # the body read is the upstream's time too
            return b"{}"

    async def send(plan):
        await asyncio.sleep(0.03)
        return SlowReply(200)

    out = asyncio.run(serve(gw, ticket, send))
    assert out.plan is not None
    assert 0.05 <= ticket.waited < 1.0


def test_the_scrape_matches_prometheus_clients_own_histogram():
    from prometheus_client import CollectorRegistry, Histogram

    from keypool.metrics import OVERHEAD_BUCKETS
    ref = Histogram("keymux_overhead_seconds", "ref", ["path", "outcome"],
                    buckets=OVERHEAD_BUCKETS, registry=CollectorRegistry())
    m = Metrics(lambda: [], lambda: 0.0)
    for v in (0.0, 1e-5, 1.1e-5, 1e-4, 3e-4, 0.05, 0.1, 0.2, 7.0):
        m.overhead("/v1/embeddings", "routed", v)
        ref.labels("embeddings", "routed").observe(v)
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for s in ref.collect()[0].samples if not s.name.endswith("_created")}
    ours = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in m.registry.collect() if f.name == "keymux_overhead_seconds"
            for s in f.samples}
    assert ours == pytest.approx(theirs)


def test_per_request_series_scrape_as_before():
    m = Metrics(lambda: [], lambda: 0.0)
    from keypool.globs import GlobSet
    m.set_model_globs(GlobSet(["gpt-*"]))
    m.observe("mock", "k1", 200, 0.3, 0.1, "gpt-4o", 5, 3)
    m.observe("mock", "k1", 429, 0.02, None, "made-up", 0, 0)
    m.observe("mock", "k1", None, 1.0, None, None, 0, 0)
    text = m.render().decode()
    for line in ('keymux_requests_total{key="k1",provider="mock",status_class="2xx"} 1.0',
                 'keymux_requests_total{key="k1",provider="mock",status_class="error"} 1.0',
                 'keymux_tokens_total{direction="input",key="k1",model="gpt-4o",provider="mock"} 5.0',
                 'keymux_tokens_total{direction="output",key="k1",model="gpt-4o",provider="mock"} 3.0',
                 'keymux_request_duration_seconds_bucket{key="k1",le="0.025",provider="mock"} 1.0',
                 'keymux_request_duration_seconds_count{key="k1",provider="mock"} 3.0',
                 'keymux_time_to_first_byte_seconds_bucket{key="k1",le="0.1",provider="mock"} 1.0',
                 '# TYPE keymux_requests_total counter',
                 '# TYPE keymux_request_duration_seconds histogram'):
        assert line in text, line
