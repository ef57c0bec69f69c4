"""Keymux's hooks in a taddons context, against an in-process mock upstream.

Asserted: statuses, error codes, key accounting, what was sent upstream, and that no secret
is in a flow. Not asserted: the host, comment or request body a flow shows (issue 10's
`flows` work changes those).
"""
import json
import logging

from mitmproxy.test import tflow, tutils

from keypool.mitm import boundary
from keypool.mitm.failclosed import routed_by_keymux

from .conftest import (GLUE_K1, GLUE_K2, GLUE_TOKEN, glue_chat_flow, glue_fetch, glue_in_flight,
                       glue_secrets_in, keymux_in)


def code(flow) -> str:
    return json.loads(flow.response.content)["error"]["code"]


def releases(addon, monkeypatch) -> list[tuple[str, str]]:
    """Record every key release (pool.release runs once per accounted attempt)."""
    pool, seen = addon.gateway.pool, []
    original = pool.release

    def release(lease, *, outcome, **kw):
        seen.append((lease.key.name, outcome))
        return original(lease, outcome=outcome, **kw)

    monkeypatch.setattr(pool, "release", release)
    return seen


def k1_first(addon, monkeypatch) -> None:
    """Deterministic selection: k1 whenever it is a candidate."""
    monkeypatch.setattr(addon.gateway.pool, "choose", lambda cands, rng: min(
        cands, key=lambda k: k.name))


# -- requestheaders: refusals on the head alone ----------------------------------------

def head_flow(method="GET", path="/v1/models"):
    f = glue_chat_flow()
    f.request.method, f.request.path = method, path
    return f


async def test_requestheaders_refuses_connect_absolute_form_and_oversized_heads(glue_config):
    async with keymux_in(glue_config) as (addon, _):
        connect = head_flow("CONNECT")
        absolute = head_flow()
        absolute.request.authority = "api.openai.com:443"
        long_url = head_flow(path="/v1/models?" + "x" * 20_000)
        big_headers = head_flow()
        big_headers.request.headers["x-filler"] = "y" * 100_000
        too_long = head_flow("POST", "/v1/chat/completions")
        too_long.request.headers["content-length"] = str(33 << 20)
        expected = [(connect, 405, "method_not_allowed"), (absolute, 400, "invalid_path"),
                    (long_url, 414, "uri_too_long"), (big_headers, 431, "headers_too_large"),
                    (too_long, 413, "request_too_large")]
        for f, status, err in expected:
            addon.requestheaders(f)
            assert (f.response.status_code, code(f)) == (status, err)
            assert GLUE_TOKEN not in f.request.headers["authorization"]
            assert glue_secrets_in(f) == []


async def test_requestheaders_lets_an_ordinary_head_through(glue_config):
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow()
        addon.requestheaders(f)
        assert f.response is None


# -- request: the gateway's own answers -------------------------------------------------

async def test_a_bad_client_token_is_401_and_nothing_goes_upstream(glue_config, glue_upstream):
    async with keymux_in(glue_config) as (addon, _):
        for token in ("kmx-wrong-token-000000000", None):
            f = glue_chat_flow(token=token)
            await addon.request(f)
            assert f.response.status_code == 401
            assert glue_secrets_in(f) == []
        assert glue_upstream.count() == 0 and glue_in_flight(addon) == 0


async def test_a_wrong_token_is_masked_in_the_flow(glue_config):
    wrong = "kmx-wrong-token-abcdefghijkl"
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow(token=wrong)
        await addon.request(f)
        assert wrong not in json.dumps(f.get_state(), default=repr)


async def test_an_unknown_provider_is_404_and_nothing_goes_upstream(glue_config, glue_upstream):
    # (with one provider, every model routes to it: rule 6)
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow(model="nobody-serves-this")
        f.request.headers["x-keymux-provider"] = "nope"
        await addon.request(f)
        assert f.response.status_code == 404 and code(f) == "provider_not_found"
        assert glue_upstream.count() == 0 and glue_in_flight(addon) == 0
        assert glue_secrets_in(f) == []


# -- request: through the mock upstream ------------------------------------------------

