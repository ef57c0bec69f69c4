"""keys.yaml as the UI sees it: read it, judge it with the gateway's own code, save an edit.

Validation is ``keypool.config.parse_config`` with ``load_config``'s semantics (a ``.env``
beside the file, the process environment winning over it), so the UI accepts exactly what
the gateway will accept. Nothing is written before the whole new file validates.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from keypool.config import Config, parse_config
from keypool.config_text import check_size
from keypool.envfile import interpolate, parse_dotenv
from keypool.errors import ConfigError
from keypool.redact import mask

from . import atomicfile, yamledit
from .atomicfile import Conflict
from .yamledit import Document, EditError

__all__ = ["ConfigFile", "Snapshot", "Credentials", "Conflict", "EditError", "ConfigError",
           "EditedConfigError"]


class EditedConfigError(ConfigError):
    """A ConfigError in a document that is not on disk yet: its lines are the edit's."""

    def __str__(self) -> str:
        where = f"in the edited {self.path}"
        if self.line is not None:
            where += f", line {self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Credentials:
    token: str | None = field(default=None, repr=False)          # KEYMUX_ADMIN_TOKEN
    password_hash: str | None = field(default=None, repr=False)  # admin.password_hash
    locked: bool = False  # the file cannot be read, so whether a password is set is unknown
    # locked because keys.yaml does not parse: (line or None, message without the path)
    broken: tuple[int | None, str] | None = None

    @property
    def required(self) -> bool:
        return bool(self.token or self.password_hash or self.locked)


@dataclass
class Snapshot:
    """The file as it is now; ``config`` is None when it does not validate (``error`` says why)."""
    text: str
    version: str
    doc: Document | None
    config: Config | None
    error: str | None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    problem: tuple[int | None, str] | None = None  # the error's line and bare message

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.config.warnings if self.config else ()


