"""/v1/models from fetched lists: filtering by globs and allow-lists, TTL, failure fallback."""
import json

import pytest

from keypool import modellist
from keypool.clock import FakeClock
from keypool.gateway import Gateway
from keypool.globs import is_wildcard
from keypool.pool import WHOLE_KEY

from .helpers import client, config, key, local

FETCHED = ["gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4.1", "o3-mini", "whisper-1",
           "dall-e-3", "text-embedding-3-small"]
ANT = ["claude-haiku-4-5", "claude-sonnet-4-5"]


def gw(keys, clients=None, providers=(), fetched=None):
    g = Gateway(config(keys=keys, clients=clients, providers=providers), FakeClock())
    lists = modellist.of(g)
    for name, ids in (fetched or {}).items():
        lists.stored(name, modellist.signature(g.config, name), ids)
    return g


def listed(g, headers=None, token=None):
    h = dict(headers or {})
    if token:
        h["authorization"] = f"Bearer {token}"
    a = g.handle("GET", "/v1/models", h, None)
    assert a.status == 200, a.body
    return {m["id"]: m.get("owned_by") for m in json.loads(a.body)["data"]}


def test_fetched_ids_listed_with_owner_never_a_glob():
    g = gw([key("o1"), key("a1", "anthropic")], fetched={"openai": FETCHED, "anthropic": ANT})
    ids = listed(g)
    assert ids == {**{m: "openai" for m in FETCHED}, **{m: "anthropic" for m in ANT}}
    assert not any(is_wildcard(m) for m in ids)


