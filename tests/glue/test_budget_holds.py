"""A budget's estimate is held while a request is in flight and released on every way out of
the addon's hooks (answered, failed, raising, stream ended, stream broken off), like a key."""
from mitmproxy.test import tflow, tutils

from keypool.mitm import boundary

from .conftest import GLUE_TOKEN, glue_chat_flow, glue_fetch, glue_in_flight, glue_keys_yaml, keymux_in
from .test_addon_hooks import k1_first


def budget_config(tmp_path, upstream):
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(upstream.base_url, clients=False, extra=(
        f"state_dir: {tmp_path / 'state'}\nclients:\n  - name: app\n    token: {GLUE_TOKEN}\n"
        "    budget: {daily_usd: 1000, daily_tokens: 10000000}\n")))
    return path


def holds(addon) -> int:
    return addon.gateway.ledger.holds()


async def test_whole_answers_and_failures_release_the_hold(tmp_path, glue_upstream):
    async with keymux_in(budget_config(tmp_path, glue_upstream)) as (addon, _):
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 200 and holds(addon) == 0
        for k in ("sk-glue-key-one-0000000001", "sk-glue-key-two-0000000002"):
            glue_upstream.set_behavior(k, status=500)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code in (502, 503) and holds(addon) == 0  # 503: provider down
        assert glue_in_flight(addon) == 0


async def test_raising_steps_release_the_hold(tmp_path, glue_upstream, monkeypatch):
    async with keymux_in(budget_config(tmp_path, glue_upstream)) as (addon, _):
        def boom(ticket):
            raise RuntimeError("pick bug")  # before any attempt: no plan, no key

        monkeypatch.setattr(addon.gateway, "pick", boom)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 500 and holds(addon) == 0
        monkeypatch.undo()

        async def fail(*a, **kw):
            raise RuntimeError("sender bug")  # after the pick

        monkeypatch.setattr(addon.upstream, "send", fail)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 500 and holds(addon) == 0
        assert glue_in_flight(addon) == 0


async def test_a_stream_holds_until_it_ends_or_breaks_off(tmp_path, glue_upstream, monkeypatch):
    async with keymux_in(budget_config(tmp_path, glue_upstream)) as (addon, _):
        k1_first(addon, monkeypatch)
        # ended normally
        f = glue_chat_flow(stream=True)
        await addon.request(f)
        assert holds(addon) > 0                  # held while the stream is relayed
        _, port, path = f.metadata[boundary.MARK]
        status, fields, chunks, (_, w) = await glue_fetch(port, path)
        w.close()
        f.response = tutils.tresp(status_code=status, headers=tflow.http.Headers(
            [(k.encode(), v.encode()) for k, v in fields]), content=None)
        addon.responseheaders(f)
        for c in chunks + [b""]:
            out = f.response.stream(c)
            list(out) if not isinstance(out, bytes) else None
        addon.response(f)
        assert holds(addon) == 0
        spent = addon.gateway.ledger.tokens("client", "app", "day", addon.gateway.clock.wall())
        assert spent > 0                          # settled with the stream's real usage
        # broken off before its headers
        f = glue_chat_flow(stream=True)
        await addon.request(f)
        assert holds(addon) > 0
        f.error = tflow.terr()
        addon.error(f)
        assert holds(addon) == 0 and glue_in_flight(addon) == 0
        # the script removed while a stream runs
        f = glue_chat_flow(stream=True)
        await addon.request(f)
        addon._release_streams()
        assert holds(addon) == 0 and glue_in_flight(addon) == 0
