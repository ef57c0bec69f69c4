"""The exceptions keymux raises.

    KeymuxError
     └── ConfigError      keys.yaml is unreadable, unparsable or invalid (carries path and line)
"""
from __future__ import annotations


class KeymuxError(Exception):
    """Base of every error keymux raises on purpose."""


class ConfigError(KeymuxError):
    """A config that must not replace the one in use.

    ``str()`` gives ``path:line: message`` so that logs, /_keymux/health and the UI
    can show the user exactly where the problem is.
    """

    def __init__(self, message: str, line: int | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path

    def __str__(self) -> str:
        where = self.path or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"
