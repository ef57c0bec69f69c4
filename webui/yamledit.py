"""Edit keys.yaml as text, keeping what a human wrote: comments, order, quoting, indents.

Pure: text in, text out. The web UI loads the file into a :class:`Document`, applies one
edit, dumps it, lets the gateway's own ``parse_config`` judge the result, and only then
writes it (``webui.atomicfile.write_atomic``).

ruamel.yaml keeps a comment on the node *before* it: the comment block between two list
items belongs to the first one's last value. So appending, removing and adding a field
move that trailing block along, so that it stays where it was in the file.
"""
from __future__ import annotations

import io
import re
from decimal import Decimal
from typing import Any, Iterable

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from keypool.yamlrules import ambiguity

from .notes import N_, Note

# Field order of a new key or client, as docs/config.md writes them.
KEY_ORDER = ("name", "provider", "key", "enabled", "weight", "models", "rpm", "tpm",
             "max_in_flight")
CLIENT_ORDER = ("name", "token", "models", "rpm")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}\Z")
# (mapping, sequence, offset) settings tried in turn; the first that reproduces the file wins.
_COMMON = ((2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0))
_INDENTS = _COMMON + tuple((m, off + dash, off) for m in (2, 4, 3) for off in range(5)
                           for dash in (2, 3, 4) if (m, off + dash, off) not in _COMMON)


class EditError(ValueError):
    """The edit cannot be applied (unknown name, unreadable YAML); the note is safe to show."""

    def __init__(self, note: Note):
        super().__init__(str(note))
        self.note = note


def is_reference(value: str) -> bool:
    """``${VAR}`` (or ``${VAR:-default}``) and nothing else."""
    return bool(_REFERENCE.match(value.strip()))


def reference_name(value: str) -> str:
    """``${VAR:-default}`` -> ``${VAR}``: what may be shown (a default may be a secret)."""
    return "${" + value.strip()[2:-1].split(":-", 1)[0] + "}"


def secret_scalar(value: str) -> str:
    """What to write for a secret typed in a form: a reference as is, a literal with ``$`` escaped."""
    value = value.strip()
    return value if is_reference(value) else value.replace("$", "$$")


def literal_of(scalar: str) -> str:
    """The inverse of :func:`secret_scalar` for a literal (``$$`` -> ``$``)."""
    return scalar.replace("$$", "$")


class _Positional(float):
    """A float written without an exponent: ruamel writes 1e-05, which YAML 1.1 reads as text."""


def _represent_positional(representer, value: _Positional):
    text = format(Decimal(repr(float(value))), "f")
    return representer.represent_scalar("tag:yaml.org,2002:float",
                                        text if "." in text else text + ".0")


def _yaml(indent: tuple[int, int, int]) -> YAML:
    y = YAML(typ="rt")
    y.representer.add_representer(_Positional, _represent_positional)
    y.preserve_quotes = True
    y.width = 4096  # never fold a long line the user wrote on one
    y.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    return y


