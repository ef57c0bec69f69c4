"""Masking of secrets: the only forms of a key or token that may leave the gateway."""
from __future__ import annotations

import re


def mask(secret: str) -> str:
    """``sk-proj-abcdef…`` -> ``sk-…cdef``: enough to tell keys apart, useless to an attacker."""
    if not secret:
        return "…"
    if len(secret) < 12:
        return "…" + secret[-2:]
    return secret[:3] + "…" + secret[-4:]


def scrub(text: str, secrets: "list[str] | tuple[str, ...]") -> str:
    """Replace every occurrence of any of ``secrets`` in ``text`` by its mask, and anything
    that looks like a bearer credential."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, mask(s))
    return scrub_bearer(text)


_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")


def scrub_bearer(text: str) -> str:
    """Mask anything that looks like a bearer credential (for text of unknown origin)."""
    return _BEARER.sub(lambda m: m.group(1) + mask(m.group(2)), text)


def mask_credential(value: str) -> str:
    """A credential header's value masked, its scheme kept: ``Bearer kmx…3456``."""
    scheme, sep, rest = value.partition(" ")
    rest = rest.strip()
    if sep and rest and scheme.isalpha() and len(scheme) <= 16:
        return f"{scheme} {mask(rest)}"
    return mask(value)


_MASKED = re.compile(r"(?:[A-Za-z]{1,16} )?[^\s…]{0,3}…[^\s…]{0,4}")


def is_masked(value: str) -> bool:
    """Whether ``value`` is already a ``mask``/``mask_credential`` form (masking it again
    would only shorten it). At most 7 characters of anything besides the ellipsis."""
    return _MASKED.fullmatch(value) is not None
