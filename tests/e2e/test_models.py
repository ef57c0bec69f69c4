"""/v1/models through the real mitmdump: each provider's own list, fetched in the background
(keymux_model_list_ttl on), filtered by globs and the client's allow-list; a provider whose
list fails falls back to its config names with a health warning; the request path never
waits for a fetch once a list is cached."""
import json
import time
import urllib.request

import anthropic
import openai
import pytest

from .conftest import A1, ALT1, K1, K2
from .harness import GatewayProcess, get

ALL = "kmx-models-all-token-0123456789"
MINI = "kmx-models-4o-token-0123456789"
MOCK_IDS = ["gpt-4o-mini", "gpt-4o", "gpt-4o-2024-08-06", "gpt-4.1", "whisper-1", "mock-model",
            "claude-haiku-4-5", "claude-sonnet-4-5"]


def yaml(mock_url: str, extra: str = "") -> str:
    return f"""
version: 1
providers:
  mock:
    base_url: {mock_url}/v1
    models: ["gpt-*", "mock-*"]
  mockant:
    base_url: {mock_url}/v1
    auth: x-api-key
    headers: {{anthropic-version: "2023-06-01"}}
    models: ["claude-*"]
  mockalt:
    base_url: {mock_url}/alt/v1
    models: ["alt-*", "alt-large"]
keys:
  - {{name: k1, provider: mock, key: {K1}}}
  - {{name: k2, provider: mock, key: {K2}, models: ["gpt-4o*", "mock-*"]}}
  - {{name: a1, provider: mockant, key: {A1}}}
  - {{name: alt1, provider: mockalt, key: {ALT1}}}
clients:
  - {{name: all, token: {ALL}}}
  - {{name: mini, token: {MINI}, models: ["gpt-4o*"]}}
{extra}
"""


def lists_settled(gw) -> bool:
    status, body = get(gw, "/_keymux/health")
    lists = json.loads(body).get("model_lists", {})
    return bool(lists) and all(v["error"] != "not fetched yet" for v in lists.values())


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture(scope="module")
def listing(mock, tmp_path_factory, confdir):
    mock.reset()
    mock.set_models(MOCK_IDS)
    mock.set_models(status=500, key=ALT1)  # mockalt's list cannot be fetched
    work = tmp_path_factory.mktemp("models")
    with GatewayProcess(work, yaml(mock.base_url), confdir=confdir,
                        args=("--set", "keymux_model_list_ttl=3600")) as gw:
        assert wait_for(lambda: lists_settled(gw), 10), gw.log()
        yield gw


def oai(gw, token=ALL):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=10)


def test_openai_sdk_lists_the_fetched_ids_its_client_may_use(listing):
    models = list(oai(listing).models.list())
    assert {m.id: m.owned_by for m in models} == {
        "gpt-4o-mini": "mock", "gpt-4o": "mock", "gpt-4o-2024-08-06": "mock", "gpt-4.1": "mock",
        "mock-model": "mock", "claude-haiku-4-5": "mockant", "claude-sonnet-4-5": "mockant",
        "alt-large": "mockalt"}  # whisper-1: no glob of mock's; mockalt: its config name only
    assert {m.id for m in oai(listing, MINI).models.list()} == {"gpt-4o-mini", "gpt-4o",
                                                               "gpt-4o-2024-08-06"}
    assert oai(listing, MINI).models.retrieve("gpt-4o").owned_by == "mock"
    with pytest.raises(openai.NotFoundError):
        oai(listing, MINI).models.retrieve("gpt-4.1")


def test_anthropic_sdk_lists_the_anthropic_providers_models(listing):
    c = anthropic.Anthropic(base_url=listing.url, api_key=ALL, max_retries=0, timeout=10)
    assert [m.id for m in c.models.list()] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    assert c.models.retrieve("claude-sonnet-4-5").display_name == "claude-sonnet-4-5"


def test_a_listed_id_is_served(listing, mock):
    r = oai(listing).chat.completions.create(model="claude-haiku-4-5",
                                             messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content and mock.requests()[-1]["key"] == A1


def test_a_failing_list_falls_back_with_a_health_warning(listing):
    status, body = get(listing, "/_keymux/health")
    lists = json.loads(body)["model_lists"]
    assert lists["mock"]["ok"] and lists["mock"]["models"] == len(MOCK_IDS)
    assert lists["mockalt"]["ok"] is False and "status 500" in lists["mockalt"]["error"]
    assert status == 200  # a warning: the gateway serves
    log = listing.log()
    assert log.count("cannot fetch the model list of provider 'mockalt'") == 1
    assert ALT1 not in log and K1 not in log and K2 not in log


def test_listing_never_fetches_on_the_request_path(listing, mock):
    for _ in range(20):
        assert len(list(oai(listing).models.list())) == 8
    assert mock.count() == 0  # answered from the cache: nothing went upstream


def test_a_due_refresh_never_makes_a_list_request_wait(mock, tmp_path, confdir):
    """TTL 1 s and a list that takes 1.5 s to fetch: requests keep answering at once from
    the cached list while the refresh runs in the background."""
    mock.set_models(["gpt-4o-mini"])
    with GatewayProcess(tmp_path, yaml(mock.base_url), confdir=confdir,
                        args=("--set", "keymux_model_list_ttl=1")) as gw:
        assert wait_for(lambda: lists_settled(gw), 10), gw.log()
        mock.set_default(delay_ms=1500)
        deadline, slowest = time.monotonic() + 3, 0.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            ids = {m.id for m in oai(gw).models.list()}
            slowest = max(slowest, time.monotonic() - t0)
            assert "gpt-4o-mini" in ids
            time.sleep(0.05)
        fetches = [r for r in mock.requests() if r["path"].startswith(("/v1/models", "/alt/v1/models"))
                   and r["time"] > deadline - 3]
        assert fetches, "the TTL passed: a refresh was sent"
        assert slowest < 0.5, slowest
        mock.set_default(delay_ms=0)


def test_a_reload_refetches_a_changed_provider(mock, tmp_path, confdir):
    mock.set_models(["gpt-4o-mini"])
    with GatewayProcess(tmp_path, yaml(mock.base_url), confdir=confdir,
                        args=("--set", "keymux_model_list_ttl=3600")) as gw:
        assert wait_for(lambda: lists_settled(gw), 10), gw.log()
        mock.set_models(["gpt-4o-mini", "gpt-5"])
        gw.config.write_text(yaml(mock.base_url).replace(f"key: {K2}, models", f"key: {K2}x, models"))
        assert wait_for(lambda: "gpt-5" in {m.id for m in oai(gw).models.list()}, 10), gw.log()
        paths = {r["path"] for r in mock.requests() if r["key"] in (K1, K2 + "x")}
        assert "/v1/models" in paths
