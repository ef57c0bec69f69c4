"""One meaning for keys.yaml: plain scalars that YAML 1.1 and YAML 1.2 read differently.

The gateway reads keys.yaml with PyYAML (YAML 1.1); the web UI edits it with ruamel.yaml
(YAML 1.2), and so may any other tool a user points at it. Where the two disagree
(``enabled: off`` is false to one and the text "off" to the other), the gateway refuses the
value with its line and what to write instead, rather than pick a meaning; the UI validates
with the gateway's code, so both refuse the same file. Forms both read alike (``true``,
``~``, ``12``, ``0.5``, ``.inf``) are left alone; a field's own type check judges them.
"""
from __future__ import annotations

import re

import yaml
from yaml.nodes import ScalarNode

_TAG = "tag:yaml.org,2002:"

# (pattern of the whole plain scalar, why it is refused and what to write instead)
RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p + r"\Z"), why) for p, why in (
    (r"(?i:y|n|yes|no|on|off)",
     "on/off, yes/no and y/n are booleans in YAML 1.1 but text in YAML 1.2: write true or"
     " false, or quote it if you mean the text"),
    (r"[-+]?0[oObBxX][0-9a-fA-F_]*",
     "0o, 0b and 0x numbers are read differently by YAML 1.1 and 1.2: write the number in"
     " decimal, or quote it if you mean the text"),
    (r"[-+]?0[0-9_]+",
     "a number with a leading zero is octal in YAML 1.1 and decimal in YAML 1.2: write it"
     " without the leading zero, or quote it if you mean the text"),
    (r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?",
     "a value like 1:30 is a base-60 number in YAML 1.1 and text in YAML 1.2: quote it"),
    (r"(?=.*_)[-+]?\.?[0-9][0-9_.]*(?:[eE][-+]?[0-9]+)?",
     "digits grouped with _ are a number in YAML 1.1 and text in YAML 1.2: write the digits"
     " without _, or quote it if you mean the text"),
    (r"(?![-+]?[0-9][0-9]*\.[0-9]*[eE][-+][0-9]+\Z)[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+",
     "YAML 1.1 reads an exponent only after a dot and with a sign (1.0e+3): write a plain"
     " decimal number, or quote it if you mean the text"),
    (r"[-+]\.[0-9]+",
     "a signed number without a digit before the dot is text in YAML 1.1: write -0.5, not"
     " -.5, or quote it if you mean the text"),
))
_SPECIAL = {_TAG + "timestamp": "a bare date or time is not text to YAML: quote it",
            _TAG + "value": "= is special in YAML 1.1: quote it",
            _TAG + "merge": "<< is special in YAML 1.1: quote it"}
_resolver = yaml.resolver.Resolver()


def ambiguity(text: str) -> str | None:
    """Why the unquoted ``text`` has no single meaning (and what to write), or None.

    The reason never quotes ``text``: it may be a secret.
    """
    if not text or len(text) > 64 or text[0] not in "0123456789+-.yYnNoO=<":
        return None  # every ambiguous form is short and starts with one of these
    for pattern, why in RULES:
        if pattern.match(text):
            return why
    return _SPECIAL.get(_resolver.resolve(ScalarNode, text, (True, False)))
