"""Model globs (``gpt-4o*``), compiled once per config."""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable


class GlobSet:
    """A set of case-sensitive shell globs; an empty set matches nothing."""

    __slots__ = ("patterns", "_exact", "_regex")

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = tuple(dict.fromkeys(patterns))
        wild = [p for p in self.patterns if is_wildcard(p)]
        self._exact = frozenset(p for p in self.patterns if not is_wildcard(p))
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in wild)) if wild else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, name: str) -> bool:
        if name in self._exact:
            return True
        return self._regex is not None and self._regex.match(name) is not None


def is_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
