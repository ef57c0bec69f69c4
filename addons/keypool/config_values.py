"""keys.yaml's value checks: names, URLs, proxies, headers, host lists; a mixin of config._Reader."""
from __future__ import annotations

import re

from yaml.nodes import Node

from .providers import NO_PROXY, split_base_url, split_proxy_url

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class ValueReader:
    """Checked values of keys.yaml; over envfile.NodeReader (string, fields, items, fail)."""

    def name(self, node: Node, path: str) -> str:
        value = self.string(node, path)
        if not _NAME.match(value):
            self.fail(node, f"{path}: {value!r} is not a valid name (up to 64 letters, digits"
                            " and _ . : -, starting with a letter or digit)")
        return value

    def url(self, node: Node, path: str) -> str:
        value = self.string(node, path)
        try:
            split_base_url(value)
        except ValueError as e:
            self.fail(node, f"{path}: {e}")
        return value

    def proxy(self, node: Node, path: str) -> str:
        """An http(s) proxy URL (credentials allowed, never echoed) or ``none``."""
        value = self.string(node, path).strip()
        if value.lower() == NO_PROXY:
            return NO_PROXY
        try:
            split_proxy_url(value)
        except ValueError as e:
            self.fail(node, f"{path}: {e}")
        return value

    def headers(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        out = []
        for name, value_node in self.fields(node, path).items():
            if not _HEADER_NAME.match(name):
                self.fail(value_node, f"{path}: {name!r} is not a valid header name")
            value = self.string(value_node, f"{path}.{name}")
            if "\r" in value or "\n" in value:  # would let the config inject headers
                self.fail(value_node, f"{path}.{name}: a header value must be a single line")
            out.append((name.lower(), value))  # case-insensitive; the presets use lower case
        return tuple(out)

    def names_list(self, node: Node, path: str) -> tuple[str, ...]:
        """A list of origins or host names, compared case-insensitively; "*" stands alone."""
        out = []
        for i, item in enumerate(self.items(node, path)):
            value = self.string(item, f"{path}[{i}]").strip()
            if not value or any(c.isspace() or c in "/@" for c in value.split("://", 1)[-1]):
                self.fail(item, f"{path}[{i}]: {value!r} is not a host name or origin"
                                " (like gw.example.com, or https://app.example.com)")
            out.append(value)
        return tuple(out)
