"""The mitmproxy addon: applies the gateway's decisions to flows. The only mitmproxy glue.

Every upstream attempt is sent by keymux itself (``upstream.Upstream``), so failures are
re-issued before the client sees anything; the winning answer becomes the flow's response,
and a winning *stream* is handed to mitmproxy through ``relay.Relay`` so it streams.
Hooks never block: the decisions live in ``keypool.gateway`` and ``keypool.reissue``.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode

from .. import exposure, reissue
from ..answers import Answer
from ..config import Config, load_config
from ..errors import ConfigError
from ..gateway import Gateway
from ..ticket import Plan, Ticket
from ..usage import SseTap, usage_of_body
from . import boundary, conns, keytest, responses, runtime
from .failclosed import FailClosed
from .relay import Relay
from .reload import ConfigWatcher, digest
from .upstream import Upstream

logger = logging.getLogger("keymux")


@dataclass(slots=True)
class Relayed:
    """A stream on its way through the relay: what to account and show when it ends."""
    plan: Plan
    body: bytes | None
    tap: SseTap | None = None
    failed: bool = False  # keymux failed in responseheaders: the client gets a 500


FLUSH_EVERY_S = 1.0  # the state store is at most this far behind after a crash


class Keymux:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.runtime: runtime.Runtime | None = None
        self._loaded_digest: bytes | None = None
        self.watcher: ConfigWatcher | None = None
        self._flusher: asyncio.Task | None = None
        self._flush_failing = False
        self.upstream = Upstream()
        self.relay = Relay()
        self.streams: WeakKeyDictionary[http.HTTPFlow, Relayed] = WeakKeyDictionary()

    def load(self, loader) -> None:
        loader.add_option("keymux_config", str, "config/keys.yaml",
                          "Path of keymux's key pool (keys.yaml).")
        loader.add_option("keymux_allow_open_gateway", bool, False,
                          "Serve a bind beyond loopback without a clients: section (anyone "
                          "who reaches the port spends your keys).")
        conns.install(ctx.master)  # before the proxy listens: every connection is guarded
        runtime.exit_cleanly_at_exit(ctx.master)

    def configure(self, updated: set[str]) -> None:
        if "keymux_config" in updated or self.gateway is None:
            self._load(ctx.options.keymux_config)
        self._bind()  # before any options.update: a refusal must not recurse through it
        if ctx.options.connection_strategy != "lazy":
            # A request the gateway answers itself must not open an upstream connection.
            ctx.options.update(connection_strategy="lazy")
        self.upstream.configure(ctx.options, updated)  # before _limit_bodies: the user's limit
        _limit_bodies(self.gateway, self.upstream)
        if not ctx.options.keep_host_header:
            # The Host check (DNS rebinding, keypool.exposure) needs the client's own Host;
            # keymux names the provider's host on every flow it routes.
            ctx.options.update(keep_host_header=True)
        if ctx.options.stream_large_bodies:
            # mitmproxy would send a large request on, with the client's headers, before
            # the request hook could route it (it re-streams even when a requestheaders
            # hook says no). Refuse rather than leak a client token.
            raise exceptions.OptionsError(
                "keymux: stream_large_bodies must stay unset (request bodies are read whole "
                "to route them; responses that are event streams are streamed anyway)")

    def _bind(self) -> None:
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
        exposure.bind(self.gateway, binds)  # first: a refused gateway answers 403 meanwhile
        refusal = exposure.open_refusal(binds, self.gateway.config)
        if refusal is not None:
            raise exceptions.OptionsError(f"keymux: refusing to start: {refusal}")

    def _load(self, path: str) -> None:
        self._loaded_digest = digest(path)
        try:
            config = load_config(path)
        except ConfigError as e:
            raise exceptions.OptionsError(f"keymux: {e}") from None
        except OSError as e:
            raise exceptions.OptionsError(f"keymux: cannot read {path}: {e.strerror}") from None
        self.runtime = runtime.runtime_for(
            str(Path(path).resolve()), config, admin_token=os.environ.get("KEYMUX_ADMIN_TOKEN"))
        self.gateway = self.runtime.gateway
        _log_loaded(config)
        if self._flusher is not None:  # keymux_config changed while running
            self._watch(path)

    def running(self) -> None:
        # Sync on purpose: after a script reload mitmproxy calls running/done synchronously.
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        if ctx.master.addons.get(FailClosed.name) is None:
            ctx.master.addons.add(FailClosed())
        runtime.active = self
        self._watch(ctx.options.keymux_config)

    def _watch(self, path: str) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.watcher = ConfigWatcher(path, asyncio.get_running_loop(), self._reloaded,
                                     loaded=self._loaded_digest)
        self.watcher.start()
        logger.info("keymux: watching %s for changes", path)

    def _reloaded(self, config: Config | None, error: str | None) -> None:
        """On the loop: adopt a changed config, or keep the old one and say why."""
        gw = self.gateway
        if config is None:
            gw.reload_error = error
            gw.metrics.reloads.labels("error").inc()
            logger.warning("keymux: config not reloaded, the previous one keeps serving: %s", error)
            return
        gw.update(config)
        _limit_bodies(gw, self.upstream)
        gw.reload_error = None
        gw.metrics.reloads.labels("ok").inc()
        logger.warning("keymux: config reloaded: %d keys", len(config.keys))
        for warning in config.warnings:
            logger.warning("keymux: %s", warning)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                self.runtime.flush()
                self._flush_failing = False
            except Exception as e:  # one bad batch must not stop every later flush
                if not self._flush_failing:  # one traceback, not one a second
                    self._failed("store flush", e)
                self._flush_failing = True

    # -- hooks: each catches everything, answers 500 if it still can, and releases ------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse on the head alone (CONNECT, absolute-form, oversized URL, headers or
        Content-Length): never sent upstream, never blamed on a key."""
        if flow.response or flow.error or not flow.live or self.gateway is None:
            return
        req = flow.request
        try:
            # HTTP/1 absolute-form sets an authority; HTTP/2's :authority is normal.
            authority = "" if req.is_http2 or req.is_http3 else req.authority
            answer = self.gateway.screen(req.method, req.path, authority, req.headers.fields)
            if answer is not None:
                _answer(flow, answer)
        except Exception as e:
            self._failed("requestheaders", e)
            boundary.answer_failure(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if self.gateway is None:  # the config failed to load at start: mitmdump is exiting
            boundary.mask_client_auth(flow.request)
            flow.response = boundary.not_loaded()
            return
        try:
            await self._request(flow)
        except Exception as e:
            self._failed("request", e)
            if flow.live:
                boundary.answer_failure(flow)

    async def _request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        # The raw body: the gateway inflates it only after the client token is checked.
        ticket = self.gateway.admit(req.method, req.path, req.headers, req.raw_content)
        if isinstance(ticket, keytest.KeyTest):  # an admin's test: one attempt, a summary back
            ticket = await keytest.run(self.gateway, self.upstream, ticket)
        if isinstance(ticket, Answer):
            _answer(flow, ticket)
            return
        fields, method, cap = req.headers.fields, req.method, self.gateway.max_response_bytes
        out = None
        try:
            out = await reissue.serve(
                self.gateway, ticket, lambda plan: self.upstream.send(plan, method, fields, cap),
                alive=lambda: flow.client_conn.timestamp_end is None)
            _show(flow, ticket, out.plan, fields)
            if out.answer is not None:
                flow.response = responses.from_answer(out.answer)
                self.gateway.complete(ticket, out.answer.status, answer=out.answer)
            elif out.body is not None:
                self._deliver(flow, out)
            else:
                await self._relay(flow, out)
        except BaseException:
            # Whatever held a key gives it back; the attempt says nothing about the key.
            if out is not None and out.plan is not None and flow not in self.streams:
                self.gateway.finish(out.plan, None, outcome="cancelled")
                out.reply.close()
            self._unroute(flow)
            raise

    def _deliver(self, flow: http.HTTPFlow, out: reissue.Outcome) -> None:
        reply, masker = out.reply, self.gateway.masker  # an upstream may echo a key: mask it
        usage = None
        try:
            body = masker.masked(out.body)
            flow.response = responses.response(reply.status, masker.masked_text(reply.reason),
                                               body, masker.masked_fields(reply.fields))
            usage = usage_of_body(body) if reply.status < 400 else None
        finally:
            self.gateway.finish(out.plan, reply.status, usage)
        self.gateway.complete(out.plan.ticket, reply.status, out.plan, usage, body)

    async def _relay(self, flow: http.HTTPFlow, out: reissue.Outcome) -> None:
        """Point the flow at the relay, which serves it the open upstream stream."""
        req = flow.request
        port = await self.relay.start()
        # timeout_s bounds the wait for a stream's headers; once it flows, it may run as long
        # as it likes but may not fall silent for longer than that.
        token = self.relay.park(out.reply, self.gateway.config.routing.timeout_s,
                                self.gateway.masker)
        self.streams[flow] = Relayed(out.plan, req.raw_content)
        flow.metadata[boundary.MARK] = ("127.0.0.1", port, "/" + token)
        req.scheme, req.port, req.host = "http", port, "127.0.0.1"
        req.path = "/" + token
        req.content = b""

    def _unroute(self, flow: http.HTTPFlow) -> None:
        """Undo ``_relay``: the parked stream is closed and its key released."""
        target = flow.metadata.pop(boundary.MARK, None)
        if target is not None:
            self.relay.discard(target[2][1:])
        relayed = self.streams.pop(flow, None)
        if relayed is not None:
            self.gateway.finish(relayed.plan, None, outcome="cancelled")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        relayed = self.streams.get(flow)
        if relayed is None:
            return
        try:
            self._stream_headers(flow, relayed)
        except Exception as e:
            self._failed("responseheaders", e)
            boundary.fail_headers(flow)
            relayed.failed = True

    def _stream_headers(self, flow: http.HTTPFlow, relayed: Relayed) -> None:
        _restore(flow, relayed)
        plan = relayed.plan
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            relayed.tap = SseTap(plan.ticket.strip_usage)
            flow.response.stream = relayed.tap
        else:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        self._end_stream(flow, "response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._end_stream(flow, "error")  # the stream broke off, or the client left

    def _end_stream(self, flow: http.HTTPFlow, step: str) -> None:
        relayed = self.streams.pop(flow, None)
        if relayed is None:
            return
        try:
            self._stream_ended(flow, relayed, broke_off=step == "error")
        except Exception as e:
            self._failed(step, e)
        finally:  # a no-op once accounted: the key is released whatever failed above
            self.gateway.finish(relayed.plan, None, outcome="cancelled")

    def _stream_ended(self, flow: http.HTTPFlow, relayed: Relayed, broke_off: bool) -> None:
        """Account a relayed stream: the key first, then the log row."""
        if broke_off:
            _restore(flow, relayed)
        status = flow.response.status_code if flow.response else None
        usage = relayed.tap.usage if relayed.tap else None
        if relayed.failed:  # keymux's own failure says nothing about the key
            status, outcome = 500, "cancelled"
        elif broke_off:
            outcome = "ok" if status and status < 400 else "server"
        else:
            outcome = None  # by status
        try:
            self.gateway.finish(relayed.plan, status, usage, outcome=outcome)
        finally:
            self.gateway.complete(relayed.plan.ticket, status or 502, relayed.plan, usage)

    def _failed(self, step: str, exc: BaseException) -> None:
        gw = self.gateway
        secrets = [*gw._secrets, gw.admin_token or ""] if gw is not None else []
        boundary.log_failure(step, exc, secrets)

    def done(self) -> None:
        if runtime.active is self:
            runtime.active = None
        if self.watcher is not None:
            self.watcher.stop()
        if self._flusher is not None:
            self._flusher.cancel()
        if self.runtime is not None:  # shutdown or script reload: persist what we have
            self.runtime.flush()
            self.runtime.writer.flush(timeout=2.0)
            unwritten = self.runtime.writer.status().get("pending_rows", 0)
            if unwritten:
                logger.warning("keymux: %d request-log rows could not be written to the state "
                               "store and are lost with this process", unwritten)
        asyncio.get_running_loop().create_task(self._close_io())

    async def _close_io(self) -> None:
        await self.relay.close()
        await self.upstream.close()


def _limit_bodies(gw: Gateway, upstream: Upstream) -> None:
    """mitmproxy's body_size_limit = routing.max_body_mb (or the user's own, if smaller): it
    refuses a larger Content-Length before reading a byte, and stops a chunked body once it
    passes the limit (413 either way, connection closed). For responses keymux's sender
    applies the user's own value (upstream.py)."""
    limit = upstream.request_limit(gw.max_body)
    if ctx.options.body_size_limit != limit:
        ctx.options.update(body_size_limit=limit)


def _answer(flow: http.HTTPFlow, answer: Answer) -> None:
    boundary.mask_client_auth(flow.request)
    flow.response = responses.from_answer(answer)


def _show(flow: http.HTTPFlow, ticket: Ticket, plan: Plan | None, fields) -> None:
    """What the flow keeps of the request: the provider's URL and only a masked key."""
    attempts = ticket.attempts
    if plan is None:
        boundary.mask_client_auth(flow.request)
        flow.comment = "no key: " + ", ".join(f"{a['key']} {a['status'] or a['error']}"
                                              for a in attempts) if attempts else ""
    else:
        flow.request.headers.fields = plan.rewrite_fields(fields, secret=False)
        _show_upstream(flow.request, plan)  # after the fields: it rewrites the Host header
        earlier = [a for a in attempts if a["key"] != plan.key.name]
        flow.comment = plan.label + ("; after " + ", ".join(
            f"{a['key']} {a['status'] or a['error']}" for a in earlier) if earlier else "")
    flow.metadata["keymux"] = {
        "key": plan.key.name if plan else None, "provider": ticket.route.provider.name,
        "model": ticket.route.model, "client": ticket.client, "rule": ticket.route.rule,
        "attempts": attempts}


def _restore(flow: http.HTTPFlow, relayed: Relayed) -> None:
    """The relayed flow names the provider again, and keeps the body it was sent."""
    _show_upstream(flow.request, relayed.plan)
    flow.request.raw_content = relayed.body


def _show_upstream(req: http.Request, plan: Plan) -> None:
    p = plan.provider
    req.data.scheme, req.data.port, req.data.host = p.scheme.encode(), p.port, p.host
    req.data.path = plan.path.encode()
    req.host_header = p.host if p.port == (443 if p.scheme == "https" else 80) \
        else f"{p.host}:{p.port}"


def _log_loaded(config) -> None:
    providers = sorted({k.provider for k in config.keys})
    logger.info("keymux: %s: %d keys for %s", config.source, len(config.keys),
                ", ".join(providers) or "no provider")
    for warning in config.warnings:
        logger.warning("keymux: %s", warning)
    if not any(k.enabled for k in config.keys):
        logger.warning("keymux: NO USABLE KEYS in %s: every request will be refused until keys"
                       " are added (or their ${VARIABLES} set)", config.source)
    if config.clients is None:
        logger.warning("keymux: no clients: section, so the gateway is open to anyone who can "
                       "reach it; keep it bound to 127.0.0.1 or add client tokens")
