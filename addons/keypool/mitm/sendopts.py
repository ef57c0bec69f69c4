"""mitmproxy's options, as they apply to keymux's own upstream sender (``upstream.py``).

keymux sends every attempt with aiohttp, not through mitmproxy's server connections, so
mitmproxy's upstream options are read here and turned into what aiohttp needs: one SSL
context per client certificate (``SendOptions.ssl_for``) and one route per provider
(``SendOptions.route``: the SSL context and the proxy, resolved once, cached).

How mitmproxy builds its own upstream context (``addons/tlsconfig.py`` tls_start_server,
``net/tls.py`` create_proxy_server_context) and what keymux mirrors:
- ``ssl_insecure``: no verification of chain or host name, and legacy renegotiation allowed.
- ``ssl_verify_upstream_trusted_ca`` (PEM file), ``..._confdir`` (an OpenSSL CApath, i.e.
  c_rehash'ed names): mitmproxy trusts *only* these when one is set. keymux *adds* them to
  certifi's bundle and the system's, because one gateway serves public providers beside a
  private one; docs/upstream.md says so.
- ``client_certs``: a PEM file (key and chain) for every host, or a directory holding
  ``<host>.pem`` per host (the provider's host picks its file).
- ``tls_version_server_min``/``_max``, ``ciphers_server``, ``tls_ecdh_curve_server``.
- ``connect_addr``: the local address of upstream connections.
Options that cannot apply are listed in ``NOT_APPLIED`` and warned about (``warnings``).
"""
from __future__ import annotations

import os
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping

import aiohttp
import certifi
from yarl import URL

from ..providers import NO_PROXY, ProviderSpec, ProxyURL, split_proxy_url

# mitmproxy's option -> why keymux's sender cannot honour it (warned when not default).
NOT_APPLIED = {
    "http2": "keymux's sender speaks HTTP/1.1 to providers (aiohttp has no HTTP/2 client)",
    "http2_ping_keepalive": "keymux's sender speaks HTTP/1.1 to providers",
    "upstream_cert": "keymux answers clients itself; no upstream certificate is mimicked",
    "add_upstream_certs_to_client_chain": "mitmproxy never connects upstream for keymux's flows",
    "upstream_auth": "set the proxy and its credentials per provider (proxy: in keys.yaml)",
}
# Read by SendOptions.build; a change of any of them rebuilds the sender's session.
APPLIED = ("ssl_insecure", "ssl_verify_upstream_trusted_ca", "ssl_verify_upstream_trusted_confdir",
           "client_certs", "tls_version_server_min", "tls_version_server_max", "ciphers_server",
           "tls_ecdh_curve_server", "connect_addr")

