"""Shared pieces of the in-process glue tests: mitmproxy's taddons/tflow, no mitmdump.

``async def`` tests run on a fresh event loop each (``asyncio.run``) under a deadline, so
a hang fails the test instead of the run. The Keymux addon is loaded in a taddons context
by ``keymux_in``; upstreams are an in-process ``MockUpstream`` on loopback.
"""
from __future__ import annotations

import asyncio
import inspect
import io
import json
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mitmproxy import io as mitmproxy_io
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.test import taddons, tflow

from keypool.demo.mock_upstream import MockUpstream
from keypool.mitm import runtime
from keypool.mitm.addon import Keymux

GLUE_DEADLINE_S = 10.0  # no glue test comes near this; it only turns a hang into a failure
GLUE_K1 = "sk-glue-key-one-0000000001"
GLUE_K2 = "sk-glue-key-two-0000000002"
GLUE_TOKEN = "kmx-glue-client-token-abcdef123456"
GLUE_SECRETS = (GLUE_K1, GLUE_K2, GLUE_TOKEN)
# A bind on loopback in reverse mode: what `keymux run` starts (keymux refuses open binds).
GLUE_LOOPBACK = dict(mode=["reverse:http://127.0.0.1:9"], listen_host="127.0.0.1")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests of this directory, each on its own loop, under a deadline."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def bounded():
        async with asyncio.timeout(GLUE_DEADLINE_S):
            await pyfuncitem.obj(**args)

    asyncio.run(bounded())
    return True


def glue_keys_yaml(base_url: str, *, clients: bool = True, extra: str = "") -> str:
    """Two keys of one provider on ``base_url``; a client token unless ``clients=False``."""
    text = f"""
version: 1
providers:
  mock:
    base_url: {base_url}/v1
    models: ["gpt-*"]
    stream_usage: true
keys:
  - name: k1
    provider: mock
    key: {GLUE_K1}
  - name: k2
    provider: mock
    key: {GLUE_K2}
routing:
  strategy: round_robin
  timeout_s: 5
{extra}
"""
    if clients:
        text += f"clients:\n  - name: app\n    token: {GLUE_TOKEN}\n"
    return text


@pytest.fixture(scope="session")
def glue_mock():
    with MockUpstream() as m:
        yield m


@pytest.fixture
def glue_upstream(glue_mock):
    """The mock, with no behaviour or record left over from another test."""
    glue_mock.reset()
    return glue_mock


@pytest.fixture
def glue_config(tmp_path, glue_upstream) -> Path:
    """A keys.yaml for the mock, with its state directory inside tmp_path."""
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(glue_upstream.base_url,
                                   extra=f"state_dir: {tmp_path / 'state'}"))
    return path


@asynccontextmanager
async def keymux_in(config: Path, **options):
    """A Keymux addon loaded and configured in a taddons context, torn down after.

    Proxyserver and TlsConfig declare mitmproxy's proxy and TLS options (connection_strategy,
    body_size_limit, ssl_insecure, ...) that keymux reads and sets; the proxy is never
    started. Yields (addon, tctx)."""
    addon = Keymux()
    with taddons.context(Proxyserver(), TlsConfig(), addon) as tctx:
        try:
            tctx.configure(addon, keymux_config=str(config), **{**GLUE_LOOPBACK, **options})
            yield addon, tctx
        finally:
            await glue_teardown(addon, tctx)


async def glue_teardown(addon: Keymux, tctx) -> None:
    tctx.master.addons.clear()  # done() everywhere: ConnGuard's sweeper, keymux's flush
    await addon._close_io()
    await addon.upstream.close()  # _close_io only retires it (requests in flight finish)
    for path, rt in list(runtime._runtimes.items()):  # runtimes outlive addons on purpose
        if addon.runtime is rt:
            rt.writer.close()
            del runtime._runtimes[path]


def glue_chat_flow(model: str = "gpt-4o-mini", token: str | None = GLUE_TOKEN,
                   stream: bool = False, **extra):
    """A client's POST /v1/chat/completions as mitmproxy hands it to the hooks."""
    f = tflow.tflow()
    f.request.method, f.request.path = "POST", "/v1/chat/completions"
    f.request.host, f.request.port = "127.0.0.1", 8080
    f.request.headers.clear()
    f.request.headers["host"] = "127.0.0.1:8080"
    f.request.headers["content-type"] = "application/json"
    if token is not None:
        f.request.headers["authorization"] = f"Bearer {token}"
    f.request.content = json.dumps({"model": model, "stream": stream,
                                    "messages": [{"role": "user", "content": "hi"}],
                                    **extra}).encode()
    f.response = None
    f.client_conn.timestamp_end = None  # the client is still connected (re-issue needs it)
    return f


def glue_in_flight(addon: Keymux) -> int:
    return sum(k.in_flight for k in addon.gateway.pool.by_name.values())


def glue_secrets_in(flow) -> list[str]:
    """Which secrets a flow's saved form (mitmweb, -w files) would contain."""
    buf = io.BytesIO()
    mitmproxy_io.FlowWriter(buf).add(flow)
    raw = buf.getvalue() + repr(flow.get_state()).encode()
    return [s for s in GLUE_SECRETS if s.encode() in raw]


async def glue_fetch(port: int, path: str, *, reader_writer=None):
    """One GET over a real loopback socket, as mitmproxy fetches from the relay.

    Returns (status, head fields, body chunks as framed, (reader, writer)); chunks is None
    when the connection broke off before the last chunk. Pass ``reader_writer`` to reuse
    the connection (keep-alive)."""
    reader, writer = reader_writer or await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None, [], None, (reader, writer)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
    names = {k.lower(): v for k, v in fields}
    if "content-length" in names:
        await reader.readexactly(int(names["content-length"]))
        return status, fields, [], (reader, writer)
    chunks: list[bytes] | None = []
    try:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        chunks = None
    return status, fields, chunks, (reader, writer)
