"""The client token masked before any other addon sees the flow (keypool.mitm.clientauth),
in-process with mitmproxy's test helpers: the hook order, and keymux still authenticating."""
import asyncio
import gc
import json

import pytest
from mitmproxy import http
from mitmproxy.addons.view import View
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from keypool.mitm import clientauth, runtime
from keypool.mitm.failclosed import FailClosed
from keypool.mitm.addon import Keymux

TOKEN = "kmx-glue-client-token-0123456789"
ADMIN = "kmx-glue-admin-token-9876543210"


class Probe:
    """A user script: records what the flow's credential headers are when it looks."""
    name = "probe"

    def __init__(self):
        self.seen = []

    def requestheaders(self, flow):
        self.seen.append(flow.request.headers.get("authorization"))


def flow_with(headers, path="/v1/models", method="GET"):
    f = tflow.tflow()
    f.request.method, f.request.path = method, path
    f.request.headers = http.Headers([(k.encode(), v.encode()) for k, v in headers])
    return f


def test_install_puts_it_first_once_and_keeps_it_there():
    with taddons.context(View(), Probe()) as tctx:
        first = clientauth.install(tctx.master)
        assert clientauth.install(tctx.master) is first
        chain = tctx.master.addons.chain
        assert chain[0] is first and chain.count(first) == 1


def test_every_credential_header_is_masked_before_view_and_scripts_see_it():
    view, probe = View(), Probe()
    with taddons.context(view, probe) as tctx:
        auth = clientauth.install(tctx.master)
        f = flow_with([("Authorization", f"Bearer {TOKEN}"), ("x-api-key", TOKEN),
                       ("X-Goog-Api-Key", TOKEN), ("api-key", TOKEN),
                       ("x-keymux-admin-token", ADMIN), ("accept", "*/*")])
        tctx.master.addons.trigger(HttpRequestHeadersHook(f))
    assert probe.seen == ["Bearer kmx…6789"]
    assert list(view) == [f]
    shown = json.dumps(f.get_state(), default=repr)
    assert TOKEN not in shown and ADMIN not in shown
    assert f.request.headers["accept"] == "*/*"
    assert f.request.headers["x-api-key"] == "kmx…6789"
    # The originals are off the flow, and come back only through the addon.
    assert dict(auth.fields(f))[b"x-keymux-admin-token"] == ADMIN.encode()
    restored = auth.take(f)
    assert restored["authorization"] == f"Bearer {TOKEN}" and restored["api-key"] == TOKEN
    assert auth.take(f) is None and not auth.holds(f)


def test_a_header_changed_by_another_addon_is_merged_not_lost():
    auth, f = clientauth.ClientAuth(), flow_with([("authorization", f"Bearer {TOKEN}")])
    auth.requestheaders(f)
    f.request.headers["x-added"] = "1"  # a script's edit after the mask
    assert auth.take(f)["authorization"] == f"Bearer {TOKEN}"
    f2 = flow_with([("authorization", f"Bearer {TOKEN}")])
    auth.requestheaders(f2)
    f2.request.headers["authorization"] = "Bearer script-own"  # the script's own value wins
    assert auth.take(f2)["authorization"] == "Bearer script-own"


def test_entries_go_with_the_answer_and_with_the_flow():
    auth = clientauth.ClientAuth()
    f = flow_with([("authorization", f"Bearer {TOKEN}")])
    auth.requestheaders(f)
    auth.response(f)
    assert not auth.holds(f)
    f = flow_with([("authorization", f"Bearer {TOKEN}")])
    auth.requestheaders(f)
    assert len(auth._held) == 1
    del f
    gc.collect()  # tflow's flows sit in reference cycles
    assert len(auth._held) == 0  # weak: a dropped flow takes its originals along


def test_a_flow_without_credentials_is_left_alone():
    auth, f = clientauth.ClientAuth(), flow_with([("accept", "*/*")])
    before = f.request.headers.fields
    auth.requestheaders(f)
    assert f.request.headers.fields is before and not auth.holds(f)


def test_with_no_keymux_loaded_the_flow_is_masked_and_answered_503(monkeypatch):
    monkeypatch.setattr(runtime, "active", None)  # the script failed to load
    view = View()
    with taddons.context(view, FailClosed()) as tctx:
        clientauth.install(tctx.master)
        f = flow_with([("authorization", f"Bearer {TOKEN}")], "/v1/chat/completions", "POST")
        tctx.master.addons.trigger(HttpRequestHeadersHook(f))
        assert f.request.headers["authorization"] == "Bearer kmx…6789"
        tctx.master.addons.trigger(HttpRequestHook(f))
        tctx.master.addons.trigger(HttpResponseHook(f))
    assert f.response.status_code == 503
    assert f.request.headers["authorization"] == "Bearer kmx…6789"  # not masked twice
    assert not tctx.master.addons.get("keymux_clientauth").holds(f)


# -- with keymux loaded --------------------------------------------------------------

CONFIG = f"""
version: 1
providers:
  mock:
    base_url: http://127.0.0.1:9/v1
    models: ["gpt-*"]
keys:
  - name: k1
    provider: mock
    key: sk-glue-pool-key-00000001
clients:
  - name: app
    token: {TOKEN}
"""


def with_keymux(tmp_path, body):
    """Run ``body(tctx, addon)`` on an event loop, keymux loaded from CONFIG."""
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG + f"state_dir: {tmp_path / 'state'}\n")

    async def main():
        addon = Keymux()
        with taddons.context(View(), Probe(), addon) as tctx:
            tctx.configure(addon, keymux_config=str(path))
            await asyncio.sleep(0)  # install() moves it to the front on the loop's next turn
            try:
                await body(tctx, addon)
            finally:
                addon.runtime.writer.flush(timeout=2.0)
    asyncio.run(main())


async def send(tctx, addon, headers):
    f = flow_with(headers)
    tctx.master.addons.trigger(HttpRequestHeadersHook(f))
    await addon.request(f)
    return f


def test_keymux_loads_it_first_and_still_authenticates(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYMUX_ADMIN_TOKEN", raising=False)

    async def body(tctx, addon):
        chain = tctx.master.addons.chain
        assert chain[0] is addon.clientauth and addon in chain  # the add() was not lost
        f = await send(tctx, addon, [("authorization", f"Bearer {TOKEN}")])
        assert f.response.status_code == 200, f.response.content  # /v1/models: the gateway's
        assert TOKEN not in json.dumps(f.get_state(), default=repr)
        assert not addon.clientauth.holds(f)
        f = await send(tctx, addon, [("x-api-key", TOKEN)])
        assert f.response.status_code == 200
        f = await send(tctx, addon, [("authorization", "Bearer kmx-wrong-token-000000000")])
        assert f.response.status_code == 401
        f = await send(tctx, addon, [])
        assert f.response.status_code == 401
        # The masked form, sent as it is shown, is no token.
        f = await send(tctx, addon, [("authorization", "Bearer kmx…6789")])
        assert f.response.status_code == 401
    with_keymux(tmp_path, body)
