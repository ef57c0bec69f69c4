"""The client connections themselves: slowloris timeouts, a bound on open connections, and
mitmproxy's own protocol-error answers as OpenAI error JSON (``protocol``).

mitmproxy only closes a client connection after ``tcp_timeout`` (600 s) of *no bytes at
all*; a client that trickles a header byte every few seconds, or never finishes its body,
holds its socket (and file descriptor) forever. ``ConnGuard`` keeps a small record per
client connection and a sweeper task that, a few times a second, ends the ones that wait
too long:

- request headers not complete ``keymux_header_timeout`` after the connection opened:
  408 (JSON) and close;
- a body not complete ``keymux_body_timeout`` (plus its declared length at
  ``MIN_BODY_RATE``) after its headers: 408 and close;
- a keep-alive connection idle ``keymux_idle_timeout`` after its last response: closed.

A request whose body has arrived is never timed out here: the upstream wait is bounded by
``routing.timeout_s`` and a stream may run for as long as it keeps flowing. Past
``keymux_max_connections`` open connections, the longest-idle keep-alive connection is
closed to make room; if none is idle, the new connection gets a 503 and is closed.

Closing a connection from an addon has no public API in mitmproxy 12.2.3, so the few
internals used live in ``_io``/``_close`` (tests/unit/test_conns.py pins them).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, exceptions, http

from .. import answers
from . import protocol
from .protocol import wire

logger = logging.getLogger("keymux")

MIN_BODY_RATE = 64 * 1024   # bytes/s a declared body may take beyond keymux_body_timeout
FDS_PER_CONNECTION = 4      # client socket, mitmproxy -> relay, relay's side, keymux upstream
RESERVED_FDS = 128          # state store, config watcher, logs, listening sockets
DEFAULT_MAX_CONNECTIONS = 1000
OPTIONS = {"keymux_header_timeout", "keymux_body_timeout", "keymux_idle_timeout",
           "keymux_max_connections"}


@dataclass(slots=True)
class Conn:
    """One client connection: when its current wait ends, and its requests in flight."""
    client: connection.Client
    deadline: float | None          # end of the wait for headers (or of the idle keep-alive)
    served: int = 0                 # requests whose headers arrived on it
    flows: list = field(default_factory=list)   # (flow, when its headers arrived)


class ConnGuard:
    name = "keymux_conns"

    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}
        self.max_connections = DEFAULT_MAX_CONNECTIONS
        self.header_s, self.body_s, self.idle_s = 10.0, 30.0, 60.0  # the options, read once
        self._sweeper: asyncio.Task | None = None

    def load(self, loader) -> None:
        loader.add_option("keymux_header_timeout", int, 10,
                          "Seconds a client has to send complete request headers (408 after).")
        loader.add_option("keymux_body_timeout", int, 30,
                          "Seconds a client has to send a complete request body, plus its "
                          "declared length at 64 KiB/s (408 after).")
        loader.add_option("keymux_idle_timeout", int, 60,
                          "Seconds a keep-alive client connection may stay idle between requests.")
        loader.add_option("keymux_max_connections", int, 0,
                          "Open client connections at most (0: derived from the open-file limit, "
                          "at most 1000). Past it idle ones are closed, else new ones get a 503.")

    def configure(self, updated: set[str]) -> None:
        if updated and not updated & OPTIONS:
            return
        opts = ctx.options
        for name in ("keymux_header_timeout", "keymux_body_timeout", "keymux_idle_timeout"):
            if getattr(opts, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be a positive number of seconds")
        if opts.keymux_max_connections < 0:
            raise exceptions.OptionsError("keymux_max_connections must be 0 (auto) or positive")
        self.max_connections = opts.keymux_max_connections or auto_max_connections()
        self.header_s = float(opts.keymux_header_timeout)
        self.body_s = float(opts.keymux_body_timeout)
        self.idle_s = float(opts.keymux_idle_timeout)

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
            logger.info("keymux: at most %d client connections", self.max_connections)

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- hooks

    def client_connected(self, client: connection.Client) -> None:
        if len(self.conns) >= self.max_connections and not self._evict_idle():
            logger.warning("keymux: %d client connections open, refusing one more",
                           len(self.conns))
            if not client.tls:  # mitmproxy closes it after this hook, flushing the answer
                _write(client.id, wire(answers.error(
                    503, "too many open connections to the gateway; retry shortly",
                    "too_many_connections", retry_after=1)))
            client.error = "keymux: too many open connections"
            return
        self.conns[client.id] = Conn(client, time.monotonic() + self.header_s)

    def client_disconnected(self, client: connection.Client) -> None:
        self.conns.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        conn = self.conns.get(flow.client_conn.id)
        if conn is None:
            return
        conn.served += 1
        conn.deadline = None
        conn.flows.append((flow, time.monotonic()))  # the body's allowance: see _expired

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # keymux relays streams chunked; an HTTP/1.0 client cannot read chunked framing, so it
        # gets the body as is and the end of the stream is the end of the connection.
        if flow.request.data.http_version == b"HTTP/1.0" and flow.response is not None:
            headers = flow.response.headers
            if "transfer-encoding" in headers:
                del headers["transfer-encoding"]
                headers["connection"] = "close"

    def error(self, flow: http.HTTPFlow) -> None:
        # Bad chunked framing: mitmproxy closes the connection without an answer. If its
        # socket still takes bytes (it does: this hook runs before the close completes),
        # say why in JSON.
        if (flow.error is not None and flow.response is None and not flow.client_conn.tls
                and flow.error.msg.startswith("HTTP/1 protocol error")
                and flow.client_conn.id in self.conns):  # not one the sweeper closed
            _write(flow.client_conn.id, protocol.json_error_response(400, flow.error.msg))

    # -- the sweeper

    async def _sweep_forever(self) -> None:
        while True:
            shortest = min(self.header_s, self.body_s, self.idle_s)
            await asyncio.sleep(min(1.0, max(0.05, shortest / 4)))
            try:
                self.sweep(time.monotonic())
            except Exception:  # never let one odd connection stop the sweeping
                logger.exception("keymux: connection sweep failed")

    def sweep(self, now: float) -> None:
        for cid, conn in list(self.conns.items()):
            why = self._expired(conn, now)
            if why is not None:
                logger.info("keymux: closing client connection %s: %s",
                            conn.client.peername, why)
                answer = None if why == "idle" or conn.client.tls else wire(answers.error(
                    408, f"request {why} not received in time", "request_timeout"))
                _close(cid, answer)
                self.conns.pop(cid, None)

    def _expired(self, conn: Conn, now: float) -> str | None:
        """Why this connection's wait is over ('headers', 'body', 'idle'), or None."""
        if conn.flows:
            live = []
            for item in conn.flows:
                flow, since = item
                if _answered(flow):
                    continue  # its response is on its way, or the flow is over
                if (flow.request.timestamp_end is None and now - since > self.body_s  # cheap first
                        and now - since > self.body_s + _declared_length(flow) / MIN_BODY_RATE):
                    return "body"
                live.append(item)
            conn.flows = live
            if not live:
                conn.deadline = now + self.idle_s
            return None
        if conn.deadline is None or now <= conn.deadline:
            return None
        if _pending_output(conn.client.id):  # a slow reader of a large answer: not idle
            conn.deadline = now + self.idle_s
            return None
        return "headers" if conn.served == 0 else "idle"

    def _evict_idle(self) -> bool:
        """Close the keep-alive connection idle the longest, to make room; False if none."""
        later = time.monotonic() + self.idle_s
        idle = [(c.deadline if not c.flows else later, c) for c in self.conns.values()
                if c.served and all(_answered(f) for f, _ in c.flows)
                and not _pending_output(c.client.id)]
        if not idle:
            return False
        victim = min(idle, key=lambda pair: pair[0])[1]
        _close(victim.client.id, None)
        self.conns.pop(victim.client.id, None)
        return True


