"""mitmproxy's connection to keymux's relay, in memory instead of over loopback TCP.

mitmproxy fetches a parked stream from the relay's address like any server's. Over a
socket every chunk cost a send on the relay's side and an epoll wake and a recv on
mitmproxy's (~29 us). mitmproxy 12.2.3 opens every server connection in
``proxy/server.py`` ``ConnectionHandler.open_connection`` through that module's global
``asyncio`` (``asyncio.open_connection(*address, local_addr=...)``) and then uses only
``reader.read``, ``writer.write/drain/close/is_closing/write_eof/get_extra_info``. So
``install`` replaces that global with a copy of the ``asyncio`` module whose
``open_connection`` hands back, for a relay's own address, a ``StreamReader`` the relay
feeds with ``feed_data`` (no syscall) and a writer whose bytes go to the relay's handler;
any other address gets the real ``asyncio.open_connection``.

Back-pressure: mitmproxy's reader has a transport (``_Throttle``) that the StreamReader
itself pauses past twice its limit and resumes once read below it; the relay's writer then
reports buffered data and its ``drain`` waits, so the upstream's reading pauses as over TCP.
mitmproxy closing its writer (the client left) closes the relay's side and the upstream
reply at once. Should mitmproxy's internals differ, nothing is patched: the relay's loopback
server (always listening) serves, and a warning says so once. tests/glue/test_memrelay.py
pins what this relies on.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import types

logger = logging.getLogger("keymux")
LIMIT = 1 << 16   # mitmproxy's reader: pauses the relay past 2 * LIMIT unread bytes
SHIM = "keymux_asyncio"


def install() -> dict | None:
    """Patch once per process; the registry of relay addresses (None: not patched). A
    reloaded script's module finds the registry on the installed shim."""
    try:
        from mitmproxy.proxy import server
    except ImportError:  # pragma: no cover - mitmproxy is always there in the addon
        return None
    current = getattr(server, "asyncio", None)
    if getattr(current, "__name__", None) == SHIM:
        return current.keymux_relays
    if current is not asyncio or not _fits(server):
        if not getattr(server, "keymux_memrelay_refused", False):  # once per process
            server.keymux_memrelay_refused = True
            logger.warning("keymux: this mitmproxy's server connections differ from "
                           "12.2.3's: streams reach it through the relay's loopback socket")
        return None
    shim = types.ModuleType(SHIM)
    shim.__dict__.update(vars(asyncio))  # every other name is asyncio's own: no extra lookup
    shim.__name__ = SHIM
    relays: dict[tuple[str, int], object] = {}
    shim.keymux_relays = relays
    shim.open_connection = _opener(asyncio.open_connection, relays)
    server.asyncio = shim
    return relays


def _fits(server) -> bool:
    """mitmproxy's server connections are opened and used the way this module expects."""
    try:
        handler = server.ConnectionHandler
        opened = inspect.getsource(handler.open_connection)
        used = inspect.getsource(handler.handle_connection)
    except (AttributeError, OSError, TypeError):
        return False
    return ("asyncio.open_connection(" in opened and "reader.read(" in used
            and "writer.get_extra_info(\"peername\")" in opened)


def _opener(real, relays: dict):
    async def open_connection(host=None, port=None, *args, **kwargs):
        serve = relays.get((host, port))
        if serve is None:
            return await real(host, port, *args, **kwargs)
        # Suspend once, as a connect does: mitmproxy runs open_connection as an eager task
        # and records the connection's handler after create_task returns; a handler that
        # got this far without suspending would have its reader and writer overwritten.
        await asyncio.sleep(0)
        return pair(serve, (host, port))
    return open_connection


_tasks: set[asyncio.Task] = set()


def pair(serve, address: tuple[str, int]):
    """mitmproxy's (reader, writer) for one connection to the relay; ``serve(reader,
    writer)`` runs as the relay's handler of it, as ``asyncio.start_server`` would."""
    theirs = asyncio.StreamReader(limit=LIMIT)
    throttle = _Throttle()
    theirs.set_transport(throttle)
    ours = asyncio.StreamReader()
    relay_side = RelayWriter(theirs, throttle)
    mitm_side = MitmWriter(ours, relay_side, address)
    task = asyncio.get_running_loop().create_task(serve(ours, relay_side))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return theirs, mitm_side


class _Throttle:
    """The transport of mitmproxy's reader: paused by the StreamReader past its limit."""
    __slots__ = ("paused", "waiter")

    def __init__(self) -> None:
        self.paused = False
        self.waiter: asyncio.Future | None = None

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.wake()

    def wake(self) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(None)


class RelayWriter:
    """What the relay writes to: mitmproxy's reader, fed directly. Also its own transport
    (``get_write_buffer_size``/``is_closing``, as the relay's sink asks a socket's)."""
    __slots__ = ("_reader", "_throttle", "closed", "_watched", "transport")

    def __init__(self, reader: asyncio.StreamReader, throttle: _Throttle) -> None:
        self._reader, self._throttle = reader, throttle
        self.closed = False
        self._watched = None  # the reply being relayed: closed if mitmproxy goes away
        self.transport = self

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._reader.feed_data(data)

    def get_write_buffer_size(self) -> int:
        return LIMIT if self._throttle.paused else 0

    def is_closing(self) -> bool:
        return self.closed

    async def drain(self) -> None:
        throttle = self._throttle
        while throttle.paused and not self.closed:
            throttle.waiter = asyncio.get_running_loop().create_future()
            await throttle.waiter
        if self.closed:
            raise ConnectionResetError("mitmproxy closed the connection")

    def watch(self, reply) -> None:
        self._watched = reply

    def close(self) -> None:
        """The relay is done with this connection: mitmproxy reads its end."""
        if not self.closed:
            self.closed = True
            self._reader.feed_eof()
            self._throttle.wake()

    def lost(self) -> None:
        """mitmproxy closed its side: the relay stops, the upstream reply is closed."""
        self.close()
        reply, self._watched = self._watched, None
        if reply is not None:
            reply.close()


class MitmWriter:
    """mitmproxy's writer: its request bytes go to the relay's reader."""
    __slots__ = ("_reader", "_peer", "_closing", "_address")

    def __init__(self, reader: asyncio.StreamReader, peer: RelayWriter,
                 address: tuple[str, int]) -> None:
        self._reader, self._peer, self._address = reader, peer, address
        self._closing = False

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._reader.feed_data(data)

    async def drain(self) -> None:
        return None  # the relay reads what it is sent at once; nothing is ever held

    def write_eof(self) -> None:
        self._reader.feed_eof()

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.write_eof()
            self._peer.lost()

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return self._address
        if name == "sockname":
            return (self._address[0], 0)
        return default
