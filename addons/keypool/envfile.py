"""``.env`` parsing, ``${VAR}`` interpolation, and reading interpolated values from YAML.

``NodeReader`` is the layer of keys.yaml loading below the schema: it turns composed YAML
nodes into strictly typed values, with every string interpolated and every error carrying
its line. Values read here are often secrets, so no message here echoes a key or token.
"""
from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Mapping, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .yamlrules import ambiguity

_ASSIGN = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)\Z", re.S)
_DOUBLE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*(?:#.*)?\Z', re.S)
_SINGLE = re.compile(r"'([^']*)'\s*(?:#.*)?\Z", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}

# ``$$`` (a literal ``$``), a ``${...}`` reference, or a ``${`` that is never closed.
_TOKEN = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?\Z", re.S)
BAD_REFERENCE = "bad variable reference: write ${NAME} or ${NAME:-default}, and $$ for a literal $"


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines -> dict; ``export``, comments, blank lines and quotes handled.

    Raises ConfigError (with the 1-based line, no path) for a line that is not an assignment.
    """
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ASSIGN.match(line)
        if not m:
            raise ConfigError("expected KEY=VALUE", line=number)
        out[m[1]] = _value(m[2], number)
    return out


def _value(value: str, number: int) -> str:
    """Unquote one value; an unquoted value loses a ``# comment`` that follows whitespace."""
    if value.startswith('"'):
        m = _DOUBLE.match(value)
        if not m:
            raise ConfigError("unterminated double-quoted value", line=number)
        return re.sub(r"\\(.)", lambda e: _ESCAPES.get(e[1], "\\" + e[1]), m[1])
    if value.startswith("'"):
        m = _SINGLE.match(value)
        if not m:
            raise ConfigError("unterminated single-quoted value", line=number)
        return m[1]
    return re.sub(r"\s+#.*\Z", "", value, flags=re.S)


def interpolate(
    text: str, env: Mapping[str, str], *, empty_is_unset: bool = False
) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``.

    Returns the expanded text and the names of the variables that were needed but unset
    (each expands to ""); the caller decides whether that is fatal. ``:-default`` applies
    when the variable is unset or empty, as in the shell. Raises ValueError for a malformed
    reference, with a message that does not quote the text (it may be a secret).
    """
    missing: list[str] = []

    def expand(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        body = m["body"]
        ref = _BODY.match(body) if body is not None else None
        if ref is None:
            raise ValueError(BAD_REFERENCE)
        value = env.get(ref["name"])
        if ref["default"] is not None:
            return value or ref["default"]
        if value is None or (empty_is_unset and value == ""):
            missing.append(ref["name"])
            return ""
        return value

    return _TOKEN.sub(expand, text), missing


# -- YAML nodes ------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
STR_TAG, NULL_TAG, INT_TAG = _TAG + "str", _TAG + "null", _TAG + "int"
_PLAIN_TYPES = {NULL_TAG, INT_TAG, _TAG + "bool", _TAG + "float"}

Parse = Callable[[Node, str], Any]


class NodeReader:
    """Reads composed YAML nodes as typed, interpolated values.

    Every failure is a ConfigError naming the field path and the node's line; subclasses
    add a schema on top.
    """

    def __init__(self, source: str | None, env: Mapping[str, str]):
        self.source, self.env = source, env
        self.warnings: list[str] = []
        self._yaml = yaml.SafeLoader("")  # resolves and constructs scalars as safe_load would

    def fail(self, node: Node, message: str) -> NoReturn:
        raise ConfigError(message, line_of(node), self.source)

    # -- structure

    def fields(self, node: Node | None, path: str,
               known: tuple[str, ...] | None = None) -> dict[str, Node]:
        """A mapping's value nodes by field name; null counts as an empty mapping."""
        if is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.fail(node, _at(path, f"expected a mapping, got {describe(node)}"))
        out: dict[str, Node] = {}
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.fail(key, _at(path, "field names must be plain strings"))
            name = key.value
            if name in out:
                self.fail(key, _at(path, f"duplicate field {name!r} (first on line {first[name]})"))
            self._plain_key(key, path)
            if known is not None and name not in known:
                self.fail(key, _at(path, _unknown(name, known)))
            out[name], first[name] = value, line_of(key)
        return out

    def items(self, node: Node | None, path: str) -> list[Node]:
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{path}: expected a list, got {describe(node)}")
        return node.value

    def need(self, f: dict[str, Node], name: str, path: str, owner: Node) -> Node:
        node = f.get(name)
        if is_null(node):
            self.fail(node or owner, f"{path}: missing required field {name!r}")
        return node

    def given(self, f: dict[str, Node], path: str, parsers: dict[str, Parse]) -> dict[str, Any]:
        """Parsed values of the optional fields present; a dataclass default covers the rest."""
        return {name: parse(f[name], _join(path, name))
                for name, parse in parsers.items() if not is_null(f.get(name))}

    # -- scalars

    def _plain_key(self, key: ScalarNode, path: str) -> None:
        """A field or entry name means its text: YAML 1.2 would read ``017:`` or ``true:``
        as a number or a boolean, so such names must be quoted."""
        if not _implicit(self._yaml, key):
            return
        why = ambiguity(key.value)
        if why is None and key.tag != STR_TAG:
            why = "a name that YAML reads as a number, boolean or null must be quoted"
        if why:
            self.fail(key, _at(path, f"unquoted name {describe(key)}: {why}"))

    def unambiguous(self, node: ScalarNode, path: str, secret: bool = False) -> None:
        """Refuse an unquoted value that YAML 1.1 and 1.2 read differently (yamlrules)."""
        if not _implicit(self._yaml, node):
            return
        why = ambiguity(node.value)
        if why:
            what = "the unquoted value" if secret else f"unquoted {describe(node)}"
            self.fail(node, f"{path}: {what}: {why}")

    def scalar(self, node: Node, path: str) -> Any:
        """A scalar's value, strings interpolated; lists, mappings and dates give the node."""
        if not isinstance(node, ScalarNode):
            return node
        self.unambiguous(node, path)
        if node.tag == STR_TAG:
            try:
                text, missing = interpolate(node.value, self.env)
            except ValueError as e:
                self.fail(node, f"{path}: {e}")
            if missing:
                self.fail(node, f"{path}: ${{{missing[0]}}} is not set")
            return text
        return self._yaml.construct_object(node) if node.tag in _PLAIN_TYPES else node

    def typed(self, node: Node, path: str) -> Any:
        """scalar(), but an unquoted ${VAR} reads as YAML would read its value (rpm: ${RPM})."""
        value = self.scalar(node, path)
        if isinstance(value, str) and node.style is None and value != node.value:
            why = ambiguity(value)
            if why:  # the variable's value is read as if it were written here
                self.fail(node, f"{path}: the value of {node.value.strip()}: {why}")
            tag = self._yaml.resolve(ScalarNode, value, (True, False))
            if tag in _PLAIN_TYPES:
                value = self._yaml.construct_object(ScalarNode(tag, value))
        return value

    def string(self, node: Node, path: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str):
            self.fail(node, f"{path}: expected a string, got {describe(node, value)}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        value = self.typed(node, path)
        if not isinstance(value, bool):
            self.fail(node, f"{path}: expected true or false, got {describe(node, value)}")
        return value

    def count(self, node: Node, path: str) -> int:
        value = self.typed(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(node, f"{path}: expected a positive integer, got {describe(node, value)}")
        return value

    def number(self, node: Node, path: str, positive: bool) -> float:
        value = self.typed(node, path)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (value > 0 if positive else value >= 0))
        if not ok:
            what = "a positive number" if positive else "a number >= 0"
            self.fail(node, f"{path}: expected {what}, got {describe(node, value)}")
        return float(value)

    def positive(self, node: Node, path: str) -> float:
        return self.number(node, path, positive=True)

    def seconds(self, node: Node, path: str) -> float:
        return self.number(node, path, positive=False)

    def choice(self, options: tuple[str, ...]) -> Parse:
        def parse(node: Node, path: str) -> str:
            value = self.string(node, path)
            if value not in options:
                self.fail(node, f"{path}: expected one of {', '.join(options)}, got {value!r}")
            return value
        return parse

    def globs(self, node: Node, path: str) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.items(node, path)):
            value = self.string(item, f"{path}[{i}]")
            if not value.strip():
                self.fail(item, f"{path}[{i}]: a model name must not be empty")
            out.append(value)
        return tuple(out)

    def secret(self, node: Node, path: str, owner: str, kind: str) -> str | None:
        """A key's or token's value, never echoed; None plus a warning if its variable is unset."""
        if not isinstance(node, ScalarNode):
            self.fail(node, f"{path}: must be a string, got {describe(node)}")
        if node.tag != STR_TAG:
            self.fail(node, f"{path}: must be a string (quote it)")
        self.unambiguous(node, path, secret=True)
        try:
            value, missing = interpolate(node.value, self.env, empty_is_unset=True)
        except ValueError as e:
            self.fail(node, f"{path}: {e}")
        if missing:
            state = "is empty" if self.env.get(missing[0]) == "" else "is not set"
            self.warnings.append(f"{kind} {owner!r} skipped: ${{{missing[0]}}} {state}")
            return None
        if not value.strip():
            if value == node.value:  # written empty, not emptied by a variable: a plain mistake
                self.fail(node, f"{path}: must not be empty")
            self.warnings.append(f"{kind} {owner!r} skipped: its {path.rsplit('.', 1)[1]} is empty")
            return None
        return value


def _implicit(loader: yaml.SafeLoader, node: ScalarNode) -> bool:
    """Plain and untagged: its type comes from how it looks (``!!str on`` says what it is)."""
    return node.style is None and \
        node.tag == loader.resolve(ScalarNode, node.value, (True, False))


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG)


def _at(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unknown(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
    return f"unknown field {name!r} ({hint})"


def describe(node: Node, value: Any = None) -> str:
    """How an error shows a wrong value: YAML spelling, strings quoted, long ones cut."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) or node.tag == STR_TAG:
        text = repr(value if isinstance(value, str) else node.value)
    else:
        text = node.value or "null"
    return text if len(text) <= 60 else text[:57] + "..."
