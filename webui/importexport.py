"""Import keys from what people have lying around; export the config without its secrets.

Formats read (detected from the text):
- keymux's own export (YAML or JSON): ``{keys: [...], providers: {...}}`` in keys.yaml syntax;
- env lines: ``OPENAI_API_KEY_1=...``, ``GEMINI_API_KEY_2=...``, ``ANTHROPIC_API_KEY=...``;
- ``LLM_KEYS``: a JSON array ``[{"provider": ..., "key": ..., "name": optional}]``, bare or as
  ``LLM_KEYS=[...]``.
Pure: no Flask, no file I/O. No message here quotes a secret.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from keypool.envfile import interpolate, parse_dotenv
from keypool.errors import ConfigError

from .notes import N_, Note
from .yamledit import Document, is_reference, literal_of, secret_scalar

ENV_PREFIXES = {"OPENAI": "openai", "ANTHROPIC": "anthropic", "GEMINI": "gemini",
                "GOOGLE": "gemini", "DEEPSEEK": "deepseek", "XAI": "xai", "GROK": "xai",
                "GROQ": "groq", "MISTRAL": "mistral", "OPENROUTER": "openrouter"}
PROVIDER_ALIASES = {"google": "gemini", "grok": "xai", "claude": "anthropic"}
OPTIONAL_FIELDS = ("enabled", "weight", "models", "rpm", "tpm", "max_in_flight")
_ENV_KEY = re.compile(r"([A-Z]+)_API_KEY(?:_?(\d+))?\Z")
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=")


class ImportFormatError(ValueError):
    """The text is in none of the formats; the note names the problem, never a value."""

    def __init__(self, note: Note):
        super().__init__(str(note))
        self.note = note


@dataclass
class Candidate:
    provider: str
    key: str = field(repr=False)       # as it will be written in keys.yaml
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    origin: Note | None = None          # "line 3", "item 2": where it came from
    skip: Note | None = None            # why it will not be imported


@dataclass
class Parsed:
    format: str                         # export | env | llm_keys
    keys: list[Candidate]
    providers: dict[str, dict] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)


def parse(text: str) -> Parsed:
    try:
        return _parse(text.strip().lstrip("\ufeff"))
    except RecursionError:  # absurdly nested JSON or YAML
        raise ImportFormatError(N_("not an export (YAML or JSON), env lines or LLM_KEYS")) from None


def _parse(stripped: str) -> Parsed:
    if not stripped:
        raise ImportFormatError(N_("nothing to import"))
    if stripped.startswith("LLM_KEYS="):
        try:  # the whole text is one LLM_KEYS=[...], maybe over several lines
            return _llm_keys(json.loads(_unquote(stripped[len("LLM_KEYS="):])))
        except ValueError:
            pass  # or the first of several env lines: read below, line by line
    if stripped.startswith("["):
        return _llm_keys(_json(stripped))
    if stripped.startswith("{"):
        return _export(_json(stripped))
    lines = [ln for ln in stripped.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if lines and all(_ASSIGNMENT.match(ln) for ln in lines):
        return _env_lines(stripped)
    try:
        data = YAML(typ="safe", pure=True).load(stripped)
    except YAMLError:
        raise ImportFormatError(N_("not an export (YAML or JSON), env lines or LLM_KEYS")) from None
    if isinstance(data, list):
        return _llm_keys(data)
    return _export(data)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise ImportFormatError(N_("invalid JSON at line %(line)s", line=getattr(e, "lineno", 1))) from None


def _llm_keys(data: Any) -> Parsed:
    if not isinstance(data, list):
        raise ImportFormatError(N_("LLM_KEYS must be a JSON array of {provider, key, name}"))
    out = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) \
                or not isinstance(item.get("provider"), str) or not item["key"].strip():
            out.append(Candidate("", "", origin=N_("item %(n)s", n=i),
                                 skip=N_("needs a provider and a key (strings)")))
            continue
        name = item.get("name") if isinstance(item.get("name"), str) and item["name"] else None
        out.append(Candidate(_provider(item["provider"]), secret_scalar(item["key"]), name,
                             _extra(item), origin=N_("item %(n)s", n=i)))
    return Parsed("llm_keys", out)


def _env_lines(text: str) -> Parsed:
    out, notes = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        try:
            ((var, value),) = parse_dotenv(line).items()
        except (ConfigError, ValueError):
            notes.append(N_("line %(n)s: not VAR=VALUE, skipped", n=number))
            continue
        if var == "LLM_KEYS":
            sub = _llm_keys(_json(value))
            for c in sub.keys:
                c.origin = N_("line %(n)s, item %(i)s", n=number, i=c.origin.params["n"])
            out += sub.keys
            continue
        m = _ENV_KEY.match(var)
        provider = ENV_PREFIXES.get(m[1]) if m else None
        if provider is None:
            notes.append(N_("line %(n)s: %(var)s is not a provider key variable, skipped", n=number, var=var))
        elif not value.strip():
            notes.append(N_("line %(n)s: %(var)s is empty, skipped", n=number, var=var))
        else:
            out.append(Candidate(provider, secret_scalar(value), origin=N_("line %(n)s", n=number)))
    return Parsed("env", out, notes=notes)


def _export(data: Any) -> Parsed:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ImportFormatError(N_("an export needs a 'keys:' list"))
    out = []
    for i, item in enumerate(data["keys"], 1):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) \
                or not isinstance(item.get("provider"), str):
            out.append(Candidate("", "", origin=N_("keys[%(n)s]", n=i - 1),
                                 skip=N_("needs a provider and a key (strings)")))
            continue
        name = item.get("name") if isinstance(item.get("name"), str) and item["name"] else None
        # keys.yaml syntax already: ${VAR} stays a reference, $$ stays escaped
        out.append(Candidate(item["provider"], item["key"], name, _extra(item),
                             origin=N_("keys[%(n)s]", n=i - 1)))
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    return Parsed("export", out, {k: v for k, v in providers.items()
                                  if isinstance(k, str) and isinstance(v, dict)})


def _provider(name: str) -> str:
    name = name.strip().lower()
    return PROVIDER_ALIASES.get(name, name)


def _extra(item: Mapping) -> dict[str, Any]:
    return {k: item[k] for k in OPTIONAL_FIELDS if k in item and item[k] is not None}


# -- planning an import -----------------------------------------------------------------

def plan(parsed: Parsed, doc: Document, known_providers: Iterable[str],
         env: Mapping[str, str], values: Mapping[str, str] | None = None) -> Parsed:
    """Decide names and what is skipped (unknown provider, name taken, key already there).

    ``values``: optional ``VAR=value`` lines given with an export, filling its placeholders.
    """
    values = values or {}
    taken = set(doc.names("keys"))
    have = {resolve(str(i.get("key", "")), env): str(i.get("name"))
            for i in doc.items("keys") if isinstance(i.get("key"), str)}
    own = doc.mapping("providers") or {}
    new_providers = {k: v for k, v in parsed.providers.items()
                     if k not in own and k not in set(known_providers)}
    providers = set(known_providers) | set(new_providers)
    for c in parsed.keys:
        if c.skip:
            continue
        if is_reference(c.key) and c.key.strip()[2:-1].split(":-")[0] in values:
            c.key = secret_scalar(values[c.key.strip()[2:-1].split(":-")[0]])
        secret = resolve(c.key, env)
        if c.provider not in providers:
            c.skip = N_("unknown provider %(name)s", name=c.provider)
        elif secret and secret in have:
            c.skip = N_("same key as %(name)s, already in the pool", name=have[secret])
        elif c.name and c.name in taken:
            c.skip = N_("the name %(name)s is already used", name=c.name)
        else:
            c.name = c.name or unique_name(c.provider, taken)
            taken.add(c.name)
            if secret:
                have[secret] = c.name
    used = {c.provider for c in parsed.keys if not c.skip}
    return Parsed(parsed.format, parsed.keys,
                  {k: v for k, v in new_providers.items() if k in used}, parsed.notes)


def unique_name(provider: str, taken: set[str]) -> str:
    n = 1
    while f"{provider}-{n}" in taken:
        n += 1
    return f"{provider}-{n}"


def resolve(scalar: str, env: Mapping[str, str]) -> str:
    """The secret a keys.yaml scalar stands for ("" when it cannot be resolved)."""
    try:
        value, missing = interpolate(scalar, env)
    except ValueError:
        return literal_of(scalar)
    return "" if missing else value


def apply(doc: Document, parsed: Parsed, order: Iterable[str]) -> None:
    for name, spec in parsed.providers.items():
        doc.add_mapping_entry("providers", name, spec)
    for c in parsed.keys:
        if not c.skip:
            doc.add_item("keys", {"name": c.name, "provider": c.provider, "key": c.key,
                                  **c.extra}, order)


# -- export ---------------------------------------------------------------------------

def placeholder(prefix: str, name: str, used: set[str]) -> str:
    base = f"{prefix}_{re.sub(r'[^A-Z0-9]+', '_', name.upper()).strip('_') or 'X'}"
    var, n = base, 2
    while var in used:
        var, n = f"{base}_{n}", n + 1
    used.add(var)
    return var


def export(text: str, env: Mapping[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """keys.yaml text -> (the same YAML with every secret a ``${VAR}``, [(VAR, secret)]).

    The second part is what a ``.env`` needs to make the export work; the caller shows it
    only when the user asked for secrets. The ``admin`` section is left out.
    """
    doc = Document(text)
    doc.root.pop("admin", None)
    used = {m[2:] for i in doc.items("keys") + doc.items("clients")
            for m in re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*", str(i.get("key") or i.get("token") or ""))}
    pairs: list[tuple[str, str]] = []
    for section, fname, prefix in (("keys", "key", "KEYMUX_KEY"), ("clients", "token", "KEYMUX_TOKEN")):
        for item in doc.items(section):
            raw = item.get(fname)
            if not isinstance(raw, str):
                continue
            if is_reference(raw):
                var = raw.strip()[2:-1].split(":-")[0]
                value = resolve(raw, env)
            else:
                var = placeholder(prefix, str(item.get("name", "")), used)
                value = resolve(raw, env)
                item[fname] = "${" + var + "}"
            if value:
                pairs.append((var, value))
    pairs += _export_proxies(doc, env, used)
    return doc.dump(), pairs


def _export_proxies(doc: Document, env: Mapping[str, str], used: set[str]) -> list[tuple[str, str]]:
    """A provider's ``proxy:`` with a literal password becomes a ``${VAR}`` like a key."""
    pairs = []
    for name, provider in (doc.mapping("providers") or {}).items():
        raw = provider.get("proxy") if isinstance(provider, dict) else None
        if not isinstance(raw, str) or is_reference(raw):
            continue
        userinfo = raw.partition("://")[2].rpartition("@")[0]
        if ":" not in userinfo or "${" in userinfo.partition(":")[2]:
            continue  # no password, or the password is already a reference
        var = placeholder("KEYMUX_PROXY", str(name), used)
        provider["proxy"] = "${" + var + "}"
        value = resolve(raw, env)
        if value:
            pairs.append((var, value))
    return pairs


def dotenv_block(pairs: list[tuple[str, str]]) -> str:
    def quote(v: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9_./:@+=-]*", v):
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
    return "".join(f"{var}={quote(value)}\n" for var, value in pairs)
