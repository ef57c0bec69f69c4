"""Client authentication: which configured client presents this token."""
from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from .config import ClientSpec
from .globs import GlobSet


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token a client sent, in whichever header its SDK uses."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth.strip()
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        value = headers.get(name)
        if value:
            return value.strip()
    return None


class ClientAuth:
    """Looks a token up by its SHA-256 and compares digests in constant time."""

    def __init__(self, clients: tuple[ClientSpec, ...] | None):
        self.open = clients is None
        self._by_digest = {_digest(c.token): c for c in clients or ()}
        self._globs = {c.name: GlobSet(c.models) for c in clients or ()}

    def identify(self, token: str | None) -> ClientSpec | None:
        if not token:
            return None
        d = _digest(token)
        client = self._by_digest.get(d)
        if client is None or not hmac.compare_digest(d, _digest(client.token)):
            return None
        return client

    def allows(self, client: ClientSpec | None, model: str | None) -> bool:
        if client is None or not client.models or model is None:
            return True
        return self._globs[client.name].matches(model)
