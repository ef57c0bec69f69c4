"""The background model-list fetch (mitm/modelfetch.py) in-process, against the mock."""
import asyncio
import json
import logging
from dataclasses import replace

from keypool import modellist
from keypool.mitm.modelfetch import ModelFetch

from .conftest import GLUE_K1, GLUE_K2, GLUE_TOKEN, glue_chat_flow, keymux_in


def fetcher(addon) -> ModelFetch:
    return next(a for a in addon.addons if isinstance(a, ModelFetch))


def listed(addon) -> list[str]:
    a = addon.gateway.handle("GET", "/v1/models", {"authorization": f"Bearer {GLUE_TOKEN}"}, None)
    return [m["id"] for m in json.loads(a.body)["data"]]


async def test_fetch_uses_one_usable_key_and_counts_nothing(glue_config, glue_upstream):
    glue_upstream.set_models(["gpt-4o", "gpt-4o-mini", "whisper-1"])
    async with keymux_in(glue_config) as (addon, _):
        gw = addon.gateway
        gw.pool.cool_down(gw.pool.by_name["k1"], "", 60, "auth")  # dead: not used for the fetch
        await fetcher(addon).refresh()
        assert listed(addon) == ["gpt-4o", "gpt-4o-mini"]  # the provider's globs: gpt-*
        sent = glue_upstream.requests()
        assert [(r["method"], r["path"], r["key"]) for r in sent] == [("GET", "/v1/models", GLUE_K2)]
        k2 = gw.pool.by_name["k2"]
        assert (k2.requests, k2.in_flight, k2.limits.rpm.wait_for(gw.clock.monotonic(), 1)) == (0, 0, 0)
        await fetcher(addon).refresh()  # cached: nothing is due
        assert len(glue_upstream.requests()) == 1


async def test_a_401_on_the_list_tries_another_key_and_kills_none(glue_config, glue_upstream):
    glue_upstream.set_models(status=401, key=GLUE_K1)
    glue_upstream.set_models(["gpt-4.1"], key=GLUE_K2)
    async with keymux_in(glue_config) as (addon, _):
        addon.gateway.pool.by_name["k2"].in_flight = 1  # k1 first (least busy)
        await fetcher(addon).refresh()
        addon.gateway.pool.by_name["k2"].in_flight = 0
        assert [r["key"] for r in glue_upstream.requests()] == [GLUE_K1, GLUE_K2]
        assert listed(addon) == ["gpt-4.1"]
        now = addon.gateway.clock.monotonic()
        assert {k.state(now) for k in addon.gateway.pool.by_name.values()} == {"ok"}


async def test_a_failing_list_is_one_log_line_and_a_health_warning(glue_config, glue_upstream, caplog):
    glue_upstream.set_models(status=500)
    async with keymux_in(glue_config) as (addon, _):
        with caplog.at_level(logging.INFO, logger="keymux"):
            await fetcher(addon).refresh()
            lists = modellist.of(addon.gateway)
            lists.entries["mock"] = replace(lists.entries["mock"], checked=-1e9)  # due again
            await fetcher(addon).refresh()
        lines = [r.getMessage() for r in caplog.records if "model list" in r.getMessage()]
        assert len(lines) == 1 and "'mock'" in lines[0] and "500" in lines[0]
        assert GLUE_K1 not in caplog.text and GLUE_K2 not in caplog.text
        health = json.loads(addon.gateway.handle("GET", "/_keymux/health", {}, None).body)
        assert health["model_lists"]["mock"]["ok"] is False
        assert "status 500" in health["model_lists"]["mock"]["error"]
        assert listed(addon) == []  # globs only in the config: no name to fall back on


async def test_a_list_request_waits_for_the_first_fetch_only_and_boundedly(glue_config, glue_upstream):
    glue_upstream.set_default(delay_ms=300)  # the fetch takes a while
    async with keymux_in(glue_config) as (addon, _):
        fetch = fetcher(addon)
        fetch.running()
        flow = glue_chat_flow()
        flow.request.method, flow.request.path = "GET", "/v1/models"
        t0 = asyncio.get_running_loop().time()
        await fetch.requestheaders(flow)  # a coroutine while the first round runs
        waited = asyncio.get_running_loop().time() - t0
        assert 0.2 < waited < 3 and modellist.of(addon.gateway).ids("mock")
        assert fetch.requestheaders(flow) is None  # once the first round ended: never again
        chat = glue_chat_flow()
        fetch2 = ModelFetch(addon)
        fetch2.running()
        assert fetch2.requestheaders(chat) is None  # other requests never wait
        fetch2.done()
        fetch.done()


async def test_anthropic_lists_are_read_page_by_page(tmp_path, glue_upstream, monkeypatch):
    monkeypatch.setattr(modellist, "ANTHROPIC_PAGE", 2)
    ids = ["claude-a", "claude-b", "claude-c", "claude-d", "claude-e"]
    glue_upstream.set_models(ids)
    path = tmp_path / "keys.yaml"
    path.write_text(f"""
version: 1
providers:
  ant:
    base_url: {glue_upstream.base_url}/v1
    auth: x-api-key
    headers: {{anthropic-version: "2023-06-01"}}
    models: ["claude-*"]
keys:
  - {{name: a1, provider: ant, key: {GLUE_K1}}}
state_dir: {tmp_path / 'state'}
""")
    async with keymux_in(path) as (addon, _):
        await fetcher(addon).refresh()
        sent = glue_upstream.requests()
        assert [r["path"] for r in sent] == ["/v1/models?limit=2", "/v1/models?limit=2&after_id=claude-b",
                                             "/v1/models?limit=2&after_id=claude-d"]
        assert all(r["headers"].get("x-api-key") == GLUE_K1 and "anthropic-version" in r["headers"]
                   for r in sent)
        a = addon.gateway.handle("GET", "/v1/models", {"anthropic-version": "2023-06-01"}, None)
        assert [m["id"] for m in json.loads(a.body)["data"]] == ids