class Document:
    """One keys.yaml, loaded round-trip."""

    def __init__(self, text: str):
        self.bom = text.startswith("\ufeff")
        text = text.lstrip("\ufeff")
        self.crlf = "\r\n" in text
        text = text.replace("\r\n", "\n")
        self._yaml = _yaml(_INDENTS[0])
        try:
            self.root = self._yaml.load(text)
        except YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise EditError(N_("the file is not valid YAML (line %(line)s); fix it by hand first",
                               line=mark.line + 1 if mark is not None else "?")) from None
        if self.root is None:
            self.root = CommentedMap()
        if not isinstance(self.root, CommentedMap):
            raise EditError(N_("the top level of the file must be a mapping"))
        for indent in _INDENTS:  # the file's own indentation, so untouched lines stay as they are
            y = _yaml(indent)
            if _dump(y, y.load(text)) == text:
                self._yaml = y
                break

    def dump(self) -> str:
        text = _dump(self._yaml, self.root)
        if self.crlf:
            text = text.replace("\n", "\r\n")
        return ("\ufeff" if self.bom else "") + text

    # -- reading

    def items(self, section: str) -> list[CommentedMap]:
        seq = self.root.get(section)
        return [i for i in seq if isinstance(i, CommentedMap)] if isinstance(seq, list) else []

    def find(self, section: str, name: str) -> CommentedMap:
        for item in self.items(section):
            if str(item.get("name")) == name:
                return item
        raise EditError(N_("no entry named %(name)s in %(section)s:", name=name, section=section))

    def names(self, section: str) -> list[str]:
        return [str(i.get("name")) for i in self.items(section)]

    def has_section(self, section: str) -> bool:
        return section in self.root and self.root[section] is not None

    def mapping(self, section: str) -> CommentedMap | None:
        value = self.root.get(section)
        return value if isinstance(value, CommentedMap) else None

    # -- editing

    def add_item(self, section: str, fields: dict[str, Any], order: Iterable[str]) -> None:
        item = CommentedMap()
        for name in order:
            if fields.get(name) is not None:
                item[name] = _node(name, fields[name])
        seq = self.root.get(section)
        if isinstance(seq, CommentedSeq) and len(seq):
            append_item(seq, item)
            return
        if seq is not None and not isinstance(seq, CommentedSeq):
            raise EditError(N_("%(section)s: is not a list in the file; fix it by hand first",
                               section=section))
        fresh = CommentedSeq([item])
        fresh.fa.set_block_style()
        _set_top(self.root, section, fresh)

    def update_item(self, section: str, name: str, fields: dict[str, Any],
                    order: Iterable[str]) -> None:
        """Set the given fields (None removes an optional one); others stay as written."""
        item = self.find(section, name)
        for field in order:
            if field not in fields:
                continue
            value = fields[field]
            if value is None:
                if field in item:
                    remove_field(item, field)
            elif field in item:
                if _plain(item[field]) != value:
                    item[field] = _node(field, value)
            else:
                insert_field(item, field, _node(field, value), list(order))

    def remove_item(self, section: str, name: str) -> None:
        seq = self.root.get(section)
        item = self.find(section, name)
        index = next(i for i, x in enumerate(seq) if x is item)
        remove_index(seq, index, self.root, section)

    def add_mapping_entry(self, section: str, key: str, value: dict[str, Any]) -> None:
        """``providers: {key: value}``; the section is created when missing."""
        target = self.root.get(section)
        if not isinstance(target, CommentedMap):
            target = CommentedMap()
            _set_top(self.root, section, target)
        node = CommentedMap()
        for k, v in value.items():
            node[k] = _node(k, v)
        append_key(target, key, node)


def _dump(y: YAML, data: Any) -> str:
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue()


def _set_top(root: CommentedMap, section: str, value: Any) -> None:
    if section in root:  # "keys:" (null) or "keys: []": the value goes where the key is
        root[section] = value
        return
    # A new section goes before routing/state_dir/logging when those exist, else at the end.
    anchors = [k for k in ("routing", "state_dir", "logging", "admin") if k in root]
    if not anchors:
        append_key(root, section, value)
        return
    root.insert(list(root).index(anchors[0]), section, value)
    _give_rest(_holder_of(root, section), "\n")  # a blank line before the next section