def _declared_length(flow: http.HTTPFlow) -> int:
    length = flow.request.headers.get("content-length", "")
    return int(length) if length.isdigit() else 0  # chunked: body_timeout alone


def _answered(flow: http.HTTPFlow) -> bool:
    if flow.websocket is not None:  # upgraded: busy until the WebSocket ends
        return flow.websocket.timestamp_end is not None or flow.error is not None
    return flow.error is not None or (
        flow.response is not None and flow.response.timestamp_end is not None)


def install(master) -> None:
    """Once per process (it outlives -s script reloads, like FailClosed)."""
    if master.addons.get(ConnGuard.name) is None:
        guard = ConnGuard()
        master.addons.add(guard)  # add() runs neither configure nor running
        guard.configure(set())
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # mitmproxy's running hook starts the sweeper
        guard.running()
    protocol.install()


def auto_max_connections() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != soft:
        # Like Go's runtime: use what the hard limit allows, it costs nothing until used.
        want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, (soft - RESERVED_FDS) // FDS_PER_CONNECTION))


# -- mitmproxy internals (12.2.3), kept in one place ----------------------------------------

def _io(client_id: str):
    """The ConnectionIO (handler task, reader, writer) of a live client connection, or None."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(client_id) if server is not None else None
    if handler is None:
        return None
    return handler.transports.get(handler.client)


def _write(client_id: str, data: bytes) -> bool:
    io = _io(client_id)
    if io is None or io.writer is None or io.writer.is_closing():
        return False
    io.writer.write(data)
    return True


def _close(client_id: str, answer: bytes | None) -> None:
    """Send ``answer`` (if any) and close, as mitmproxy's own inactivity timeout does
    (``ConnectionHandler.on_timeout`` cancels the client's handler task; the writer is
    closed after its buffer is flushed)."""
    if answer is not None:
        _write(client_id, answer)
    io = _io(client_id)
    if io is not None and io.handler is not None:
        io.handler.cancel("keymux: connection closed")


def _pending_output(client_id: str) -> bool:
    io = _io(client_id)
    if io is None or io.writer is None:
        return False
    return io.writer.transport.get_write_buffer_size() > 0
