"""mitmdump with SO_REUSEPORT on its TCP listener, so that several processes share a port.

    python -m keypool.mitm.reuseport [mitmdump's arguments]

mitmproxy 12.2.3 listens with ``asyncio.start_server(handle_stream, host, port)``
(``proxy/mode_servers.py``, ``AsyncioServerInstance.listen``) and has no option for
``reuse_port``. An addon cannot set it: ``mitmdump -s`` loads scripts in a watcher task
that runs after the servers are up. So ``keymux run --workers N`` starts each worker
through this module, which wraps ``listen`` before mitmdump starts: the TCP listener binds
with ``reuse_port=True`` (mitmproxy's UDP listener for HTTP/3, which mitmproxy_rs binds
without it, is not started) and the kernel spreads new connections over the workers.
tests/e2e/test_workers.py pins it.
"""
from __future__ import annotations

import asyncio
import sys

from mitmproxy.proxy import mode_servers

_Instance = mode_servers.AsyncioServerInstance
_original_listen = _Instance.listen


def install() -> None:
    _Instance.listen = _listen_reuse_port


async def _listen_reuse_port(self, host: str, port: int):
    if self.mode.transport_protocol == "udp" or port == 0:
        return await _original_listen(self, host, port)
    # "both" (reverse:https://...) adds a UDP listener for HTTP/3 that could not be shared:
    # keymux's clients speak HTTP/1.1 and HTTP/2 over TCP, so the workers listen on TCP only.
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def main() -> None:
    from mitmproxy.tools.main import mitmdump
    install()
    sys.argv[0] = "mitmdump"
    mitmdump()


if __name__ == "__main__":
    main()