def _node(field: str, value: Any) -> Any:
    if field == "models" and isinstance(value, (list, tuple)):
        seq = CommentedSeq(DoubleQuotedScalarString(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        node = CommentedMap()
        for k, v in value.items():
            node[k] = _node(k, v)
        return node
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float) and "e" in repr(value):
        return _Positional(value)
    if isinstance(value, str) and ambiguity(value):
        # ruamel (YAML 1.2) writes "on" or "1:30" unquoted, and the gateway would refuse
        # them as ambiguous (keypool.yamlrules): text the user typed stays text.
        return DoubleQuotedScalarString(value)
    return value


def _plain(node: Any) -> Any:
    if isinstance(node, list):
        return [str(x) for x in node]
    return node


# -- comment bookkeeping --------------------------------------------------------------
# A trailing comment token holds "<end-of-line comment or nothing>\n<following lines>".

def _holder(node: Any) -> tuple[Any, Any, int] | None:
    """Where the comment after ``node``'s last line lives: (container, key, slot)."""
    if isinstance(node, CommentedMap) and len(node):
        key = list(node)[-1]
        inner = _holder(node[key]) if _is_block(node[key]) else None
        return inner or (node, key, 2)
    if isinstance(node, CommentedSeq) and len(node):
        index = len(node) - 1
        inner = _holder(node[index]) if _is_block(node[index]) else None
        return inner or (node, index, 0)
    return None


def _is_block(node: Any) -> bool:
    return isinstance(node, (CommentedMap, CommentedSeq)) and len(node) > 0 \
        and not node.fa.flow_style()


def _get(h: tuple[Any, Any, int] | None) -> CommentToken | None:
    if h is None:
        return None
    slots = h[0].ca.items.get(h[1])
    return slots[h[2]] if slots and len(slots) > h[2] else None


def _put(h: tuple[Any, Any, int], token: CommentToken | None) -> None:
    container, key, slot = h
    slots = container.ca.items.setdefault(key, [None, None, None, None])
    while len(slots) <= slot:
        slots.append(None)
    slots[slot] = token


def _split(token: CommentToken | None) -> tuple[str, str]:
    """-> (end-of-line part with its newline, the lines after it)."""
    if token is None or not isinstance(token.value, str):
        return "", ""
    eol, sep, rest = token.value.partition("\n")
    return eol + sep, rest


def _token(value: str, like: CommentToken | None) -> CommentToken | None:
    if not value.strip("\n") and value.count("\n") <= 1:
        return None
    column = like.start_mark.column if like is not None and like.start_mark else 0
    return CommentToken(value, CommentMark(column), None)


def _take_rest(h: tuple[Any, Any, int] | None) -> str:
    """Cut the lines after the end-of-line comment off ``h``; return them."""
    token = _get(h)
    eol, rest = _split(token)
    if rest:
        _put(h, _token(eol, token) if eol.strip() else None)
    return rest


def _give_rest(h: tuple[Any, Any, int] | None, rest: str) -> None:
    if not rest or h is None:
        return
    token = _get(h)
    eol, old_rest = _split(token)
    _put(h, _token((eol or "\n") + old_rest + rest, token))


def _move_rest(src: Any, src_key: Any, dst: Any, dst_key: Any) -> None:
    rest = _take_rest(_holder_of(src, src_key))
    _give_rest(_holder_of(dst, dst_key), rest)


def _holder_of(container: Any, key: Any) -> tuple[Any, Any, int] | None:
    value = container[key]
    inner = _holder(value) if _is_block(value) else None
    return inner or (container, key, 2 if isinstance(container, CommentedMap) else 0)


def append_item(seq: CommentedSeq, item: Any) -> None:
    """Append right after the last item; comments that followed it stay below the new one."""
    rest = _take_rest(_holder_of(seq, len(seq) - 1)) if len(seq) else ""
    seq.append(item)
    _give_rest(_holder_of(seq, len(seq) - 1), rest)


def append_key(target: CommentedMap, key: str, value: Any) -> None:
    last = list(target)[-1] if len(target) else None
    rest = _take_rest(_holder_of(target, last)) if last is not None else ""
    target[key] = value
    _give_rest(_holder_of(target, key), rest)


def insert_field(item: CommentedMap, field: str, value: Any, order: list[str]) -> None:
    """Insert ``field`` after the fields that come before it in ``order``."""
    rank = order.index(field) if field in order else len(order)
    keys = list(item)
    position = len(keys)
    for i, k in enumerate(keys):
        if k in order and order.index(k) > rank:
            position = i
            break
    if position == len(keys):
        append_key(item, field, value)
    else:
        item.insert(position, field, value)


def remove_field(item: CommentedMap, field: str) -> None:
    keys = list(item)
    i = keys.index(field)
    rest = _take_rest(_holder_of(item, field))
    del item[field]
    item.ca.items.pop(field, None)
    if i > 0:
        _give_rest(_holder_of(item, keys[i - 1]), rest)


def remove_index(seq: CommentedSeq, index: int, parent: CommentedMap, parent_key: str) -> None:
    """Delete ``seq[index]``; the comment block after it moves to what came before it."""
    rest = _take_rest(_holder_of(seq, index))
    del seq[index]  # CommentedSeq shifts the comments of later items itself
    if index > 0:
        _give_rest(_holder_of(seq, index - 1), rest)
    elif rest:
        _give_rest((parent, parent_key, 2), rest)
    if not len(seq):
        seq.fa.set_flow_style()  # renders as "keys: []" rather than a bare "keys:"
