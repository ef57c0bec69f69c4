"""SO_REUSEPORT for mitmproxy's TCP listener, so that several mitmdump processes share a port.

mitmproxy 12.2.3 listens with ``asyncio.start_server(handle_stream, host, port)``
(``proxy/mode_servers.py``, ``AsyncioServerInstance.listen``) and has no option for
``reuse_port``. ``keymux run --workers N --balancer reuseport`` sets ``KEYMUX_REUSE_PORT=1``
in each worker's environment; ``install`` then wraps ``listen`` so that a TCP-only mode
(reverse proxy) binds with ``reuse_port=True`` and the kernel spreads new connections over
the workers. Without the variable nothing changes. tests/e2e/test_workers.py pins it.
"""
from __future__ import annotations

import asyncio
import os

from mitmproxy.proxy import mode_servers

ENV = "KEYMUX_REUSE_PORT"
_Instance = mode_servers.AsyncioServerInstance
# getattr: a re-imported module must wrap mitmproxy's method, not its own wrapper
_original_listen = getattr(_Instance.listen, "keymux_original", _Instance.listen)


def install() -> None:
    if os.environ.get(ENV) == "1":
        _Instance.listen = _listen_reuse_port


async def _listen_reuse_port(self, host: str, port: int):
    if self.mode.transport_protocol != "tcp" or port == 0:
        return await _original_listen(self, host, port)
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


_listen_reuse_port.keymux_original = _original_listen
