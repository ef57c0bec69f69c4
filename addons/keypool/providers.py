"""The provider table: where each provider lives and how it wants its key.

A provider's ``base_url`` includes its API version (``https://api.openai.com/v1``); a
client path ``/v1/chat/completions`` becomes ``<base path>/chat/completions``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .prices import NO_PRICES, PriceTable

AUTH_SCHEMES = ("bearer", "x-api-key", "x-goog-api-key")

# The header each auth scheme fills; every one of them is also a header a client may use
# to present its own token, so all are stripped from client requests.
AUTH_HEADER = {"bearer": "authorization", "x-api-key": "x-api-key", "x-goog-api-key": "x-goog-api-key"}
# Credentials a client may send: never forwarded upstream, masked on flows. The last is the
# admin token (keypool.endpoints.ADMIN_HEADER).
CLIENT_AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key",
                       "x-keymux-admin-token")


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str
    auth: str = "bearer"
    models: tuple[str, ...] = ()
    # Headers the provider requires besides the key; a client's own value wins.
    headers: tuple[tuple[str, str], ...] = ()
    # Whether the upstream understands ``stream_options.include_usage`` (so keymux may ask
    # for usage on streams the client did not ask it for, and strip that chunk again).
    stream_usage: bool = False
    # The upstream proxy for this provider's attempts (``proxy:`` in keys.yaml): None takes
    # the environment's (HTTPS_PROXY/HTTP_PROXY/NO_PROXY), NO_PROXY ("none") goes direct,
    # else an http(s) URL that may hold credentials: never shown, see ``shown_proxy``.
    proxy: str | None = field(default=None, repr=False)
    # ``price:`` in keys.yaml: overrides genai-prices for the models it matches (prices.py).
    price: PriceTable = NO_PRICES
    # Derived from base_url, once.
    scheme: str = field(init=False, compare=False)
    host: str = field(init=False, compare=False)
    port: int = field(init=False, compare=False)
    base_path: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        scheme, host, port, path = split_base_url(self.base_url)
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "base_path", path)

    @property
    def auth_header(self) -> str:
        return AUTH_HEADER[self.auth]

    def auth_value(self, secret: str) -> str:
        return f"Bearer {secret}" if self.auth == "bearer" else secret

    def upstream_path(self, client_path: str) -> str:
        """Map the client's canonical ``/v1/...`` path (query included, see
        ``canon.canonical_target``) onto this provider's base. Defence in depth: a path that
        is not canonical could leave ``base_url`` on a server that resolves dot segments,
        so it raises rather than being sent."""
        if not client_path.startswith(("/v1/", "/v1?")) and client_path != "/v1":
            raise ValueError("upstream_path needs a /v1 path")
        rest = client_path[3:]
        path = rest.partition("?")[0]
        if "//" in path or "/./" in path + "/" or "/../" in path + "/" or "%2f" in path.lower():
            raise ValueError("upstream_path needs a canonical path")
        return self.base_path + rest


NO_PROXY = "none"


@dataclass(frozen=True)
class ProxyURL:
    """An upstream proxy: where it is, and the credentials that never leave the sender."""
    scheme: str
    host: str
    port: int
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The proxy as logs, stats and flows may show it: no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def split_proxy_url(url: str) -> ProxyURL:
    """``http://user:pass@proxy:3128`` -> ProxyURL; ValueError (never quoting the
    credentials) if it is not an http(s) proxy URL. A bare ``host:port`` means http."""
    if "://" not in url:
        url = "http://" + url  # as curl and requests read HTTPS_PROXY=proxy:3128
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = f"{scheme}://{parts.hostname or ''}"
    if scheme not in ("http", "https"):
        raise ValueError(f"proxy must be an http:// or https:// URL (or none), got {scheme}://...")
    if not parts.hostname:
        raise ValueError("proxy has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"proxy must be only scheme://[user:password@]host[:port], got {shown}/...")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"proxy {shown} has a bad port") from None
    return ProxyURL(scheme, parts.hostname, port, unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password is not None else None)


def split_base_url(url: str) -> tuple[str, str, int, str]:
    """``https://h:1/v1/`` -> ``("https", "h", 1, "/v1")``; raises ValueError if unusable."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"base_url has no host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise ValueError(f"base_url has a bad port: {url!r}") from e
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


ANTHROPIC_VERSION = "2023-06-01"

PRESETS: dict[str, ProviderSpec] = {
    p.name: p
    for p in (
        ProviderSpec("openai", "https://api.openai.com/v1", stream_usage=True),
        ProviderSpec(
            "anthropic",
            "https://api.anthropic.com/v1",
            auth="x-api-key",
            headers=(("anthropic-version", ANTHROPIC_VERSION),),
        ),
        ProviderSpec(
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            stream_usage=True,
        ),
        ProviderSpec("deepseek", "https://api.deepseek.com/v1", stream_usage=True),
        ProviderSpec("xai", "https://api.x.ai/v1", stream_usage=True),
        ProviderSpec("groq", "https://api.groq.com/openai/v1", stream_usage=True),
        ProviderSpec("mistral", "https://api.mistral.ai/v1"),
        ProviderSpec("openrouter", "https://openrouter.ai/api/v1", stream_usage=True),
    )
}

# Routing rule 5: a model name's prefix names its provider.
MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("dall-e", "openai"),
    ("whisper", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gemini"),
    ("deepseek-", "deepseek"),
    ("grok-", "xai"),
    ("mistral-", "mistral"),
    ("codestral-", "mistral"),
)


def provider_for_prefix(model: str) -> str | None:
    for prefix, provider in MODEL_PREFIXES:
        if model.startswith(prefix):
            return provider
    return None
