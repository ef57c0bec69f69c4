"""Messages made where no request (so no language) is at hand, translated where shown.

``N_("unknown provider %(name)r", name=p)`` keeps the English message id and its values;
``webui.i18n.t(note)`` gives the text in the page's language. Tests find every ``N_`` call
and check it has a translation, like every ``t`` and ``_``.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class Note(NamedTuple):
    msgid: str
    params: dict[str, Any]

    def __str__(self) -> str:  # English, for logs and tests
        return self.msgid % self.params if self.params else self.msgid


def N_(msgid: str, **params: Any) -> Note:
    return Note(msgid, params)
