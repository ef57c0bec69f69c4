"""The mitmproxy addon: applies the gateway's decisions to flows. The only mitmproxy glue.

Hooks stay short and never block: the decisions live in ``keypool.gateway``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from weakref import WeakKeyDictionary

from mitmproxy import ctx, exceptions, http

from ..answers import Answer
from ..config import load_config
from ..errors import ConfigError
from ..gateway import Gateway, Plan
from ..providers import CLIENT_AUTH_HEADERS
from ..redact import mask
from ..usage import SseTap, Usage, usage_of_body
from . import runtime

logger = logging.getLogger("keymux")


class Keymux:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.plans: WeakKeyDictionary[http.HTTPFlow, Plan] = WeakKeyDictionary()
        self.taps: WeakKeyDictionary[http.HTTPFlow, SseTap] = WeakKeyDictionary()

    def load(self, loader) -> None:
        loader.add_option("keymux_config", str, "config/keys.yaml",
                          "Path of keymux's key pool (keys.yaml).")

    def configure(self, updated: set[str]) -> None:
        if "keymux_config" in updated or self.gateway is None:
            self._load(ctx.options.keymux_config)
        if ctx.options.connection_strategy != "lazy":
            # A request the gateway refuses must not open an upstream connection.
            ctx.options.update(connection_strategy="lazy")
        if ctx.options.stream_large_bodies:
            # mitmproxy would send a large request on, with the client's headers, before
            # the request hook could route it and put a key in (it re-streams even when a
            # requestheaders hook says no). Refuse rather than leak a client token.
            raise exceptions.OptionsError(
                "keymux: stream_large_bodies must stay unset (request bodies are read whole "
                "to route them; responses that are event streams are streamed anyway)")

    def _load(self, path: str) -> None:
        try:
            config = load_config(path)
        except ConfigError as e:
            raise exceptions.OptionsError(f"keymux: {e}") from None
        except OSError as e:
            raise exceptions.OptionsError(f"keymux: cannot read {path}: {e.strerror}") from None
        self.gateway = runtime.gateway_for(
            str(Path(path).resolve()), config, admin_token=os.environ.get("KEYMUX_ADMIN_TOKEN"))
        _log_loaded(config)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.gateway is None:
            return
        req = flow.request
        result = self.gateway.handle(req.method, req.path, req.headers,
                                     req.get_content(strict=False))
        if isinstance(result, Answer):
            _mask_client_auth(req)
            flow.response = http.Response.make(result.status, result.body, result.headers)
            flow.response.reason = result.reason
            return
        self._send(flow, result)

    def _send(self, flow: http.HTTPFlow, plan: Plan) -> None:
        req, p = flow.request, plan.provider
        req.scheme = p.scheme
        req.port = p.port
        req.host = p.host  # last: rebuilds the Host header from scheme, host and port
        req.path = plan.path
        if plan.body is not None:
            req.content = plan.body
        req.headers.fields = plan.rewrite_fields(req.headers.fields)
        self.plans[flow] = plan
        flow.comment = plan.label
        flow.metadata["keymux"] = {"key": plan.key.name, "provider": p.name, "model": plan.model,
                                   "client": plan.client, "rule": plan.rule}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        plan = self.plans.get(flow)
        if plan is None:
            return
        self.gateway.first_byte(plan)
        _mask_key(flow, plan)
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            tap = SseTap(plan.strip_usage)
            self.taps[flow] = tap
            flow.response.stream = tap

    def response(self, flow: http.HTTPFlow) -> None:
        plan = self.plans.pop(flow, None)
        if plan is None:
            return
        tap = self.taps.pop(flow, None)
        usage = tap.usage if tap else _body_usage(flow.response)
        self.gateway.finish(plan, flow.response.status_code, usage)

    def error(self, flow: http.HTTPFlow) -> None:
        plan = self.plans.pop(flow, None)
        if plan is None:
            return
        _mask_key(flow, plan)
        tap = self.taps.pop(flow, None)
        status = flow.response.status_code if flow.response else None
        self.gateway.finish(plan, status, tap.usage if tap else None)

    def done(self) -> None:
        # Flows still in flight are saved by `-w` at shutdown: they must not hold a key.
        for flow, plan in list(self.plans.items()):
            _mask_key(flow, plan)


def _mask_key(flow: http.HTTPFlow, plan: Plan) -> None:
    """After the request left, the flow keeps only the masked key (mitmweb, saved flows)."""
    flow.request.headers[plan.provider.auth_header] = plan.provider.auth_value(plan.key.masked)


def _mask_client_auth(req: http.Request) -> None:
    for name in CLIENT_AUTH_HEADERS:
        if name in req.headers:
            req.headers[name] = mask(req.headers[name])


def _body_usage(resp: http.Response) -> Usage:
    return usage_of_body(resp.get_content(strict=False) or b"")


def _log_loaded(config) -> None:
    providers = sorted({k.provider for k in config.keys})
    logger.info("keymux: %s: %d keys for %s", config.source, len(config.keys),
                ", ".join(providers) or "no provider")
    for warning in config.warnings:
        logger.warning("keymux: %s", warning)
    if config.clients is None:
        logger.warning("keymux: no clients: section, so the gateway is open to anyone who can "
                       "reach it; keep it bound to 127.0.0.1 or add client tokens")
