"""keymux's mitmproxy options, and the mitmproxy options keymux needs set as it sets them.

``declare`` adds keymux's own options (``load``); ``apply`` checks them and enforces what
the gateway relies on (``configure``), in an order that matters: the bind is checked before
any ``options.update`` (a refusal must not recurse through it), the user's body limit is
read before keymux lowers mitmproxy's.
"""
from __future__ import annotations

import os

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode

from .. import exposure
from ..gateway import Gateway
from . import dispatch
from .upstream import Upstream


def declare(loader) -> None:
    loader.add_option("keymux_config", str, "config/keys.yaml",
                      "Path of keymux's key pool (keys.yaml).")
    loader.add_option("keymux_allow_open_gateway", bool, False,
                      "Serve a bind beyond loopback without a clients: section (anyone "
                      "who reaches the port spends your keys).")
    loader.add_option("keymux_flow_body_kb", int, 256,
                      "How much of a streamed answer (and of a failed attempt's body) a "
                      "flow keeps, in KB, so mitmweb can show it; 0 keeps none.")
    loader.add_option("keymux_sender", str, "lean",
                      "How keymux sends attempts to providers: 'lean' (its own HTTP/1.1 "
                      "client for direct connections, aiohttp through a proxy) or "
                      "'aiohttp' (every attempt through aiohttp).",
                      choices=("lean", "aiohttp"))
    loader.add_option("keymux_fast_hooks", bool, True,
                      "Dispatch mitmproxy's hooks only to the addons that define them "
                      "(planned per hook; mitmproxy walks every addon for every event).")


def apply(gw: Gateway, upstream: Upstream, updated: set[str]) -> int:
    """Check and enforce; the flow body cap in bytes. OptionsError on a refusal."""
    opts = ctx.options
    if opts.keymux_flow_body_kb < 0:
        raise exceptions.OptionsError("keymux: keymux_flow_body_kb must be 0 or more")
    if opts.keymux_fast_hooks:
        dispatch.install(ctx.master.addons)  # idempotent
    else:
        dispatch.uninstall(ctx.master.addons)
    bind(gw)  # before any options.update: a refusal must not recurse through it
    if opts.connection_strategy != "lazy":
        # A request the gateway answers itself must not open an upstream connection.
        opts.update(connection_strategy="lazy")
    upstream.configure(opts, updated)  # before limit_bodies: the user's limit
    limit_bodies(gw, upstream)
    if not opts.keep_host_header:
        # The Host check (DNS rebinding, keypool.exposure) needs the client's own Host;
        # keymux names the provider's host on every flow it routes.
        opts.update(keep_host_header=True)
    if opts.stream_large_bodies:
        # mitmproxy would send a large request on, with the client's headers, before
        # the request hook could route it (it re-streams even when a requestheaders
        # hook says no). Refuse rather than leak a client token.
        raise exceptions.OptionsError(
            "keymux: stream_large_bodies must stay unset (request bodies are read whole "
            "to route them; responses that are event streams are streamed anyway)")
    return opts.keymux_flow_body_kb * 1024


def bind(gw: Gateway) -> None:
    """Tell the gateway where it listens; refuse an open gateway beyond loopback."""
    opts = ctx.options
    try:
        modes = [ProxyMode.parse(m) for m in opts.mode]
    except ValueError:
        modes = []  # mitmproxy reports a bad mode itself
    binds = exposure.Binds(
        tuple((m.listen_host(opts.listen_host), m.listen_port(opts.listen_port))
              for m in modes) or ((opts.listen_host, opts.listen_port),),
        allow_open=opts.keymux_allow_open_gateway,
        sidecar_token=os.environ.get("KEYMUX_SIDECAR_TOKEN") or None)
    exposure.bind(gw, binds)  # first: a refused gateway answers 403 meanwhile
    refusal = exposure.open_refusal(binds, gw.config)
    if refusal is not None:
        raise exceptions.OptionsError(f"keymux: refusing to start: {refusal}")


def limit_bodies(gw: Gateway, upstream: Upstream) -> None:
    """mitmproxy's body_size_limit = routing.max_body_mb (or the user's own, if smaller): it
    refuses a larger Content-Length before reading a byte, and stops a chunked body once it
    passes the limit (413 either way, connection closed). For responses keymux's sender
    applies the user's own value (upstream.py)."""
    limit = upstream.request_limit(gw.max_body)
    if ctx.options.body_size_limit != limit:
        ctx.options.update(body_size_limit=limit)
