"""reload.ConfigWatcher on a real temporary keys.yaml, alone and driving Keymux._reloaded.

No bare sleeps: the watcher's ``_reload`` and the apply callback report to asyncio queues,
and every wait has a deadline. The poll is made fast so that an inotify event that lands
while a reload is running (and is coalesced into it) is picked up quickly anyway.
"""
import asyncio
import time

import pytest

from keypool.config import Config
from keypool.mitm import reload as reload_mod
from keypool.mitm.reload import ConfigWatcher

from .conftest import GLUE_K1, GLUE_K2, glue_chat_flow, glue_keys_yaml, keymux_in

WAIT_S = 5.0


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch):
    monkeypatch.setattr(reload_mod, "POLL_S", 0.1)


class Probe:
    """What a watcher did, seen from the loop: each ``_reload`` run (its start time) and
    each call of the apply callback."""

    def __init__(self, watcher: ConfigWatcher, loop):
        self.runs: asyncio.Queue[float] = asyncio.Queue()
        self.applied: asyncio.Queue[tuple] = asyncio.Queue()
        original = watcher._reload

        def reload_and_report():
            began = time.monotonic()
            original()  # posts any apply before the report below: same queue, in order
            loop.call_soon_threadsafe(self.runs.put_nowait, began)

        watcher._reload = reload_and_report  # the timer looks it up at each kick

    def apply(self, config, error):
        self.applied.put_nowait((config, error))

    async def run_after(self, t: float) -> None:
        """Wait for a reload that started after ``t`` (it has read what was written by t)."""
        async with asyncio.timeout(WAIT_S):
            while await self.runs.get() <= t:
                pass

    async def next_apply(self):
        return await asyncio.wait_for(self.applied.get(), WAIT_S)


def write(path, text) -> float:
    path.write_text(text)
    return time.monotonic()


async def watching(path):
    loop = asyncio.get_running_loop()
    probe = None
    watcher = ConfigWatcher(path, loop, lambda c, e: probe.apply(c, e))
    probe = Probe(watcher, loop)
    watcher.start()
    return watcher, probe


def with_third_key(base_url, tmp_path) -> str:
    return glue_keys_yaml(base_url, extra=f"state_dir: {tmp_path / 'state'}").replace(
        "routing:", "  - name: k3\n    provider: mock\n    key: sk-glue-key-three-000003\n"
                    "routing:")


async def test_a_valid_change_calls_back_with_the_new_config(glue_config, glue_upstream, tmp_path):
    watcher, probe = await watching(glue_config)
    try:
        write(glue_config, with_third_key(glue_upstream.base_url, tmp_path))
        config, error = await probe.next_apply()
        assert error is None and isinstance(config, Config)
        assert [k.name for k in config.keys] == ["k1", "k2", "k3"]
    finally:
        watcher.stop()


async def test_a_broken_change_calls_back_with_an_error_without_the_secret(glue_config):
    watcher, probe = await watching(glue_config)
    try:
        write(glue_config, f"version: 1\nkeys:\n  - name: k1\n    key: {GLUE_K1}\n    bad: [")
        config, error = await probe.next_apply()
        assert config is None and error and GLUE_K1 not in error
    finally:
        watcher.stop()


async def test_an_unchanged_rewrite_does_not_reload(glue_config):
    watcher, probe = await watching(glue_config)
    try:
        t = write(glue_config, glue_config.read_text())  # same bytes: same digest
        await probe.run_after(t)
        assert probe.applied.empty()
    finally:
        watcher.stop()


async def test_a_broken_file_is_reported_once_not_at_every_poll(glue_config):
    watcher, probe = await watching(glue_config)
    try:
        write(glue_config, "keys: [")
        assert (await probe.next_apply())[0] is None
        await probe.run_after(time.monotonic())  # polls keep reading it...
        assert probe.applied.empty()  # ...but the same broken bytes are not reported again
    finally:
        watcher.stop()


# -- through the addon: the gateway keeps serving, the metric counts ------------------

def reloads(addon, result: str) -> float:
    return addon.gateway.metrics.registry.get_sample_value(
        "keymux_config_reload_total", {"result": result}) or 0.0


async def watched(addon, path):
    """Start the addon's own watcher (what running() does) with a probe on its callback."""
    calls: asyncio.Queue = asyncio.Queue()
    original = addon._reloaded

    def reloaded(config, error):
        original(config, error)
        calls.put_nowait(error)

    addon._reloaded = reloaded
    addon._watch(str(path))
    return calls


async def test_a_broken_reload_keeps_the_old_config_serving(glue_config, glue_upstream, tmp_path):
    async with keymux_in(glue_config) as (addon, _):
        calls = await watched(addon, glue_config)
        gw, config = addon.gateway, addon.gateway.config
        write(glue_config, f"keys: [{{name: k1, key: {GLUE_K1}}}")
        error = await asyncio.wait_for(calls.get(), WAIT_S)
        assert error and GLUE_K1 not in error
        assert addon.gateway is gw and gw.config is config
        assert gw.reload_error == error and reloads(addon, "error") == 1
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 200  # the previous config keeps serving

        write(glue_config, with_third_key(glue_upstream.base_url, tmp_path))
        assert await asyncio.wait_for(calls.get(), WAIT_S) is None
        assert gw.reload_error is None and reloads(addon, "ok") == 1
        assert [k.name for k in gw.config.keys] == ["k1", "k2", "k3"]
        assert GLUE_K2 in {k.secret for k in gw.config.keys}  # the old keys carried over


async def test_reading_the_file_is_no_change_to_react_to(glue_config, monkeypatch):
    """inotify reports opens: the watcher's own read must not start another read, and so on
    (it did: a timer thread and a read of keys.yaml every 0.15 s, for ever)."""
    monkeypatch.setattr(reload_mod, "POLL_S", 60.0)  # only the first kick of the poll thread
    watcher, probe = await watching(glue_config)
    try:
        async with asyncio.timeout(WAIT_S):
            await probe.runs.get()  # the poll's first kick: one read of the file
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await probe.runs.get()
    finally:
        watcher.stop()
