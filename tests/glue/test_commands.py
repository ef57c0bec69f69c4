"""keymux.keys/reset/disable/enable/replay, in-process: mitmproxy's test master, a gateway
loaded from a temp keys.yaml, the in-process mock upstream."""
import asyncio
import json
import os
import re
import sqlite3
import time

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from keypool.demo.mock_upstream import MockUpstream
from keypool.mitm.addon import Keymux

K1, K2 = "sk-mock-key-one-00000001", "sk-mock-key-two-00000002"
OTHER = "sk-other-mock-key-0000003"
SECRETS = (K1, K2, OTHER)

YAML = """\
version: 1
# the command tests' pool
providers:
  mock:
    base_url: {url}/v1
    models: ["gpt-*"]
  other:
    base_url: {url}/alt/v1
    models: ["alt-*"]
keys:
  - name: k1   # the first key, keep this comment
    provider: mock
    key: {k1}
  - name: k2
    provider: mock
    key: {k2}
  - name: o1
    provider: other
    key: {o}
# a comment at the end
state_dir: {state}
"""
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def mock():
    with MockUpstream() as m:
        yield m


@pytest.fixture
def keys_yaml(tmp_path, mock):
    mock.reset()
    path = tmp_path / "keys.yaml"
    path.write_text(YAML.format(url=mock.base_url, k1=K1, k2=K2, o=OTHER,
                                state=tmp_path / "state"))
    return path


class Collect:
    """Every flow that reaches the response hook: the replays' new flows."""
    def __init__(self):
        self.flows = []

    def response(self, f):
        self.flows.append(f)

    def error(self, f):
        self.flows.append(f)


def run(keys_yaml, body):
    """``body(tctx, keymux, collected)`` with a live keymux (watcher running)."""
    async def main():
        km, seen = Keymux(), Collect()
        with taddons.context(Proxyserver(), km, seen) as tctx:  # its options, not its servers
            tctx.configure(km, listen_host="127.0.0.1", keymux_config=str(keys_yaml))
            km.running()
            try:
                return await body(tctx, km, seen)
            finally:
                km.done()
                await km._close_io()
                km.runtime.writer.close()
    return asyncio.run(main())


def call(tctx, name, *args):
    return tctx.master.commands.call(name, *args)


async def replayed(km, seen, before):
    """Wait for the replays started so far; the new flows."""
    await asyncio.wait_for(asyncio.gather(*km.addons[0].tasks), DEADLINE_S)
    return seen.flows[before:]


def recorded(mock, provider="mock", host=None, path="/v1/chat/completions", model="gpt-4o-mini"):
    """A client flow as keymux records it: provider URL, body as sent, masked key."""
    f = tflow.tflow(resp=True, live=False)
    port = int(mock.base_url.rsplit(":", 1)[1])
    f.request.scheme, f.request.host, f.request.port = "http", host or "127.0.0.1", port
    f.request.method, f.request.path = "POST", path
    f.request.headers["authorization"] = "Bearer sk-…0001"
    f.request.headers["content-type"] = "application/json"
    f.request.content = json.dumps({"model": model, "messages": [
        {"role": "user", "content": "hi"}]}).encode()
    f.metadata["keymux"] = {"provider": provider, "model": model, "key": "k1", "client": None}
    return f


def no_secret(f):
    text = json.dumps(f.get_state(), default=repr)
    return not any(s in text for s in SECRETS)


# -- keymux.keys