async def test_a_request_is_served_with_the_real_key_upstream_and_none_in_the_flow(
        glue_config, glue_upstream, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        k1_first(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 200
        assert json.loads(f.response.content)["choices"]
        sent = glue_upstream.requests()
        assert len(sent) == 1
        assert sent[0]["headers"]["authorization"] == f"Bearer {GLUE_K1}"
        assert GLUE_TOKEN not in json.dumps(sent[0]["header_list"])
        assert sent[0]["body"]["model"] == "gpt-4o-mini"
        assert f.request.headers["authorization"].startswith("Bearer sk-…")
        assert glue_secrets_in(f) == []
        assert seen == [("k1", "ok")] and glue_in_flight(addon) == 0
        assert f.metadata["keymux"]["key"] == "k1"


async def test_a_429_fails_over_to_the_other_key(glue_config, glue_upstream, monkeypatch):
    glue_upstream.set_behavior(GLUE_K1, status=429, headers={"retry-after": "30"})
    async with keymux_in(glue_config) as (addon, _):
        k1_first(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 200
        assert glue_upstream.count(GLUE_K1, 429) == 1 and glue_upstream.count(GLUE_K2, 200) == 1
        assert seen == [("k1", "rate_limited"), ("k2", "ok")]
        assert addon.gateway.pool.by_name["k1"].cool  # k1 cools down, k2 does not
        assert not addon.gateway.pool.by_name["k2"].cool
        assert glue_in_flight(addon) == 0 and glue_secrets_in(f) == []


async def test_every_key_failing_is_the_gateways_own_answer(glue_config, glue_upstream):
    glue_upstream.set_behavior(GLUE_K1, status=500)  # both 5xx would be a provider outage
    glue_upstream.set_behavior(GLUE_K2, status=401)
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 502 and code(f) == "upstream_failed"
        assert glue_upstream.count(GLUE_K1, 500) == 1 and glue_upstream.count(GLUE_K2, 401) == 1
        assert glue_in_flight(addon) == 0 and glue_secrets_in(f) == []


async def test_an_echoed_key_in_a_whole_answer_is_masked(glue_config, glue_upstream):
    for key in (GLUE_K1, GLUE_K2):
        glue_upstream.set_behavior(key, echo=["body", "header"])
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 200
        assert glue_secrets_in(f) == []


# -- the exception boundary -----------------------------------------------------------

async def test_a_raising_gateway_step_is_500_and_releases_nothing_twice(
        glue_config, glue_upstream, monkeypatch, caplog):
    async with keymux_in(glue_config) as (addon, _):
        def boom(ticket):
            raise RuntimeError(f"boom {GLUE_K1}")

        monkeypatch.setattr(addon.gateway, "pick", boom)
        f = glue_chat_flow()
        with caplog.at_level(logging.ERROR, "keymux"):
            await addon.request(f)
        assert f.response.status_code == 500 and code(f) == "keymux_internal_error"
        assert glue_upstream.count() == 0 and glue_in_flight(addon) == 0
        assert GLUE_K1 not in caplog.text and "internal error in request" in caplog.text
        assert glue_secrets_in(f) == []


async def test_a_sender_that_raises_after_the_pick_gives_the_key_back(
        glue_config, glue_upstream, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        seen = releases(addon, monkeypatch)

        async def boom(*a, **kw):
            raise RuntimeError("sender bug")

        monkeypatch.setattr(addon.upstream, "send", boom)
        f = glue_chat_flow()
        await addon.request(f)
        assert f.response.status_code == 500 and code(f) == "keymux_internal_error"
        assert len(seen) == 1 and seen[0][1] == "cancelled"  # nobody blamed
        assert glue_in_flight(addon) == 0 and glue_secrets_in(f) == []


# -- the relayed stream -----------------------------------------------------------------

async def streamed(addon, monkeypatch):
    k1_first(addon, monkeypatch)
    f = glue_chat_flow(stream=True)
    await addon.request(f)
    return f


async def test_a_stream_is_pointed_at_the_relay_holding_its_key(glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        assert f.response is None  # mitmproxy fetches it from the relay
        host, port, path = f.metadata[boundary.MARK]
        assert (host, port) == ("127.0.0.1", addon.relay.port)
        assert path[1:] in addon.relay.parked
        assert routed_by_keymux(f)  # FailClosed lets it pass
        assert glue_in_flight(addon) == 1  # held until the stream ends
        assert glue_secrets_in(f) == []


async def test_a_relayed_stream_is_accounted_once_when_it_ends(
        glue_config, glue_upstream, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        _, port, path = f.metadata[boundary.MARK]
        # what mitmproxy does: fetch from the relay, stream it through the tap
        status, fields, chunks, (_, w) = await glue_fetch(port, path)
        w.close()
        f.response = tutils.tresp(status_code=status, headers=tflow.http.Headers(
            [(k.encode(), v.encode()) for k, v in fields]), content=None)
        addon.responseheaders(f)
        assert callable(f.response.stream)
        out = b"".join(b"".join(_parts(f.response.stream(c))) for c in chunks + [b""])
        assert b"[DONE]" in out
        addon.response(f)
        addon.response(f)  # a second end is a no-op
        assert seen == [("k1", "ok")] and glue_in_flight(addon) == 0
        k1 = addon.gateway.pool.by_name["k1"]
        assert k1.tokens_out > 0  # the usage read from the stream
        assert glue_upstream.requests()[0]["headers"]["authorization"] == f"Bearer {GLUE_K1}"
        assert glue_secrets_in(f) == []


def _parts(out):
    return [out] if isinstance(out, bytes) else list(out)


async def test_a_stream_that_breaks_off_releases_its_key(glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        f.response = tutils.tresp(headers=tflow.http.Headers(
            [(b"content-type", b"text/event-stream")]), content=None)
        addon.responseheaders(f)
        f.error = tflow.terr()
        addon.error(f)
        assert len(seen) == 1 and seen[0][0] == "k1"
        assert glue_in_flight(addon) == 0 and f not in addon.streams


async def test_a_stream_whose_flow_errors_before_headers_releases_its_key(
        glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        f.error = tflow.terr()  # the client left, or the relay could not be reached
        addon.error(f)
        assert glue_in_flight(addon) == 0
        # The key's answer was a good stream (judged so): nothing here is the key's fault.
        assert seen == [("k1", "cancelled")]


async def test_a_raising_responseheaders_answers_500_and_blames_no_key(
        glue_config, monkeypatch):
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        seen = releases(addon, monkeypatch)
        f.response = tutils.tresp(headers=tflow.http.Headers(
            [(b"content-type", b"text/event-stream")]), content=None)

        def boom(*a):
            raise RuntimeError("tap bug")

        monkeypatch.setattr("keypool.mitm.addon.SseTap", boom)
        addon.responseheaders(f)
        assert f.response.status_code == 500
        body = b"".join(b"".join(_parts(f.response.stream(c))) for c in (b"data: x\n\n", b""))
        assert json.loads(body)["error"]["code"] == "keymux_internal_error"
        addon.response(f)
        assert seen == [("k1", "cancelled")] and glue_in_flight(addon) == 0


# -- more of request's edges ----------------------------------------------------------

async def test_without_a_loaded_config_every_request_is_503_and_masked():
    from keypool.mitm.addon import Keymux
    addon = Keymux()  # configure failed at start: mitmdump is on its way out
    f = glue_chat_flow()
    await addon.request(f)
    assert f.response.status_code == 503 and code(f) == "keymux_not_loaded"
    assert glue_secrets_in(f) == []


async def test_a_model_no_provider_serves_is_404_with_two_providers(tmp_path, glue_upstream):
    path = tmp_path / "keys.yaml"
    path.write_text(f"""
version: 1
state_dir: {tmp_path / 'state'}
providers:
  mock:
    base_url: {glue_upstream.base_url}/v1
    models: ["gpt-*"]
  other:
    base_url: {glue_upstream.base_url}/alt/v1
    models: ["alt-*"]
keys:
  - {{name: k1, provider: mock, key: {GLUE_K1}}}
  - {{name: k2, provider: other, key: {GLUE_K2}}}
clients:
  - {{name: app, token: {GLUE_TOKEN}}}
""")
    async with keymux_in(path) as (addon, _):
        f = glue_chat_flow(model="nobody-serves-this")
        await addon.request(f)
        assert f.response.status_code == 404 and code(f) == "model_not_found"
        assert glue_upstream.count() == 0 and glue_secrets_in(f) == []


async def test_the_gateways_own_paths_are_answered_without_upstream(glue_config, glue_upstream):
    async with keymux_in(glue_config) as (addon, _):
        f = glue_chat_flow()
        f.request.method, f.request.path, f.request.content = "GET", "/health", b""
        await addon.request(f)
        assert f.response.status_code == 200 and glue_upstream.count() == 0


async def test_a_client_that_left_gets_no_second_attempt(glue_config, glue_upstream, monkeypatch):
    glue_upstream.set_behavior(GLUE_K1, status=503)
    async with keymux_in(glue_config) as (addon, _):
        k1_first(addon, monkeypatch)
        f = glue_chat_flow()
        f.client_conn.timestamp_end = 1.0  # disconnected while the first attempt ran
        await addon.request(f)
        assert glue_upstream.count() == 1 and glue_upstream.count(GLUE_K2) == 0
        assert f.response.status_code >= 500 and glue_in_flight(addon) == 0


async def test_a_failed_over_stream_is_relayed_from_the_second_key(
        glue_config, glue_upstream, monkeypatch):
    glue_upstream.set_behavior(GLUE_K1, status=429)
    async with keymux_in(glue_config) as (addon, _):
        f = await streamed(addon, monkeypatch)
        _, port, path = f.metadata[boundary.MARK]
        status, _, chunks, (_, w) = await glue_fetch(port, path)
        w.close()
        assert status == 200 and b"[DONE]" in b"".join(chunks)
        assert glue_upstream.count(GLUE_K1, 429) == 1 and glue_upstream.count(GLUE_K2, 200) == 1
        assert f.metadata["keymux"]["key"] == "k2" and glue_in_flight(addon) == 1
