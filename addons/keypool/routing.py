"""Which provider serves a request: the six rules of INTERFACE.md, first match wins.

1. header ``x-keymux-provider`` (alias ``x-llm-provider``);
2. a ``provider/model`` prefix in the body's model (stripped before forwarding);
3. ``/v1/messages``: a provider with ``x-api-key`` auth (Anthropic);
4. the ``models`` globs of the configured providers and keys;
5. a well-known model-name prefix (``gpt-`` -> openai, ``claude-`` -> anthropic, ...);
6. the only provider that has keys.

Rules 2-6 only consider providers that have at least one key, so an unused preset never
captures a model that another, keyed provider could serve (``openai/gpt-4o`` stays whole
for an OpenRouter-only pool).
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .globs import GlobSet
from .providers import ProviderSpec, provider_for_prefix

PROVIDER_HEADERS = ("x-keymux-provider", "x-llm-provider")


class RouteError(Exception):
    """The gateway cannot route this request; answered with ``status`` and ``message``."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Route:
    provider: ProviderSpec
    model: str | None  # what goes upstream (a routing prefix removed)
    rule: int  # which rule decided: for the flow's story and for tests


class Router:
    def __init__(self, config: Config):
        self.providers = config.providers
        keyed = list(dict.fromkeys(k.provider for k in config.keys))
        self._keyed = frozenset(keyed)
        self._only = keyed[0] if len(keyed) == 1 else None
        self._anthropic = [n for n in keyed if self.providers[n].auth == "x-api-key"]
        # Rule 4: provider globs first (in file order), then each key's own globs.
        globs = [(n, GlobSet(p.models)) for n, p in self.providers.items() if n in self._keyed]
        globs += [(k.provider, GlobSet(k.models)) for k in config.keys if k.models]
        self._globs = [(n, g) for n, g in globs if g]

    def resolve(self, *, path: str, model: str | None, header: str | None = None) -> Route:
        if header:
            provider = self.providers.get(header.strip().lower())
            if provider is None:
                raise RouteError(404, f"provider '{_short(header)}' is not configured", "provider_not_found")
            return Route(provider, model, 1)
        if model and "/" in model:
            prefix, _, rest = model.partition("/")
            if prefix in self._keyed and rest:
                return Route(self.providers[prefix], rest, 2)
        if path.startswith("/v1/messages") and self._anthropic:
            return Route(self.providers[self._pick_anthropic(model)], model, 3)
        if model:
            for name, globs in self._globs:
                if globs.matches(model):
                    return Route(self.providers[name], model, 4)
            name = provider_for_prefix(model)
            if name in self._keyed:
                return Route(self.providers[name], model, 5)
        if self._only:
            return Route(self.providers[self._only], model, 6)
        if model:
            raise RouteError(404, f"no provider is configured for model '{_short(model)}'", "model_not_found")
        raise RouteError(404, "cannot tell which provider should serve this request: "
                         "name a model or send an x-keymux-provider header", "model_not_found")

    def _pick_anthropic(self, model: str | None) -> str:
        if model:
            for name, globs in self._globs:
                if name in self._anthropic and globs.matches(model):
                    return name
        return "anthropic" if "anthropic" in self._anthropic else self._anthropic[0]


def _short(text: str, limit: int = 100) -> str:
    """Client input echoed in an error, bounded."""
    return text if len(text) <= limit else text[:limit] + "…"
