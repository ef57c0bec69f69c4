"""keys.yaml's text: read from disk under a size cap, composed into YAML nodes; located errors."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from yaml.nodes import MappingNode

from .envfile import line_of
from .errors import ConfigError

# A keys.yaml past this is refused before it is read: parsing holds the GIL, even on the
# watcher's thread, and would stall every request (50 MB took >10 s).
MAX_CONFIG_BYTES = 2 * 1024 * 1024


def check_size(text: str, source: str | None) -> None:
    """Refuse a text past MAX_CONFIG_BYTES before anything parses it (the web UI too)."""
    # Characters first (cheap): a text under the cap in characters is at most 4x it in bytes.
    if len(text) > MAX_CONFIG_BYTES // 4:
        size = len(text.encode("utf-8", "replace"))
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(_too_big(size), 1, source)


def _too_big(size: int) -> str:
    return (f"the file is {size / 1048576:.1f} MiB; keys.yaml (and its .env) may be at most"
            f" {MAX_CONFIG_BYTES // 1048576} MiB: keep bodies, logs and data elsewhere")


def read_text(path: Path) -> str:
    """The file's text, refused by its size before a byte of it is read or parsed."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_CONFIG_BYTES + 1)  # a file growing as we read is capped too
        if max(size, len(data)) > MAX_CONFIG_BYTES:
            raise ConfigError(_too_big(max(size, len(data))), 1, str(path))
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("the file is not valid UTF-8", path=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror or e}", path=str(path)) from None


def compose(text: str, source: str | None) -> MappingNode:
    """YAML text -> the root node; nodes (not objects) so that every value keeps its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        # Only the problem text, never a snippet: the offending line may hold a secret.
        message = f"invalid YAML: {e.problem or e.context}"
        if e.context and e.problem and e.context_mark:  # "while scanning ... on line 3: ..."
            message = f"invalid YAML: {e.context} on line {e.context_mark.line + 1}: {e.problem}"
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ConfigError(message, line, source) from None
    except yaml.reader.ReaderError as e:
        code = e.character if isinstance(e.character, int) else ord(e.character)
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"invalid YAML: {e.reason} (#x{code:04x})", line, source) from None
    if root is None:
        raise ConfigError("the file is empty", 1, source)
    if not isinstance(root, MappingNode):
        raise ConfigError("the top level must be a mapping (version:, providers:, keys:, ...)",
                          line_of(root), source)
    return root
