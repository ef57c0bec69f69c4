"""keymux's script removed (or reloaded) while a flow is on its way: nothing leaks."""
import asyncio
import json

from mitmproxy.test import taddons

from keypool.mitm import boundary, runtime
from keypool.mitm.failclosed import FailClosed

from .conftest import GLUE_TOKEN, glue_chat_flow, glue_in_flight, glue_secrets_in, keymux_in


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
