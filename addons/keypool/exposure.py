"""Who may reach the gateway: the decisions about binds, Host names, web origins and the
admin surface. Pure; the mitmproxy glue tells it where the gateway listens (``bind``).

- A browser is kept out twice: a request with an ``Origin`` header is a web page's (SDKs
  and curl send none) and is refused unless ``server.allowed_origins`` names it; a ``Host``
  that is not one of the gateway's names is DNS rebinding (a page on evil.example whose
  name now points at 127.0.0.1) and is refused unless ``server.allowed_hosts`` names it.
- A request without ``Host`` (HTTP/1.0, HTTP/2's ``:authority``) is not a browser's and
  passes the Host check.
- A non-loopback bind without ``clients:`` is an open relay of the owner's keys: start-up
  refuses it (``open_refusal``), and a reload that drops ``clients:`` refuses every request
  but ``/health``, unless ``keymux_allow_open_gateway`` says it is meant.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from . import answers
from .answers import Answer
from .config import Config

if TYPE_CHECKING:
    from .gateway import Gateway

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ALLOW_FLAG = "--set keymux_allow_open_gateway=true (keymux run --allow-open-gateway)"


def is_loopback(host: str) -> bool:
    """An address only this machine can reach ("" and 0.0.0.0 are every interface)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Binds:
    """Where the gateway listens, as mitmproxy's options say; set by the glue."""
    addrs: tuple[tuple[str, int | None], ...] = (("127.0.0.1", None),)  # None: port unknown
    allow_open: bool = False          # keymux_allow_open_gateway
    sidecar_token: str | None = None  # KEYMUX_SIDECAR_TOKEN: the cli's own UI child's admin token

    @property
    def loopback(self) -> bool:
        return all(is_loopback(h) for h, _ in self.addrs)


def open_refusal(binds: Binds, config: Config) -> str | None:
    """Why this bind must not serve this config, or None."""
    if binds.loopback or config.clients is not None or binds.allow_open:
        return None
    where = ", ".join(f"{h or '*'}:{p}" for h, p in binds.addrs)
    return (f"the gateway listens on {where}, beyond this machine, and keys.yaml has no clients:"
            " section, so anyone who reaches it would spend your keys. Add client tokens"
            " (clients:), bind 127.0.0.1, or allow it explicitly with " + ALLOW_FLAG)


@dataclass(frozen=True)
class Exposure:
    """The decisions for one (config, binds): built once per config, read per request."""
    config: Config
    binds: Binds
    hosts: frozenset[str] | None        # exact Host values; None: any Host
    any_port: frozenset[str]            # names accepted with any port
    origins: frozenset[str] | None      # None: any Origin
    admin_closed: bool                  # stats need the admin token
    refusal: str | None                 # open_refusal, checked again after every reload

    @classmethod
    def build(cls, config: Config, binds: Binds) -> "Exposure":
        server = config.server
        names = set(LOOPBACK_NAMES)
        for host, _ in binds.addrs:
            if host:
                names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
        names = {n.lower() for n in names}
        ports = {p for _, p in binds.addrs}
        any_port = set()
        hosts: set[str] | None = set(names)
        if None in ports or 0 in ports:
            any_port |= names
        else:
            hosts |= {f"{n}:{p}" for n in names for p in ports}
        if "*" in server.allowed_hosts:
            hosts = None
        else:
            for entry in server.allowed_hosts:
                (hosts if _port_of(entry) else any_port).add(entry.lower())
        origins = None if "*" in server.allowed_origins else frozenset(
            o.lower().rstrip("/") for o in server.allowed_origins)
        return cls(config, binds, None if hosts is None else frozenset(hosts),
                   frozenset(any_port), origins,
                   admin_closed=config.clients is not None or not binds.loopback,
                   refusal=open_refusal(binds, config))

    def host_ok(self, host: str) -> bool:
        host = host.strip().lower()
        if self.hosts is None or host in self.hosts:
            return True
        name = host[:-len(p) - 1] if (p := _port_of(host)) else host
        return name in self.any_port

    def origin_ok(self, origin: str) -> bool:
        return self.origins is None or origin.strip().lower().rstrip("/") in self.origins


def _port_of(host: str) -> str | None:
    """"h:8080" -> "8080", "[::1]:8080" -> "8080", "h" and "[::1]" -> None."""
    head, sep, tail = host.rpartition(":")
    if not sep or "]" in tail or (head and not head.endswith("]") and ":" in head):
        return None
    return tail if tail.isdigit() else None


def bind(gw: "Gateway", binds: Binds) -> None:
    """The glue's call: where this gateway listens (and the cli's sidecar token)."""
    gw.exposure_rules = Exposure.build(gw.config, binds)


def of(gw: "Gateway") -> Exposure:
    """The gateway's current decisions, rebuilt when its config was swapped (a reload)."""
    ex = getattr(gw, "exposure_rules", None)
    if ex is None or ex.config is not gw.config:
        ex = gw.exposure_rules = Exposure.build(gw.config, ex.binds if ex else Binds())
    return ex


def guard(gw: "Gateway", path: str, headers: Mapping[str, str]) -> Answer | None:
    """403 for a web page or a foreign Host; None lets the request on. Cheap: two lookups."""
    if path == "/health" or path.startswith("/health?"):
        return None  # liveness reveals nothing; probes use whatever address they see
    ex = of(gw)
    if ex.refusal is not None:
        return answers.error(403, "keymux refuses to serve: " + ex.refusal, "open_gateway_refused")
    origin, host = _origin_and_host(headers)
    if origin is not None and not ex.origin_ok(origin):
        return answers.error(403, "requests from web pages are refused: this Origin is not in"
                             " server.allowed_origins", "forbidden_origin")
    if host is not None and not ex.host_ok(host):
        return answers.error(403, "this Host is not one of the gateway's names; a reverse proxy"
                             " or a real hostname goes in server.allowed_hosts", "forbidden_host")
    return None


def _origin_and_host(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """One pass over mitmproxy's raw fields (a missed ``Headers.get`` costs ~4 µs)."""
    fields = getattr(headers, "fields", None)
    if fields is None:  # a plain dict with lower-case names
        return headers.get("origin"), headers.get("host")
    origin = host = None
    for name, value in fields:
        if len(name) == 6 and name.lower() == b"origin":
            origin = value.decode("latin-1")
        elif len(name) == 4 and name.lower() == b"host":
            host = value.decode("latin-1")
    return origin, host
