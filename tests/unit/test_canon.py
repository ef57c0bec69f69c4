"""The canonical request: path normalisation, head limits, bounded inflation, strict JSON."""
import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from keypool.canon import (MAX_DEPTH, MAX_HEADERS, MAX_TARGET, Refused,
                           canonical_target, inflate, model_problem, parse_json, screen_head)
from keypool.providers import PRESETS


@pytest.mark.parametrize("raw, path, query", [
    ("/v1/chat/completions", "/v1/chat/completions", ""),
    ("/v1/chat/completions?a=1&b=%2F", "/v1/chat/completions", "?a=1&b=%2F"),
    ("/v1/./chat/completions", "/v1/chat/completions", ""),
    ("/x/../v1/chat/completions", "/v1/chat/completions", ""),
    ("//v1//chat/completions", "/v1/chat/completions", ""),
    ("/v1/%63hat/completions", "/v1/chat/completions", ""),
    ("/v1/chat/completions/", "/v1/chat/completions", ""),
    ("/v1/chat/completions/.", "/v1/chat/completions", ""),
    ("/v1/%2e/chat/completions", "/v1/chat/completions", ""),
    ("/v1/x/%2e%2e/chat/completions", "/v1/chat/completions", ""),
    ("/v1/models/ft:gpt-4o:org:1", "/v1/models/ft:gpt-4o:org:1", ""),
    ("/v1/models/gpt-4.1", "/v1/models/gpt-4.1", ""),
    ("/v1/models/...", "/v1/models/...", ""),
    ("/", "/", ""),
])
def test_canonical_paths(raw, path, query):
    t = canonical_target(raw)
    assert (t.path, t.query) == (path, query)


@pytest.mark.parametrize("raw, status", [
    ("/v1/../../../internal/admin", 400),
    ("/..", 400),
    ("/v1/%2e%2e/%2e%2e/admin", 400),
    ("/v1/chat%2fcompletions", 400),
    ("/v1/chat%2Fcompletions", 400),
    ("/v1/chat%5ccompletions", 400),
    ("/v1/chat\\completions", 400),
    ("/v1/chat/completions#frag", 400),
    ("/v1/chat/completions?x=1#frag", 400),
    ("/v1/chat/completions;x=1", 400),
    ("/v1/chat%00/completions", 400),
    ("/v1/chat%0a/completions", 400),
    ("/v1/chat/%zzcompletions", 400),
    ("/v1/chat/%+fcompletions", 400),
    ("/v1/chat/completions%", 400),
    ("/v1/%ff%fe", 400),
    ("/v1/chat completions", 400),
    ("/v1/ch\u00e4t", 400),
    ("v1/chat/completions", 400),
    ("*", 400),
    ("/v1/" + "a" * MAX_TARGET, 414),
])
def test_refused_paths(raw, status):
    with pytest.raises(Refused) as e:
        canonical_target(raw)
    assert e.value.status == status


def test_upstream_form_is_reencoded_and_stays_inside_base_url():
    t = canonical_target("/v1/files/a%20b%3Fc?limit=2")
    assert t.path == "/v1/files/a b?c"
    assert t.upstream == "/v1/files/a%20b%3Fc?limit=2"
    gemini = PRESETS["gemini"]
    assert gemini.upstream_path(t.upstream) == "/v1beta/openai/files/a%20b%3Fc?limit=2"
    for bad in ("/v1/../admin", "/v1//x", "/v1/./x", "/internal", "/v1/a%2Fb"):
        with pytest.raises(ValueError):
            gemini.upstream_path(bad)


def _fields(**headers):
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


def test_screen_head():
    ok = screen_head("POST", "/v1/chat/completions", "", _fields(content_length="10"), 100)
    assert ok is None
    assert screen_head("CONNECT", "evil:443", "evil:443", [], 100).status == 405
    assert screen_head("GET", "/v1/models", "evil.example", [], 100).status == 400
    assert screen_head("GET", "/v1/" + "a" * MAX_TARGET, "", [], 100).status == 414
    big = _fields(x_big="a" * MAX_HEADERS)
    assert screen_head("GET", "/v1/models", "", big, 100).status == 431
    r = screen_head("POST", "/v1/x", "", _fields(Content_Length="101"), 100)
    assert (r.status, r.code) == (413, "request_too_large")


LIMIT = 1024 * 1024


@pytest.mark.parametrize("coding, pack", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15)), ("br", brotli.compress),
    ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_inflate_round_trip_and_bomb(coding, pack):
    body = b'{"model":"gpt-4o"}'
    assert inflate(pack(body), coding.upper(), LIMIT) == body
    bomb = pack(b"\0" * (LIMIT * 4))
    with pytest.raises(Refused) as e:
        inflate(bomb, coding, LIMIT)
    assert e.value.status == 413


def test_inflate_refusals():
    assert inflate(b"plain", "", LIMIT) == b"plain"
    assert inflate(b"plain", "identity", LIMIT) == b"plain"
    with pytest.raises(Refused) as e:
        inflate(b"x", "compress", LIMIT)
    assert e.value.status == 415
    with pytest.raises(Refused) as e:
        inflate(b"x", "gzip, br", LIMIT)
    assert e.value.status == 415
    for coding in ("gzip", "deflate", "br", "zstd"):
        with pytest.raises(Refused) as e:
            inflate(b"not compressed at all", coding, LIMIT)
        assert e.value.status == 400, coding
    with pytest.raises(Refused):  # a truncated stream is not a body
        inflate(gzip.compress(b"x" * 1000)[:20], "gzip", LIMIT)


def test_parse_json_is_strict():
    assert parse_json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError, match="UTF-8"):
        parse_json(json.dumps({"model": "x"}).encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-8"):
        parse_json(json.dumps({"model": "x"}).encode("utf-32"))
    with pytest.raises(ValueError, match="UTF-8"):
        parse_json(b'{"model": "\xff"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json(b"{")
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(ValueError, match="nested"):
        parse_json(deep)
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    very = b'{"a":' * 5000 + b"1" + b"}" * 5000  # json.loads raises RecursionError here
    with pytest.raises(ValueError, match="nested"):
        parse_json(very)
    wide = json.dumps({"messages": [{"role": "user", "content": "x"}] * 500}).encode()
    assert len(parse_json(wide)["messages"]) == 500


def test_model_problems():
    assert model_problem("gpt-4o") is None
    assert model_problem(["gpt-4o"]) and model_problem(None) and model_problem(5)
    assert model_problem("gpt\x00-4o")
    assert model_problem(json.loads('"openai/\\ud800"'))
    assert model_problem("g" * 257)


def test_duplicate_keys_are_refused_where_they_could_hide_a_model():
    for body in (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}',
                 b'{"model": "gpt-4o-mini", "mod\\u0065l": "gpt-4o"}',
                 b'{"stream": false, "x": {"a": 1, "a": 2}, "stream": true}'):
        with pytest.raises(ValueError, match="repeats"):
            parse_json(body)
    nested = b'{"model": "m", "tools": [{"parameters": {"model": {"type": "string"}}}]}'
    assert parse_json(nested)["model"] == "m"
    assert parse_json('{"model": "m", "c": "\u00e9\\u00e9\\n"}'.encode())["c"] == "\u00e9\u00e9\n"
