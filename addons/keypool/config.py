"""keys.yaml -> a frozen ``Config``; every problem is a ``ConfigError`` with its line.

The schema is the one in INTERFACE.md. A config is built completely, then handed over as
one object: the gateway swaps configs, it never patches one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from .envfile import NodeReader, describe, is_null, line_of, parse_dotenv
from .errors import ConfigError
from .config_money import Budget, MoneyReader
from .config_text import check_size, compose, read_text
from .config_values import ValueReader
from .providers import AUTH_SCHEMES, PRESETS, ProviderSpec

STRATEGIES = ("round_robin", "weighted", "least_used", "least_busy", "random")


@dataclass(frozen=True)
class KeySpec:
    name: str
    provider: str
    secret: str = field(repr=False)
    enabled: bool = True
    weight: float = 1.0
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    line: int | None = None
    budget: Budget | None = None   # money: leaves rotation at it (keypool.budgets)


@dataclass(frozen=True)
class ClientSpec:
    name: str
    token: str = field(repr=False)
    models: tuple[str, ...] = ()
    rpm: int | None = None
    line: int | None = None
    budget: Budget | None = None   # over it: 429 budget_exceeded (keypool.budgets)


@dataclass(frozen=True)
class Cooldown:
    rate_limited_s: float = 30.0
    server_error_s: float = 5.0
    max_s: float = 600.0
    auth_error_s: float = 3600.0


@dataclass(frozen=True)
class Routing:
    strategy: str = "round_robin"
    max_attempts: int = 4
    timeout_s: float = 120.0
    cooldown: Cooldown = Cooldown()
    queue_s: float = 5.0
    daily_reset: str = "00:00"
    max_response_mb: float = 64.0  # a larger non-streamed upstream body fails the attempt
    max_body_mb: float = 32.0      # larger request bodies (inflated, too) are refused with 413
    timezone: str = "UTC"          # IANA name: where daily_reset and month starts are read


@dataclass(frozen=True)
class LoggingSpec:
    bodies: bool = False
    retention_days: int = 14


@dataclass(frozen=True)
class AdminSpec:
    # A werkzeug password hash (``keymux hash-password``) for the web UI's login; the
    # environment's KEYMUX_ADMIN_TOKEN works as well.
    password_hash: str | None = field(default=None, repr=False)


SURFACE_MODES = ("open", "admin", "off")


@dataclass(frozen=True)
class ServerSpec:
    """Who may reach the gateway's port (see keypool.exposure)."""
    allowed_origins: tuple[str, ...] = ()  # web origins whose pages may call it; "*": any
    allowed_hosts: tuple[str, ...] = ()    # Host names beyond loopback and the bind; "*": any
    metrics: str = "open"                  # /metrics: open | admin | off
    health: str = "open"                   # /_keymux/health: open | admin | off


@dataclass(frozen=True)
class StateSpec:
    """Where key health and limits are shared: "sqlite" (this process only, the default) or
    "redis" (every process on the same url and prefix; keypool.shared_redis)."""
    backend: str = "sqlite"
    url: str | None = None
    prefix: str = "keymux"
    reservation_ttl_s: float = 30.0  # a dead process's in-flight slots lapse after this
    log_max: int = 100_000           # request-log rows the fleet's Redis stream keeps (~)
    audit_max: int = 10_000          # audit-log rows the fleet's Redis stream keeps (~)


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, ProviderSpec]        # presets merged with the file's overrides
    keys: tuple[KeySpec, ...] = ()               # usable keys only (unset ${VAR} ones skipped)
    clients: tuple[ClientSpec, ...] | None = None  # None: no clients section, gateway is open
    routing: Routing = Routing()
    state_dir: Path = Path("state")
    logging: LoggingSpec = LoggingSpec()
    version: int = 1
    source: str | None = None                    # the file it came from
    warnings: tuple[str, ...] = ()               # e.g. "key openai-2 skipped: ${X} is not set"
    admin: AdminSpec = AdminSpec()
    server: ServerSpec = ServerSpec()
    state: StateSpec = StateSpec()


# -- loading ---------------------------------------------------------------------------

TOP_FIELDS = ("version", "providers", "keys", "clients", "routing", "state_dir", "logging",
              "admin", "server", "state")
STATE_FIELDS = ("backend", "url", "prefix", "reservation_ttl_s", "log_max", "audit_max")
SERVER_FIELDS = ("allowed_origins", "allowed_hosts", "metrics", "health")
PROVIDER_FIELDS = ("base_url", "auth", "models", "headers", "stream_usage", "proxy", "price")
KEY_FIELDS = ("name", "provider", "key", "enabled", "weight", "models", "rpm", "tpm",
              "max_in_flight", "budget")
CLIENT_FIELDS = ("name", "token", "models", "rpm", "budget")
ROUTING_FIELDS = ("strategy", "max_attempts", "timeout_s", "cooldown", "queue_s", "daily_reset",
                  "max_response_mb", "max_body_mb", "timezone")