class ConfigFile:
    def __init__(self, path: str | Path, environ: dict[str, str] | None = None):
        self.path = Path(path)
        self.environ = environ  # None: os.environ at each read
        self._cache: tuple[tuple, Snapshot] | None = None
        self._lock = threading.Lock()

    @property
    def dotenv(self) -> Path:
        return self.path.parent / ".env"

    def variables(self) -> dict[str, str]:
        """``load_config``'s view of the environment: .env, then the process environment."""
        out: dict[str, str] = {}
        if self.dotenv.is_file():
            try:
                out.update(parse_dotenv(self.dotenv.read_text(encoding="utf-8-sig")))
            except ConfigError as e:
                raise ConfigError(e.message, e.line, str(self.dotenv)) from None
            except (OSError, UnicodeDecodeError):
                raise ConfigError("cannot read the file", None, str(self.dotenv)) from None
        out.update(os.environ if self.environ is None else self.environ)
        return out

    def validate(self, text: str, *, edited: bool = True) -> Config:
        """Raise ConfigError exactly where the gateway would.

        ``edited``: ``text`` is a new document, not the file on disk, so an error names it
        "the edited keys.yaml" rather than citing a line of a file that does not hold it.
        """
        try:
            return parse_config(text.lstrip("\ufeff"), source=str(self.path),
                                env=self.variables(), base_dir=self.path.absolute().parent)
        except ConfigError as e:
            if not edited or e.path != str(self.path):
                raise  # an error in .env or a file it names is about that file
            raise EditedConfigError(e.message, e.line, self.path.name) from None

    def read(self) -> Snapshot:
        stamp = self._stamp()
        with self._lock:
            if self._cache and self._cache[0] == stamp:
                return self._cache[1]
        snap = self._load()
        with self._lock:
            self._cache = (stamp, snap)
        return snap

    def _stamp(self) -> tuple:
        out = []
        for p in (self.path, self.dotenv):
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        env = os.environ if self.environ is None else self.environ
        return tuple(out) + (hash(frozenset(env.items())),)

    def _load(self) -> Snapshot:
        try:
            text, version = atomicfile.read(self.path)
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8"
            return Snapshot("", "", None, None, f"{self.path}: cannot read the file: {reason}")
        doc, config, error, problem = None, None, None, None
        try:  # ruamel takes seconds on a huge file: refuse it by size first, as the gateway does
            check_size(text, str(self.path))
        except ConfigError as e:
            return Snapshot("", version, None, None, str(e))
        try:
            doc = Document(text)
        except EditError as e:
            error = f"{self.path}: {e}"
        try:
            config = self.validate(text, edited=False)
        except ConfigError as e:
            error = str(e)
            problem = (e.line if e.path == str(self.path) else None, e.message)
        secrets = self._secrets(doc, config)
        if error:
            error = scrub(error, secrets)
            problem = problem and (problem[0], scrub(problem[1], secrets))
        return Snapshot(text, version, doc, config, error, secrets, problem)

    def _secrets(self, doc: Document | None, config: Config | None) -> tuple[str, ...]:
        """Every secret the file names, resolved or literal: what must never leave the UI."""
        found: set[str] = set()
        if config:
            found |= {k.secret for k in config.keys} | {c.token for c in config.clients or ()}
        if doc:
            try:
                env = self.variables()
            except ConfigError:
                env = dict(os.environ if self.environ is None else self.environ)
            for section, fname in (("keys", "key"), ("clients", "token")):
                for item in doc.items(section):
                    raw = item.get(fname)
                    if not isinstance(raw, str) or not raw:
                        continue
                    try:
                        value, _ = interpolate(raw, env)
                    except ValueError:
                        value = raw
                    found |= {raw, value, yamledit.literal_of(raw)}
            admin = doc.mapping("admin")
            if admin and isinstance(admin.get("password_hash"), str):
                found.add(admin["password_hash"])
        env = os.environ if self.environ is None else self.environ
        found.add(env.get("KEYMUX_ADMIN_TOKEN") or "")
        return tuple(sorted((s for s in found if len(s) >= 6 and not yamledit.is_reference(s)),
                            key=len, reverse=True))

    def credentials(self) -> Credentials:
        token = os.environ.get("KEYMUX_ADMIN_TOKEN") if self.environ is None \
            else self.environ.get("KEYMUX_ADMIN_TOKEN")
        snap = self.read()
        if snap.config is not None:
            return Credentials(token or None, snap.config.admin.password_hash or None)
        if snap.doc is None:  # unreadable: whether a password is set is unknown, so ask
            # The token does not depend on the file: with it the admin signs in and sees the
            # error; without it the sign-in page says where the file is broken.
            return Credentials(token or None, None, locked=not token,
                               broken=None if token or not snap.text else snap.problem)
        # The file does not validate: read the password hash straight from it, so that a
        # broken key does not lock the admin out. A hash that is there but unreadable locks.
        admin = snap.doc.root.get("admin")
        if admin is None:
            return Credentials(token or None, None)
        raw = admin.get("password_hash") if isinstance(admin, dict) else None
        try:
            value, missing = interpolate(raw, self.variables()) if isinstance(raw, str) else ("", [])
        except (ValueError, ConfigError):
            value, missing = "", ["?"]
        if value and not missing:
            return Credentials(token or None, value)
        return Credentials(token or None, None, locked=not token)

    def save(self, version: str, edit: Callable[[Document], None]) -> Config:
        """Apply ``edit`` to the file as of ``version``, validate, write atomically.

        Raises Conflict (the file changed since ``version``), EditError, ConfigError; in
        every one of those cases the file is left as it was.
        """
        text, current = atomicfile.read(self.path)
        if not version or version != current:
            raise Conflict(str(self.path))
        check_size(text, str(self.path))
        doc = Document(text)
        edit(doc)
        new_text = doc.dump()
        config = self.validate(new_text)
        atomicfile.write_atomic(self.path, new_text, current)
        return config


def scrub(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    for s in secrets:
        if s and s in text:
            text = text.replace(s, mask(s))
    return text