def test_provider_globs_filter_fetched_ids():
    p = local("local", models=("mock-*", "gpt-4o*"))
    g = gw([key("l1", "local")], providers=[p], fetched={"local": [*FETCHED, "mock-1", "other"]})
    assert set(listed(g)) == {"gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "mock-1"}


def test_key_globs_an_id_needs_some_enabled_key_that_may_serve_it():
    keys = [key("o1", models=("gpt-4o-mini",)), key("o2", models=("o3*",)),
            key("o3", models=("whisper*",), enabled=False)]
    g = gw(keys, fetched={"openai": FETCHED})
    assert set(listed(g)) == {"gpt-4o-mini", "o3-mini"}


def test_client_allow_list_gets_exactly_the_matching_fetched_ids():
    c = client("app", "tok-app-1234567", models=("gpt-4o*",))
    g = gw([key("o1")], clients=(c,), fetched={"openai": FETCHED})
    assert set(listed(g, token="tok-app-1234567")) == {"gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06"}
    one = g.handle("GET", "/v1/models/gpt-4o-mini", {"authorization": "Bearer tok-app-1234567"}, None)
    assert json.loads(one.body)["id"] == "gpt-4o-mini"
    hidden = g.handle("GET", "/v1/models/gpt-4.1", {"authorization": "Bearer tok-app-1234567"}, None)
    assert hidden.status == 404


def test_config_names_are_listed_without_a_fetch_globs_never():
    p = local("local", models=("mock-*", "mock-large"))
    keys = [key("o1", models=("gpt-4o", "gpt-4o-mini*")), key("l1", "local")]
    g = gw(keys, providers=[p])
    assert listed(g) == {"gpt-4o": "openai", "mock-large": "local"}


def test_an_id_two_providers_serve_is_bare_where_routing_sends_it_else_prefixed():
    a, b = local("first", models=("gpt-*",)), local("second", models=("gpt-*",))
    g = gw([key("f1", "first"), key("s1", "second")], providers=[a, b],
           fetched={"first": ["gpt-4o"], "second": ["gpt-4o", "gpt-x"]})
    assert listed(g) == {"gpt-4o": "first", "second/gpt-4o": "second", "second/gpt-x": "second"}
    # every listed id routes to the provider that lists it (rules 2 and 4)
    for mid, owner in listed(g).items():
        route = g.router.resolve(path="/v1/chat/completions", model=mid)
        assert route.provider.name == owner


def test_client_allow_list_applies_to_the_model_after_the_prefix():
    a, b = local("first", models=("gpt-*",)), local("second", models=("gpt-*",))
    c = client("app", "tok-app-1234567", models=("gpt-x",))
    g = gw([key("f1", "first"), key("s1", "second")], clients=(c,), providers=[a, b],
           fetched={"first": ["gpt-4o"], "second": ["gpt-4o", "gpt-x"]})
    assert set(listed(g, token="tok-app-1234567")) == {"second/gpt-x"}


def test_anthropic_shape_lists_the_providers_an_anthropic_client_reaches():
    g = gw([key("o1"), key("a1", "anthropic")], fetched={"openai": FETCHED, "anthropic": ANT})
    a = g.handle("GET", "/v1/models", {"anthropic-version": "2023-06-01"}, None)
    body = json.loads(a.body)
    assert [m["id"] for m in body["data"]] == ANT
    assert body["data"][0]["type"] == "model" and body["has_more"] is False
    assert body["first_id"] == ANT[0] and body["last_id"] == ANT[-1]
    one = g.handle("GET", "/v1/models/claude-haiku-4-5", {"anthropic-version": "2023-06-01"}, None)
    assert json.loads(one.body)["display_name"] == "claude-haiku-4-5"


def test_ttl_due_and_retry_after_failure():
    clock = FakeClock()
    cfg = config(keys=[key("o1"), key("a1", "anthropic")])
    lists = modellist.ModelLists(clock, ttl_s=600)
    assert lists.due(cfg) == ["openai", "anthropic"]
    sig = modellist.signature(cfg, "openai")
    lists.stored("openai", sig, ["gpt-4o"])
    lists.failed("anthropic", modellist.signature(cfg, "anthropic"), "status 500: boom")
    assert lists.due(cfg) == []
    clock.advance(modellist.RETRY_S)
    assert lists.due(cfg) == ["anthropic"]
    clock.advance(600 - modellist.RETRY_S)
    assert lists.due(cfg) == ["openai", "anthropic"]
    assert modellist.ModelLists(clock, ttl_s=0).due(cfg) == []  # fetching off


def test_a_config_change_makes_a_provider_due_at_once():
    clock = FakeClock()
    cfg = config(keys=[key("o1")])
    lists = modellist.ModelLists(clock)
    lists.stored("openai", modellist.signature(cfg, "openai"), ["gpt-4o"])
    assert lists.due(cfg) == []
    assert lists.due(config(keys=[key("o1"), key("o2")])) == ["openai"]  # a new key


def test_failure_keeps_the_last_good_list_else_names_only_and_health_says_why():
    g = gw([key("o1", models=("gpt-4o*", "gpt-4.1"))], fetched={"openai": FETCHED})
    lists = modellist.of(g)
    sig = modellist.signature(g.config, "openai")
    lists.failed("openai", sig, "status 500: upstream broke")
    assert set(listed(g)) == {"gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4.1"}  # stale
    h = json.loads(g.handle("GET", "/_keymux/health", {}, None).body)["model_lists"]["openai"]
    assert h["ok"] is False and h["stale"] is True and "500" in h["error"] and h["models"] == 8
    lists.failed("openai", sig + 1, "status 500: upstream broke")  # the provider's config changed
    assert listed(g) == {"gpt-4.1": "openai"}  # the config's non-glob names only
    h = json.loads(g.handle("GET", "/_keymux/health", {}, None).body)["model_lists"]["openai"]
    assert h["stale"] is False and h["fetched_at"] is None


def test_health_before_any_fetch_and_with_fetching_off():
    g = gw([key("o1")])
    h = json.loads(g.handle("GET", "/_keymux/health", {}, None).body)
    assert h["model_lists"] == {"openai": {"ok": False, "fetched_at": None, "models": 0,
                                           "error": "not fetched yet", "stale": False}}
    modellist.of(g).ttl_s = 0
    assert "model_lists" not in json.loads(g.handle("GET", "/_keymux/health", {}, None).body)


def test_listing_is_cached_until_a_list_or_the_config_changes():
    g = gw([key("o1")], fetched={"openai": ["gpt-4o"]})
    lists = modellist.of(g)
    first = lists.listing(g.config, g.router, False)
    assert lists.listing(g.config, g.router, False) is first
    lists.stored("openai", modellist.signature(g.config, "openai"), ["gpt-4o", "gpt-4.1"])
    assert [s.id for s in lists.listing(g.config, g.router, False)] == ["gpt-4o", "gpt-4.1"]


@pytest.mark.parametrize("body, ids, after", [
    (b'{"object":"list","data":[{"id":"gpt-4o"},{"id":"models/gemini-2.0-flash"}]}',
     ["gpt-4o", "gemini-2.0-flash"], None),
    (b'{"data":[{"type":"model","id":"claude-x"}],"has_more":true,"last_id":"claude-x"}',
     ["claude-x"], "claude-x"),
    (b'{"data":[{"id":"a"},{"id":""},{"id":7},"x",{"id":"bad\\nname"}],"has_more":false}', ["a"], None),
])
def test_parse(body, ids, after):
    assert modellist.parse(body) == (ids, after)


@pytest.mark.parametrize("body", [b"<html>", b'{"models": []}', b"[1]"])
def test_parse_refuses_what_is_no_model_list(body):
    with pytest.raises(ValueError):
        modellist.parse(body)


def test_page_path():
    assert modellist.page_path(False, None) == "/v1/models"
    assert modellist.page_path(True, None) == "/v1/models?limit=1000"
    assert modellist.page_path(True, "claude x/1") == "/v1/models?limit=1000&after_id=claude%20x%2F1"


def test_fetch_keys_usable_only_least_busy_first():
    clock = FakeClock()
    g = Gateway(config(keys=[key("o1"), key("o2"), key("o3"), key("o4", enabled=False)]), clock)
    pool = g.pool
    now = clock.monotonic()
    pool.cool_down(pool.by_name["o1"], WHOLE_KEY, 60, "auth")
    pool.by_name["o2"].in_flight = 3
    assert [k.name for k in modellist.fetch_keys(pool.by_provider["openai"], now)] == ["o3", "o2"]



def test_ttl_zero_serves_the_config_names_only():
    g = gw([key("o1", models=("gpt-4o*", "gpt-4.1"))], fetched={"openai": FETCHED})
    assert len(listed(g)) == 4
    modellist.of(g).ttl_s = 0
    assert listed(g) == {"gpt-4.1": "openai"}