COOLDOWN_FIELDS = ("rate_limited_s", "server_error_s", "max_s", "auth_error_s")
LOGGING_FIELDS = ("bodies", "retention_days")
MIN_TOKEN_LEN = 8

_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` and the optional ``.env`` beside it; ``env`` (default os.environ) wins."""
    path = Path(path)
    text = read_text(path)
    variables: dict[str, str] = {}
    dotenv = path.parent / ".env"
    if dotenv.is_file():
        try:
            variables.update(parse_dotenv(read_text(dotenv)))
        except ConfigError as e:  # parse_dotenv knows the line, not the file
            raise ConfigError(e.message, e.line, str(dotenv)) from None
    variables.update(os.environ if env is None else env)
    return parse_config(text, source=str(path), env=variables, base_dir=path.absolute().parent)


def parse_config(
    text: str,
    *,
    source: str | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """keys.yaml text -> Config; the first problem found raises ConfigError."""
    check_size(text, source)
    root = compose(text, source)
    return _Reader(source, os.environ if env is None else env, base_dir).config(root)


class _Reader(MoneyReader, ValueReader, NodeReader):
    """keys.yaml's schema: its sections (values: ValueReader, money: MoneyReader)."""

    def __init__(self, source: str | None, env: Mapping[str, str], base_dir: Path | None):
        super().__init__(source, env)
        self.base_dir = base_dir

    # -- sections

    def config(self, root: MappingNode) -> Config:
        f = self.fields(root, "", TOP_FIELDS)
        version = self.given(f, "", {"version": self.version}).get("version", 1)
        providers = self.providers(f.get("providers"))
        keys = self.keys(f.get("keys"), providers)
        clients = None if is_null(f.get("clients")) else self.clients(f["clients"])
        routing = self.routing(f.get("routing"))
        state_dir = self.state_dir(f.get("state_dir"))
        log_fields = self.fields(f.get("logging"), "logging", LOGGING_FIELDS)
        logging = LoggingSpec(**self.given(log_fields, "logging",
                                           {"bodies": self.boolean, "retention_days": self.count}))
        admin = AdminSpec(**self.given(self.fields(f.get("admin"), "admin", ("password_hash",)),
                                       "admin", {"password_hash": self.string}))
        return Config(providers, keys, clients, routing, state_dir, logging, version,
                      self.source, tuple(self.warnings), admin, server=self.server(f.get("server")),
                      state=self.state(f.get("state")))

    def server(self, node: Node | None) -> ServerSpec:
        f = self.fields(node, "server", SERVER_FIELDS)
        return ServerSpec(**self.given(f, "server", {
            "allowed_origins": self.names_list, "allowed_hosts": self.names_list,
            "metrics": self.surface, "health": self.surface}))

    def state(self, node: Node | None) -> StateSpec:
        f = self.fields(node, "state", STATE_FIELDS)
        spec = StateSpec(**self.given(f, "state", {
            "backend": self.choice(("sqlite", "redis")), "url": self.string,
            "prefix": self.string,
            "reservation_ttl_s": lambda n, p: self.number(n, p, positive=True),
            "log_max": self.count, "audit_max": self.count}))
        if spec.backend == "redis":
            if not spec.url or not spec.url.startswith(("redis://", "rediss://", "unix://")):
                self.fail(f.get("url") or node, "state.url: backend redis needs a url "
                          "redis://HOST:PORT/DB (or rediss://, unix://)")
            if not _PREFIX.match(spec.prefix):
                self.fail(f["prefix"], "state.prefix: letters, digits, _ . : - only")
        elif spec.url is not None:
            self.fail(f["url"], "state.url: only for backend redis")
        return spec

    def surface(self, node: Node, path: str) -> str:
        # YAML 1.1 reads an unquoted `off` as false: take the word as written (as YAML 1.2 does).
        if isinstance(node, ScalarNode) and node.style is None and node.value in SURFACE_MODES:
            return node.value
        return self.choice(SURFACE_MODES)(node, path)

    def version(self, node: Node, path: str) -> int:
        value = self.typed(node, path)
        if type(value) is not int or value != 1:
            self.fail(node, f"version: only version 1 is supported, got {describe(node, value)}")
        return value

    def providers(self, node: Node | None) -> dict[str, ProviderSpec]:
        out = dict(PRESETS)
        self.fields(node, "providers")  # shape and duplicate names
        for key, value in [] if is_null(node) else node.value:
            if not _PROVIDER_NAME.match(key.value):
                self.fail(key, f"providers: {key.value!r} is not a valid provider name (lowercase"
                               " letters, digits and _ . -, starting with a letter or digit)")
            out[key.value] = self.provider(key.value, value, f"providers.{key.value}")
        return out

    def provider(self, name: str, node: Node, path: str) -> ProviderSpec:
        f = self.fields(node, path, PROVIDER_FIELDS)
        kw = self.given(f, path, {"base_url": self.url, "auth": self.choice(AUTH_SCHEMES),
                                  "models": self.globs, "headers": self.headers,
                                  "stream_usage": self.boolean, "proxy": self.proxy,
                                  "price": self.price})
        preset = PRESETS.get(name)
        if preset is not None:
            if "headers" in kw:  # added to the preset's (anthropic needs its version header)
                kw["headers"] = tuple({**dict(preset.headers), **dict(kw["headers"])}.items())
            return replace(preset, **kw)
        if "base_url" not in kw:
            self.fail(node, f"{path}: missing required field 'base_url' (only the presets"
                            f" {', '.join(PRESETS)} have one built in)")
        return ProviderSpec(name, **kw)

    def unique_name(self, f: dict[str, Node], path: str, item: Node, seen: dict[str, int],
                    what: str) -> str:
        node = self.need(f, "name", path, item)
        name = self.name(node, f"{path}.name")
        if name in seen:
            self.fail(node, f"{path}.name: duplicate {what} name {name!r}"
                            f" (lines {seen[name]} and {line_of(node)})")
        seen[name] = line_of(node)
        return name

    def keys(self, node: Node | None, providers: Mapping[str, ProviderSpec]) -> tuple[KeySpec, ...]:
        out, seen = [], {}
        for i, item in enumerate(self.items(node, "keys")):
            path = f"keys[{i}]"
            f = self.fields(item, path, KEY_FIELDS)
            name = self.unique_name(f, path, item, seen, "key")
            provider_node = self.need(f, "provider", path, item)
            provider = self.string(provider_node, f"{path}.provider")
            if provider not in providers:
                self.fail(provider_node, f"{path}.provider: unknown provider {provider!r}; known"
                                         f" providers: {', '.join(sorted(providers))}")
            secret = self.secret(self.need(f, "key", path, item), f"{path}.key", name, "key")
            kw = self.given(f, path, {"enabled": self.boolean, "weight": self.positive,
                                      "models": self.globs, "rpm": self.count, "tpm": self.count,
                                      "max_in_flight": self.count, "budget": self.key_budget})
            if secret is not None:
                out.append(KeySpec(name, provider, secret, line=line_of(item), **kw))
        return tuple(out)

    def clients(self, node: Node) -> tuple[ClientSpec, ...]:
        out, seen, tokens = [], {}, {}
        for i, item in enumerate(self.items(node, "clients")):
            path = f"clients[{i}]"
            f = self.fields(item, path, CLIENT_FIELDS)
            name = self.unique_name(f, path, item, seen, "client")
            token_node = self.need(f, "token", path, item)
            token = self.secret(token_node, f"{path}.token", name, "client")
            kw = self.given(f, path, {"models": self.globs, "rpm": self.count,
                                      "budget": self.client_budget})
            if token is None:
                continue
            if len(token) < MIN_TOKEN_LEN:
                self.fail(token_node, f"{path}.token: must be at least {MIN_TOKEN_LEN} characters")
            if token in tokens:  # the token alone identifies a client
                other, line = tokens[token]
                self.fail(token_node, f"{path}.token: same token as client {other!r} (line {line});"
                                      " every client needs its own")
            tokens[token] = (name, line_of(item))
            out.append(ClientSpec(name, token, line=line_of(item), **kw))
        return tuple(out)

    def routing(self, node: Node | None) -> Routing:
        f = self.fields(node, "routing", ROUTING_FIELDS)
        return Routing(**self.given(f, "routing", {
            "strategy": self.choice(STRATEGIES), "max_attempts": self.count,
            "timeout_s": self.positive, "cooldown": self.cooldown, "queue_s": self.seconds,
            "daily_reset": self.clock, "max_response_mb": self.positive,
            "max_body_mb": self.positive, "timezone": self.timezone}))

    def cooldown(self, node: Node, path: str) -> Cooldown:
        f = self.fields(node, path, COOLDOWN_FIELDS)
        cd = Cooldown(**self.given(f, path, dict.fromkeys(COOLDOWN_FIELDS, self.seconds)))
        if cd.max_s < cd.server_error_s:  # backoff grows from server_error_s up to max_s
            blame = "max_s" if "max_s" in f else "server_error_s"
            self.fail(f[blame], f"{path}: max_s ({cd.max_s:g}) must be at least"
                                f" server_error_s ({cd.server_error_s:g})")
        return cd

    def state_dir(self, node: Node | None) -> Path:
        if is_null(node):
            path = Path("state")
        else:
            value = self.string(node, "state_dir")
            if not value.strip():
                self.fail(node, "state_dir: must not be empty")
            path = Path(value).expanduser()
        return path if self.base_dir is None or path.is_absolute() else Path(self.base_dir) / path
