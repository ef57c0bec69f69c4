"""What one upstream attempt's connection was: the facts a mitmproxy flow shows.

The sender (``upstream.py``) fills one per reply (``reply.conn``); ``flows.py`` turns it
into the flow's ``server_conn`` and timestamps, so mitmweb shows the address keymux really
contacted, its TLS and its timings instead of the ``--mode reverse:`` target.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ConnInfo:
    address: tuple[str, int]                   # the provider's host and port, as configured
    peername: tuple[str, int] | None = None    # the IP and port actually connected
    sockname: tuple[str, int] | None = None
    via: str | None = None                     # the upstream proxy, without credentials
    reused: bool = False                       # a pooled connection: no TCP/TLS setup now
    sni: str | None = None
    tls_version: str | None = None             # e.g. "TLSv1.3"; None for plain HTTP
    cipher: str | None = None
    alpn: str | None = None
    certificates: list[bytes] = field(default_factory=list)  # DER, leaf first
    # Wall-clock times (time.time()), None where not known.
    timestamp_start: float | None = None       # the attempt began
    timestamp_tcp_setup: float | None = None
    timestamp_tls_setup: float | None = None
    timestamp_request_sent: float | None = None
    timestamp_response_start: float | None = None  # the status line and headers arrived
    timestamp_end: float | None = None         # the body was read (or the attempt failed)
