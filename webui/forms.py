"""Form fields -> config values, and the one way every page saves keys.yaml."""
from __future__ import annotations

import logging
import re
from typing import Callable, Iterable

from flask import flash

from . import deps
from .configfile import ConfigError, Conflict, EditError, scrub
from .i18n import t
from .yamledit import Document, is_reference

logger = logging.getLogger(__name__)
_SPLIT = re.compile(r"[\s,]+")


class FormError(ValueError):
    """A field that cannot be read; the message is translated and safe to show."""


def text(form, name: str) -> str:
    return (form.get(name) or "").strip()


def models(form, name: str = "models") -> list[str] | None:
    values = [m for m in _SPLIT.split(text(form, name)) if m]
    return values or None


def integer(form, name: str, label: str) -> int | None:
    value = text(form, name)
    if not value:
        return None
    if not re.fullmatch(r"\d{1,12}", value):
        raise FormError(t("%(field)s must be a whole number.", field=label))
    return int(value)


def number(form, name: str, label: str) -> float | int | None:
    value = text(form, name)
    if not value:
        return None
    try:
        out = float(value)
    except ValueError:
        raise FormError(t("%(field)s must be a number.", field=label)) from None
    if out != out or out in (float("inf"), float("-inf")):
        raise FormError(t("%(field)s must be a number.", field=label))
    return int(out) if out.is_integer() else out


def save(version: str, edit: Callable[[Document], None],
         typed: Iterable[str] = ()) -> tuple[bool, int, str | None]:
    """Apply ``edit`` to keys.yaml -> (saved, HTTP status, error message).

    ``typed``: secrets the user just typed, masked out of any message too. On success the
    config's warnings (e.g. a ``${VAR}`` that is not set) are flashed.
    """
    snap = deps.snapshot()
    # a typed ``${VAR}`` is a name, not a secret: masking it garbles the warning that cites it
    secrets = tuple(s for s in typed if s and not is_reference(s)) + snap.secrets
    try:
        config = deps.config_file().save(version, edit)
    except Conflict:
        return False, 409, t("keys.yaml changed on disk after this page was loaded (an edit by"
                             " hand or in another tab). Nothing was saved: reload the page and"
                             " make the change again.")
    except EditError as e:
        return False, 400, scrub(t(e.note), secrets)
    except ConfigError as e:
        return False, 400, t("Not saved, the gateway would reject it: %(error)s",
                             error=scrub(str(e), secrets))
    except OSError as e:
        logger.error("cannot write %s: %s", deps.config_file().path, e.strerror or e)
        return False, 500, t("Cannot write keys.yaml: %(reason)s", reason=e.strerror or "I/O error")
    for warning in config.warnings:
        flash(scrub(warning, secrets), "warning")
    return True, 200, None
