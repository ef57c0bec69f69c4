"""keymux's script removed (or reloaded) while a flow is on its way: nothing leaks."""
import asyncio
import json

import pytest

from keypool.mitm import boundary, runtime
from keypool.mitm.failclosed import FailClosed

from .conftest import GLUE_K1, GLUE_K2, glue_chat_flow, glue_in_flight, glue_secrets_in, keymux_in


async def routed_stream(addon, monkeypatch):
    monkeypatch.setattr(runtime, "active", addon)  # what running() does
    f = glue_chat_flow(stream=True)
    await addon.request(f)
    assert boundary.MARK in f.metadata and glue_in_flight(addon) == 1
    return f


async def test_a_routed_flow_after_the_script_went_away_is_503(glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, tctx):
        f = await routed_stream(addon, monkeypatch)
        addon.done()  # the script is removed: runtime.active is None from here
        assert runtime.active is None
        guard = FailClosed()
        guard.request(f)  # the next addon in the chain
        assert f.response.status_code == 503
        assert json.loads(f.response.content)["error"]["code"] == "keymux_not_loaded"
        assert glue_secrets_in(f) == []


async def test_a_removed_script_gives_back_the_keys_of_its_streams(glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, tctx):
        f = await routed_stream(addon, monkeypatch)
        addon.done()
        # The runtime (and its gateway) outlives the script: a key held by a stream the old
        # instance will never see end would stay in flight for good.
        assert glue_in_flight(addon) == 0
        async with asyncio.timeout(2):  # done() closes the relay in a task
            while addon.relay.parked:
                await asyncio.sleep(0.01)


async def test_a_script_reload_does_not_blame_keys_for_requests_in_flight(
        glue_config, glue_upstream, monkeypatch):
    glue_upstream.set_behavior(GLUE_K1, delay_ms=300)
    glue_upstream.set_behavior(GLUE_K2, delay_ms=300)
    async with keymux_in(glue_config) as (addon, tctx):
        f = glue_chat_flow()
        request = asyncio.create_task(addon.request(f))
        async with asyncio.timeout(2):  # the attempt holds its key: it is on its way
            while glue_in_flight(addon) == 0:
                await asyncio.sleep(0.005)
        addon.done()  # a script reload: the next instance shares this gateway
        await request
        pool = addon.gateway.pool.by_name
        assert not pool["k1"].cool and not pool["k2"].cool
        assert all(a["outcome"] in ("ok", "cancelled") for a in f.metadata["keymux"]["attempts"])