_TLS_VERSIONS = {"UNBOUNDED": None, "SSL3": ssl.TLSVersion.SSLv3, "TLS1": ssl.TLSVersion.TLSv1,
                 "TLS1_1": ssl.TLSVersion.TLSv1_1, "TLS1_2": ssl.TLSVersion.TLSv1_2,
                 "TLS1_3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class Route:
    """How one provider's attempts go out."""
    ssl: ssl.SSLContext | bool           # True: plain http (aiohttp ignores it)
    proxy: URL | None = None             # without credentials
    via: str | None = None               # the proxy as shown: no credentials
    # The proxy's credentials: in the CONNECT request (https upstream), or as a header of
    # the request itself (plain http upstream, which the proxy forwards).
    proxy_headers: Mapping[str, str] | None = field(default=None, repr=False)
    auth_field: tuple[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TlsSettings:
    insecure: bool = False
    ca_file: str | None = None
    ca_dir: str | None = None
    client_certs: str | None = None
    min_version: str = "TLS1_2"
    max_version: str = "UNBOUNDED"
    ciphers: str | None = None
    ecdh_curve: str | None = None

    @classmethod
    def of(cls, options) -> "TlsSettings":
        return cls(bool(options.ssl_insecure), _path(options.ssl_verify_upstream_trusted_ca),
                   _path(options.ssl_verify_upstream_trusted_confdir), _path(options.client_certs),
                   options.tls_version_server_min, options.tls_version_server_max,
                   options.ciphers_server or None, options.tls_ecdh_curve_server or None)


def _path(value: str | None) -> str | None:
    return os.path.expanduser(value) if value else None


def build_context(s: TlsSettings, client_cert: str | None = None) -> ssl.SSLContext:
    """The SSL context for upstream connections; ValueError says what could not be loaded."""
    ctx = ssl.create_default_context(cafile=certifi.where())  # mitmproxy's default trust
    ctx.load_default_certs()                                     # and the system's
    if s.ca_file or s.ca_dir:
        try:
            ctx.load_verify_locations(cafile=s.ca_file, capath=s.ca_dir)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load trusted certificates ({s.ca_file or s.ca_dir}): "
                             f"{getattr(e, 'strerror', None) or e}") from None
    if s.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.options |= ssl.OP_LEGACY_SERVER_CONNECT
    try:
        if _TLS_VERSIONS.get(s.min_version):
            ctx.minimum_version = _TLS_VERSIONS[s.min_version]
        if _TLS_VERSIONS.get(s.max_version):
            ctx.maximum_version = _TLS_VERSIONS[s.max_version]
        if s.ciphers:
            ctx.set_ciphers(s.ciphers)
        if s.ecdh_curve:
            ctx.set_ecdh_curve(s.ecdh_curve)
    except (ValueError, ssl.SSLError) as e:
        raise ValueError(f"upstream TLS settings: {e}") from None
    if client_cert:
        try:
            ctx.load_cert_chain(client_cert)  # key and chain in one PEM, as mitmproxy reads it
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load client certificate {client_cert}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
    return ctx


class SendOptions:
    """The sender's view of mitmproxy's options and the environment's proxies; immutable
    once built, so a change builds a new one (and a new session)."""

    def __init__(self, tls: TlsSettings = TlsSettings(), connect_addr: str | None = None,
                 env: Mapping[str, str] | None = None):
        self.tls = tls
        self.connect_addr = connect_addr or None
        self.default_ssl = build_context(tls)  # raises ValueError: the option is refused
        self._by_cert: dict[str, ssl.SSLContext] = {}
        self._routes: dict[tuple, Route] = {}
        self.env_proxies = _env_proxies(os.environ if env is None else env)
        if tls.client_certs and os.path.isfile(tls.client_certs):
            self.default_ssl = self._cert_context(tls.client_certs)

    @classmethod
    def of(cls, options, env: Mapping[str, str] | None = None) -> "SendOptions":
        return cls(TlsSettings.of(options), options.connect_addr, env)

    def _cert_context(self, path: str) -> ssl.SSLContext:
        ctx = self._by_cert.get(path)
        if ctx is None:
            ctx = self._by_cert[path] = build_context(self.tls, path)
        return ctx

    def ssl_for(self, host: str) -> ssl.SSLContext:
        """mitmproxy's rule: a client_certs directory holds ``<host>.pem`` per host."""
        certs = self.tls.client_certs
        if certs and not os.path.isfile(certs):
            candidate = os.path.join(certs, f"{host}.pem")
            if os.path.isfile(candidate):
                return self._cert_context(candidate)
        return self.default_ssl

    def route(self, p: ProviderSpec) -> Route:
        """The provider's SSL context and proxy; resolved once per provider, then cached."""
        key = (p.scheme, p.host, p.port, p.proxy)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._resolve(p)
        return route

    def _resolve(self, p: ProviderSpec) -> Route:
        ctx = self.ssl_for(p.host) if p.scheme == "https" else True
        proxy = self.proxy_for(p)
        if proxy is None:
            return Route(ctx)
        url = URL.build(scheme=proxy.scheme, host=proxy.host, port=proxy.port)
        if not proxy.user:
            return Route(ctx, url, proxy.shown)
        field = ("Proxy-Authorization", aiohttp.encode_basic_auth(proxy.user, proxy.password or ""))
        if p.scheme == "https":
            return Route(ctx, url, proxy.shown, proxy_headers=dict([field]))
        return Route(ctx, url, proxy.shown, auth_field=field)

    def proxy_for(self, p: ProviderSpec) -> ProxyURL | None:
        if p.proxy == NO_PROXY:
            return None
        if p.proxy:
            return split_proxy_url(p.proxy)  # validated with the config
        env = self.env_proxies
        url = env.get(p.scheme)
        if not url or urllib.request.proxy_bypass_environment(f"{p.host}:{p.port}", env):
            return None
        return split_proxy_url(url)


def _env_proxies(env: Mapping[str, str]) -> dict[str, str]:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, lower case winning (curl's and urllib's rule).
    Read from ``env`` (not the process: testable); unusable values dropped (warned)."""
    out: dict[str, str] = {}
    for scheme in ("http", "https", "no"):
        value = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
        if value:
            out[scheme] = value
    for scheme in ("http", "https"):
        if scheme in out:
            try:
                split_proxy_url(out[scheme])
            except ValueError:
                out.pop(scheme)
    return out


def env_proxy_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Why a proxy variable of the environment is ignored (no credentials quoted)."""
    env = os.environ if env is None else env
    out = []
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        if env.get(name):
            try:
                split_proxy_url(env[name])
            except ValueError as e:
                out.append(f"{name} ignored: {e}")
    return out


def warnings(options) -> list[str]:
    """One line per option set to a non-default value that keymux's sender cannot honour."""
    out = []
    for name, why in NOT_APPLIED.items():
        if name in options and options.has_changed(name):
            # The name only: a value (upstream_auth) may be a credential.
            out.append(f"option {name} is set but has no effect on keymux's upstream "
                       f"requests: {why}")
    return out