def test_keys_lists_every_key_and_its_state_without_secrets(keys_yaml):
    async def body(tctx, km, seen):
        km.gateway.pool.cool_down(km.gateway.pool.by_name["k2"], "", 30, "rate_limited")
        return call(tctx, "keymux.keys")
    lines = run(keys_yaml, body)
    assert lines[0].split()[:3] == ["NAME", "PROVIDER", "STATE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"k1", "k2", "o1"}
    assert rows["k1"][1:3] == ["mock", "ok"] and rows["k2"][2] == "cooling"
    assert rows["k2"][3].endswith("s") and rows["o1"][1] == "other"
    assert not any(s in "\n".join(lines) for s in SECRETS)
    assert "sk-…0001" in rows["k1"]  # the mask, so the operator can tell keys apart


# -- keymux.reset

def test_reset_clears_a_cooldown_and_a_dead_mark(keys_yaml):
    async def body(tctx, km, seen):
        pool, now = km.gateway.pool, km.gateway.clock.monotonic()
        pool.cool_down(pool.by_name["k1"], "", 3600, "auth")
        assert pool.by_name["k1"].state(now) == "dead"
        said = tctx.master.commands.execute("keymux.reset k1")
        with pytest.raises(exceptions.CommandError, match="no key named 'nope'"):
            tctx.master.commands.execute("keymux.reset nope")
        return said, pool.by_name["k1"].state(km.gateway.clock.monotonic())
    said, state = run(keys_yaml, body)
    assert state == "ok" and "k1" in said and "ok" in said
    rows = sqlite3.connect(keys_yaml.parent / "state" / "audit.db").execute(
        "SELECT action, target, session FROM audit").fetchall()
    assert rows == [("cooldown.reset", "k1", "mitmproxy")]


# -- keymux.disable / keymux.enable

def test_disable_writes_keys_yaml_like_the_ui_and_the_reload_applies_it(keys_yaml):
    before_ino = os.stat(keys_yaml).st_ino

    async def body(tctx, km, seen):
        said = tctx.master.commands.execute("keymux.disable k1")
        end = time.monotonic() + DEADLINE_S
        while km.gateway.pool.by_name["k1"].spec.enabled and time.monotonic() < end:
            await asyncio.sleep(0.05)
        disabled = not km.gateway.pool.by_name["k1"].spec.enabled
        again = call(tctx, "keymux.disable", "k1")
        return said, disabled, again
    said, disabled, again = run(keys_yaml, body)
    text = keys_yaml.read_text()
    assert "disabled" in said and disabled and "already disabled" in again
    assert "  - name: k1   # the first key, keep this comment\n" in text
    assert "# a comment at the end" in text and "# the command tests' pool" in text
    k1 = text.split("- name: k1")[1].split("- name: k2")[0]
    assert "enabled: false" in k1 and text.count("enabled:") == 1
    assert os.stat(keys_yaml).st_ino != before_ino  # replaced by a rename, not rewritten
    assert sorted(p.name for p in keys_yaml.parent.iterdir()) == [
        ".keys.yaml.lock", "keys.yaml", "state"]  # no temp file left behind
    rows = sqlite3.connect(keys_yaml.parent / "state" / "audit.db").execute(
        "SELECT action, target FROM audit").fetchall()
    assert rows == [("key.disabled", "k1")]


def test_enable_writes_true_and_an_unknown_key_writes_nothing(keys_yaml):
    keys_yaml.write_text(keys_yaml.read_text().replace(
        "    key: " + K2, "    key: " + K2 + "\n    enabled: false  # off for now"))
    before = keys_yaml.read_bytes(), os.stat(keys_yaml).st_mtime_ns

    async def body(tctx, km, seen):
        with pytest.raises(exceptions.CommandError, match="no key named 'k9'.*nothing written"):
            call(tctx, "keymux.enable", "k9")
        unchanged = (keys_yaml.read_bytes(), os.stat(keys_yaml).st_mtime_ns) == before
        return unchanged, call(tctx, "keymux.enable", "k2")
    unchanged, said = run(keys_yaml, body)
    assert unchanged and "k2 enabled" in said
    assert re.search(r"enabled: true +# off for now", keys_yaml.read_text())  # the comment stays


# -- keymux.replay

def test_replay_through_the_pool_is_a_new_flow_with_the_status_and_a_masked_key(keys_yaml, mock):
    original = recorded(mock)

    async def body(tctx, km, seen):
        said = call(tctx, "keymux.replay", original, "")
        return said, await replayed(km, seen, len(seen.flows)), km.gateway.pool.snapshot()
    said, new, snap = run(keys_yaml, body)
    assert "through the pool" in said and len(new) == 1
    f = new[0]
    assert f.id != original.id and f.response.status_code == 200
    meta = f.metadata["keymux"]
    assert meta["replay_of"] == original.id and meta["client"] == "@operator"
    assert f.comment == f"replay of {original.id} on {meta['key']}: 200"
    assert f.request.headers["authorization"].startswith("Bearer sk-…")
    assert no_secret(f) and mock.count() == 1
    assert f.server_conn.peername[1] == int(mock.base_url.rsplit(":", 1)[1])  # really went there
    assert sum(k["requests"] for k in snap) == 1  # counted like any request


def test_replay_on_a_chosen_key_makes_one_attempt_and_judges_it(keys_yaml, mock):
    mock.set_behavior(K2, status=401)
    original = recorded(mock)

    async def body(tctx, km, seen):
        call(tctx, "keymux.replay", original, "k2")
        new = await replayed(km, seen, len(seen.flows))
        return new, call(tctx, "keymux.keys")[2].split()[2]
    new, state = run(keys_yaml, body)
    f = new[0]
    assert f.response.status_code == 401 and f.comment == f"replay of {original.id} on k2: 401"
    assert mock.count(K2) == 1 and mock.count() == 1  # that key only, no re-issue
    assert state == "dead"  # judged by the normal policy; keymux.keys shows it
    assert f.request.headers["authorization"] == "Bearer sk-…0002" and no_secret(f)


def test_a_replay_the_pool_cannot_take_gets_the_gateways_answer(keys_yaml, mock):
    original = recorded(mock)

    async def body(tctx, km, seen):
        pool = km.gateway.pool
        for name in ("k1", "k2"):
            pool.cool_down(pool.by_name[name], "", 60, "rate_limited")
        call(tctx, "keymux.replay", original, "")
        return await replayed(km, seen, len(seen.flows))
    f = run(keys_yaml, body)[0]
    assert f.response.status_code == 429 and mock.count() == 0
    assert f.comment == f"replay of {original.id} on the pool: 429"
    assert json.loads(f.response.content)["error"]["code"] == "all_keys_busy"


def test_a_replay_without_an_answer_is_a_flow_with_an_error(keys_yaml, mock):
    mock.set_behavior(K1, reset=True)
    original = recorded(mock)

    async def body(tctx, km, seen):
        call(tctx, "keymux.replay", original, "k1")
        new = await replayed(km, seen, len(seen.flows))
        return new, call(tctx, "keymux.keys")[1]
    new, k1_line = run(keys_yaml, body)
    f = new[0]
    assert f.response is None and f.error is not None
    assert f.comment.startswith(f"replay of {original.id} on k1: ") and no_secret(f)
    assert "cooling" in k1_line and f.error.msg[:20] in k1_line  # LAST says why


def test_a_streamed_request_is_replayed_and_its_sse_kept(keys_yaml, mock):
    original = recorded(mock)
    original.request.content = json.dumps({"model": "gpt-4o-mini", "stream": True,
                                           "messages": []}).encode()

    async def body(tctx, km, seen):
        call(tctx, "keymux.replay", original, "")
        return await replayed(km, seen, len(seen.flows))
    f = run(keys_yaml, body)[0]
    assert f.response.status_code == 200 and b"data: [DONE]" in f.response.content


def test_replay_of_a_flow_the_request_hook_routed(keys_yaml, mock):
    async def body(tctx, km, seen):
        f = tflow.tflow()
        f.request.method, f.request.path = "POST", "/v1/chat/completions"
        f.request.host, f.request.port = "127.0.0.1", 8080
        f.request.headers["host"] = "127.0.0.1:8080"
        f.request.headers["content-type"] = "application/json"
        f.request.content = b'{"model": "mock/gpt-4o-mini", "messages": []}'
        await km.request(f)
        assert f.response.status_code == 200, f.response.content
        f.live = False
        call(tctx, "keymux.replay", f, "k1")
        return f, await replayed(km, seen, len(seen.flows))
    original, new = run(keys_yaml, body)
    assert new[0].response.status_code == 200 and no_secret(new[0])
    assert mock.count(K1) >= 1 and mock.count() == 2
    assert mock.requests()[-1]["body"]["model"] == "gpt-4o-mini"  # routed as the original was
    assert new[0].metadata["keymux"]["model"] == "gpt-4o-mini"
    req = new[0].request
    assert json.loads(req.content)["model"] == "gpt-4o-mini"  # the flow shows what was sent
    assert req.headers["content-length"] == str(len(req.raw_content))


def test_replay_refuses_a_foreign_host_provider_or_key(keys_yaml, mock):
    async def body(tctx, km, seen):
        cases = [
            (recorded(mock, host="evil.example"), "", "is not provider mock's base URL"),
            (recorded(mock, provider="nope"), "", "provider 'nope' has no keys"),
            (recorded(mock, path="/v1/../../admin"), "", "not under provider mock"),
            (recorded(mock, path="/alt/v1/chat/completions"), "", "not under provider mock"),
            (recorded(mock), "o1", "belongs to other"),
            (recorded(mock), "k9", "no key named 'k9'"),
            (tflow.tflow(resp=True), "", "no keymux metadata"),
        ]
        for f, key, why in cases:
            with pytest.raises(exceptions.CommandError, match=why):
                call(tctx, "keymux.replay", f, key)
        return km.addons[0].tasks
    assert run(keys_yaml, body) == set()
    assert mock.count() == 0  # nothing was sent anywhere
