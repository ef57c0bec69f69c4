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
from time import perf_counter
from weakref import WeakKeyDictionary

from mitmproxy import ctx, exceptions, http

from .. import keylog, prices, reissue
from ..answers import Answer
from ..canon import HeaderMap
from ..config import Config, load_config
from ..errors import ConfigError
from ..gateway import Gateway
from ..ticket import Plan
from ..usage import SseTap, usage_of_body
from . import (attempts, boundary, clientauth, conns, dispatch, flows, heap, keytest,
               modelfetch, options, responses, runtime)
from .commands import Commands
from .failclosed import FailClosed
from .relay import Relay
from .reload import ConfigWatcher, digest
from .upstream import Upstream

logger = logging.getLogger("keymux")


@dataclass(slots=True)
class Relayed:
    """A stream on its way through the relay: what to account and show when it ends."""
    plan: Plan
    shown: tuple            # the request's header fields as sent, key masked
    reply: object           # its ConnInfo (``reply.conn``) becomes the flow's server_conn
    tap: SseTap | None = None
    copy: flows.StreamCopy | None = None
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
        # mitmproxy registers nested addons with this one (their options and hooks too)
        self.addons = [Commands(self), modelfetch.ModelFetch(self)]
        self.clientauth = clientauth.ClientAuth()  # the process's own, from load()
        self.publisher = attempts.Publisher()
        self.flow_body_cap = 256 * 1024

    def load(self, loader) -> None:
        options.declare(loader)
        conns.install(ctx.master)  # before the proxy listens: every connection is guarded
        self.clientauth = clientauth.install(ctx.master)  # masks client tokens first
        runtime.exit_cleanly_at_exit(ctx.master)

    def configure(self, updated: set[str]) -> None:
        if "keymux_config" in updated or self.gateway is None:
            self._load(ctx.options.keymux_config)
        self.flow_body_cap = options.apply(self.gateway, self.upstream, updated)

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
        if self.runtime is not None:
            self.runtime.gateway.pool.shared.start()  # keypool.shared: once per process
        self._watch(ctx.options.keymux_config)
        flows.comment_column()
        heap.settle_soon(prices.warm)

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
            gw.metrics.reloaded(False)
            logger.warning("keymux: config not reloaded, the previous one keeps serving: %s", error)
            return
        before = set(gw.pool.by_name)
        gw.update(config)
        options.limit_bodies(gw, self.upstream)
        gw.reload_error = None
        gw.metrics.reloaded(True)
        logger.warning("keymux: config reloaded: %d keys%s", len(config.keys),
                       keylog.key_changes(before, set(gw.pool.by_name)))
        for warning in config.warnings:
            logger.warning("keymux: %s", warning)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                self.gateway.pool.keylog.flush()  # a storm's summary line, once it is over
                self.gateway.budgets.sweep(self.gateway.clock.wall())  # keys back at a reset
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
            fields = self.clientauth.fields(flow)  # as sent: the 431 bound counts the token
            answer = self.gateway.screen(req.method, req.path, authority, fields)
            if answer is not None:
                flows.answered(flow, answer, self.gateway._secrets)
        except Exception as e:
            self._failed("requestheaders", e)
            boundary.answer_failure(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if self.gateway is None:  # the config failed to load at start: mitmdump is exiting
            boundary.answer_not_loaded(flow)
            return
        try:
            await self._request(flow, perf_counter())
        except Exception as e:
            self._failed("request", e)
            if flow.live:
                boundary.answer_failure(flow)

    async def _request(self, flow: http.HTTPFlow, began: float) -> None:
        """``began``: when the request hook started (keymux_overhead_seconds counts from it)."""
        req = flow.request
        # The raw body: the gateway inflates it only after the client token is checked.
        # The flow holds the client's token masked (clientauth): authenticate with it as sent.
        headers = HeaderMap(self.clientauth.take_fields(flow) or req.headers.fields)
        ticket = self.gateway.admit(req.method, req.path, headers, req.raw_content)
        waited, tested = 0.0, isinstance(ticket, keytest.KeyTest)
        if tested:  # an admin's test: one attempt, a summary back
            sent = perf_counter()
            ticket = await keytest.run(self.gateway, self.upstream, ticket)
            waited = perf_counter() - sent
        if isinstance(ticket, Answer):
            flows.answered(flow, ticket, self.gateway._secrets)
            if tested:  # the provider answered; keymux only summed it up
                flow.comment = flows.tested(ticket)
            self._overhead(req.path, "gateway", began, waited)
            return
        fields, method, cap = req.headers.fields, req.method, self.gateway.max_response_bytes
        out = None
        failed = attempts.Failures()  # filled only by attempts that failed
        try:
            out = await reissue.serve(
                self.gateway, ticket, lambda plan: self.upstream.send(plan, method, fields, cap),
                alive=lambda: flow.client_conn.timestamp_end is None, on_failed=failed.add)
            if out.answer is not None:
                flows.show_refused(flow, ticket, out.answer, self.gateway._secrets)
            else:
                shown = flows.sent_fields(out.plan, fields)
                flows.show_routed(flow, ticket, out.plan, out.reply, shown)
            if failed.records:  # after show_*: the client flow lists its attempt flows
                self.publisher.attempts(flow, failed.records, fields, method,
                                        self.flow_body_cap, self.gateway.masker)
            if out.answer is not None:
                self.gateway.complete(ticket, out.answer.status, answer=out.answer)
            elif out.body is not None:
                self._deliver(flow, out)
            else:
                await self._relay(flow, out, shown)
            self._overhead(req.path, "gateway" if out.answer else "routed", began, ticket.waited)
        except BaseException:
            # Whatever held a key gives it back; the attempt says nothing about the key.
            self.gateway.close(ticket)  # and a budget's estimate, whatever happened
            if out is not None and out.plan is not None and flow not in self.streams:
                self.gateway.finish(out.plan, None, outcome="cancelled")
                out.reply.close()
            self._unroute(flow)
            raise

    def _overhead(self, path: str, outcome: str, began: float, waited: float) -> None:
        """The request's time in keymux's hook minus its upstream and free-key waits (a
        stream's counts until it is handed to the relay; its chunks are mitmproxy's)."""
        self.gateway.metrics.overhead(path, outcome, perf_counter() - began - waited)

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
        flows.show_connection(flow, reply, out.plan, whole=True)
        self.gateway.complete(out.plan.ticket, reply.status, out.plan, usage, body)

    async def _relay(self, flow: http.HTTPFlow, out: reissue.Outcome, shown: tuple) -> None:
        """Point the flow at the relay, which serves it the open upstream stream."""
        req = flow.request
        port = await self.relay.start()
        # timeout_s bounds the wait for a stream's headers; once it flows, it may run as long
        # as it likes but may not fall silent for longer than that.
        token = self.relay.park(out.reply, self.gateway.config.routing.timeout_s,
                                self.gateway.masker)
        self.streams[flow] = Relayed(out.plan, shown, out.reply)
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
            flows.restamp(flow, end=False)
            return
        try:
            self._stream_headers(flow, relayed)
        except Exception as e:
            self._failed("responseheaders", e)
            boundary.fail_headers(flow)
            relayed.failed = True

    def _stream_headers(self, flow: http.HTTPFlow, relayed: Relayed) -> None:
        flows.show_request(flow.request, relayed.plan, relayed.shown)
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            relayed.tap = SseTap(relayed.plan.ticket.strip_usage)
        if self.flow_body_cap:  # a copy for mitmweb, appended as chunks pass
            relayed.copy = flows.StreamCopy(relayed.tap, self.flow_body_cap)
        flow.response.stream = relayed.copy or relayed.tap or True

    def response(self, flow: http.HTTPFlow) -> None:
        flows.restamp(flow, end=True)
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
            flows.show_request(flow.request, relayed.plan, relayed.shown)
        status = flow.response.status_code if flow.response else None
        usage = relayed.tap.usage if relayed.tap else None
        if relayed.failed:  # keymux's own failure says nothing about the key
            status, outcome = 500, "cancelled"
        elif broke_off and status is None:  # no head from the relay: the client left, or
            outcome = "cancelled"             # keymux's relay failed; the key answered fine
        elif broke_off:
            outcome = "ok" if status < 400 else "server"
        else:
            outcome = None  # by status
        try:
            self.gateway.finish(relayed.plan, status, usage, outcome=outcome)
        finally:
            self.gateway.complete(relayed.plan.ticket, status or 502, relayed.plan, usage)
        # Only now (accounted first): mitmproxy uses flow.server_conn while a stream runs.
        flows.show_connection(flow, relayed.reply, relayed.plan, whole=False)
        if not relayed.failed:  # a 500 keymux answered instead keeps its own body
            flows.keep_copy(flow, relayed.copy)

    def _failed(self, step: str, exc: BaseException) -> None:
        gw = self.gateway
        secrets = [*gw._secrets, gw.admin_token or ""] if gw is not None else []
        boundary.log_failure(step, exc, secrets)

    def done(self) -> None:
        if runtime.active is self:
            runtime.active = None
        dispatch.uninstall(ctx.master.addons)  # a removed script leaves mitmproxy's own
        if self.watcher is not None:
            self.watcher.stop()
        if self._flusher is not None:
            self._flusher.cancel()
        self._release_streams()
        if self.runtime is not None:  # shutdown or script reload: persist what we have
            self.runtime.flush()
            self.runtime.writer.flush(timeout=2.0)
            if self.runtime.fleetlog is not None:  # the fleet's Redis stream too
                self.runtime.fleetlog.flush(timeout=1.0)
            unwritten = self.runtime.writer.status().get("pending_rows", 0)
            if unwritten:
                logger.warning("keymux: %d request-log rows could not be written to the state "
                               "store and are lost with this process", unwritten)
        asyncio.get_running_loop().create_task(self._close_io())

    def _release_streams(self) -> None:
        """The end of a stream this instance relays never reaches it once its script is
        removed or reloaded, but the gateway (kept in ``runtime``) outlives it: free the
        keys now, or they would stay in flight for good."""
        for relayed in list(self.streams.values()):
            self.gateway.finish(relayed.plan, None, outcome="cancelled")
        self.streams.clear()

    async def _close_io(self) -> None:
        await self.relay.close()
        self.upstream.retire()  # not close(): requests in flight must not blame their keys


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
