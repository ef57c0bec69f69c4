import json

import pytest

from keypool import usage
from keypool.usage import SseTap, usage_of_body


def sse(*objs):
    return [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]


def chunk(text, **extra):
    return {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}], **extra}


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def flat(result):
    """What mitmproxy sends for one call: bytes, or a list of chunks (never an empty one)."""
    if isinstance(result, bytes):
        assert result, "an empty chunk would terminate a chunked response"
        return result
    assert all(result), "an empty chunk would terminate a chunked response"
    return b"".join(result)


def run(tap, chunks):
    out = [flat(tap(c)) for c in chunks]
    out.append(flat(tap(b"")))
    return out


def test_passthrough_forwards_every_chunk_unchanged_and_reads_usage():
    chunks = sse(chunk("a"), chunk("b"), {"choices": [], "usage": USAGE})
    tap = SseTap()
    out = run(tap, chunks)
    assert out[:-1] == chunks and out[-1] == b""
    assert (tap.usage.input, tap.usage.output) == (11, 7)


def test_passthrough_does_not_wait_for_event_boundaries():
    tap = SseTap()
    assert tap(b"data: {\"cho") == b"data: {\"cho"  # forwarded at once, parsed later
    tap(b"ices\": [], \"usage\": {\"prompt_tokens\": 2, \"completion_tokens\": 3}}\n\n")
    assert tap.usage.output == 3


def test_strip_removes_injected_usage_chunk_and_null_usage():
    chunks = sse(chunk("a", usage=None), chunk("b", usage=None), {"choices": [], "usage": USAGE})
    tap = SseTap(strip_injected=True)
    body = b"".join(run(tap, chunks))
    assert b"usage" not in body
    assert body.count(b"data: ") == 3 and body.endswith(b"data: [DONE]\n\n")
    assert tap.usage.output == 7
    for line in body.split(b"\n\n")[:2]:
        json.loads(line[6:])  # still valid JSON after the edit


def test_strip_keeps_split_events_whole():
    tap = SseTap(strip_injected=True)
    event = sse(chunk("hello", usage=None))[0]
    assert tap(event[:10]) == []
    assert flat(tap(event[10:])) == event.replace(b', "usage": null', b"")


def test_anthropic_usage_from_message_start_and_delta():
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n',
    ]
    tap = SseTap()
    run(tap, events)
    assert (tap.usage.input, tap.usage.output) == (25, 15)


def test_responses_api_usage_from_completed_event():
    tap = SseTap()
    run(tap, [b'event: response.completed\ndata: {"type":"response.completed","response":'
              b'{"usage":{"input_tokens":4,"output_tokens":9}}}\n\n'])
    assert (tap.usage.input, tap.usage.output) == (4, 9)


def test_crlf_events():
    tap = SseTap(strip_injected=True)
    out = tap(b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n')
    assert out == [] and tap.usage.output == 2


def test_body_usage_shapes():
    assert usage_of_body(json.dumps({"usage": USAGE}).encode()).input == 11
    u = usage_of_body(b'{"usage":{"input_tokens":3,"output_tokens":4}}')
    assert (u.input, u.output) == (3, 4)
    assert not usage_of_body(b"not json").seen
    assert not usage_of_body(b'{"x":1}').seen


# -- hostile upstream answers: never raise, never grow without bound ------------------

DEEP = b'{"usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_deeply_nested_body_around_usage_counts_as_no_usage():
    u = usage_of_body(DEEP)
    assert not u.seen and (u.input, u.output) == (0, 0)
    assert not usage_of_body(b'{"usage": {"prompt_tokens": ' + b"[" * 50_000 + b"}").seen


def test_garbage_and_absurd_counts_are_not_usage():
    for body in (b'"usage"\xff\xfe', b'{"usage": 1e999999}', b'{"usage": "x"}',
                 b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}"):
        u = usage_of_body(body)
        assert (u.input, u.output) == (0, 0)
    u = usage_of_body(b'{"usage": {"prompt_tokens": 100000000000000000000, "completion_tokens": 3}}')
    assert (u.input, u.output) == (0, 3)


@pytest.mark.parametrize("strip", [False, True])
def test_deeply_nested_event_passes_through_and_the_stream_goes_on(strip):
    tap = SseTap(strip)
    bad = b"data: " + DEEP + b"\n\n"
    chunks = [bad] + sse(chunk("a"), {"choices": [], "usage": USAGE})
    out = b"".join(flat(tap(c)) for c in chunks) + flat(tap(b""))
    assert bad in out and b'"a"' in out and out.endswith(b"data: [DONE]\n\n")
    assert (tap.usage.input, tap.usage.output) == (11, 7)


def test_an_event_that_never_ends_stops_the_parsing_not_the_stream(monkeypatch):
    monkeypatch.setattr(usage, "MAX_EVENT", 1000)
    for strip in (False, True):
        tap = SseTap(strip)
        head = sse(chunk("a"))[0]
        sent = [flat(tap(head))]
        sent += [flat(tap(b"x" * 300)) for _ in range(5)]  # no blank line, ever
        assert tap.blind and len(tap._tail) == 0
        sent += [flat(tap(b"tail\n\n")), flat(tap(b""))]
        assert b"".join(sent) == head + b"x" * 1500 + b"tail\n\n"


def test_a_long_event_in_one_byte_chunks_costs_linear_time():
    tap = SseTap()
    event = b"data: " + json.dumps({"choices": [], "usage": USAGE, "pad": "p" * 200_000}).encode()
    for i in range(0, len(event), 7):
        tap(event[i:i + 7])
    tap(b"\n")
    tap(b"\n")
    assert (tap.usage.input, tap.usage.output) == (11, 7)


@pytest.mark.parametrize("strip", [False, True])
def test_the_tap_never_raises_and_passes_bytes_on_after_a_bug(monkeypatch, strip):
    tap = SseTap(strip)
    first = sse(chunk("a"))[0]
    assert flat(tap(first)) == first
    tap(b"data: {\"choi")  # held back when stripping

    def boom(event):
        raise RuntimeError("bug")
    monkeypatch.setattr(tap, "_event", boom)
    out = flat(tap(b'ces": []}\n\n'))
    assert out == (b'data: {"choices": []}\n\n' if strip else b'ces": []}\n\n')
    assert tap.blind and flat(tap(b"more")) == b"more" and flat(tap(b"")) == b""


def compact(*objs):
    return [b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n" for o in objs] \
        + [b"data: [DONE]\n\n"]


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("form", [compact, sse])
def test_any_chunking_gives_the_same_bytes_and_usage(strip, form):
    """The fast path (whole events, no usage in them) and the event-by-event path agree:
    one event per chunk, all in one chunk, random splits, byte by byte, CRLF events."""
    import random
    events = form(chunk("a", usage=None), chunk("b", usage=None),
                  {"choices": [], "usage": USAGE})
    for crlf in (False, True):
        stream = b"".join(events)
        if crlf:
            stream = stream.replace(b"\n", b"\r\n")
        rng = random.Random(12)
        cuts = sorted(rng.sample(range(1, len(stream)), 9))
        chunkings = [
            [e.replace(b"\n", b"\r\n") if crlf else e for e in events],
            [stream],
            [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])],
            [stream[i:i + 1] for i in range(len(stream))],
        ]
        results = set()
        for chunks in chunkings:
            tap = SseTap(strip)
            results.add((b"".join(run(tap, chunks)), tap.usage.input, tap.usage.output))
        assert len(results) == 1, (strip, form.__name__, crlf)
        body, inp, out = results.pop()
        assert (inp, out) == (11, 7)
        if strip:
            assert b"usage" not in body and body.count(b"data: ") == 3
        else:
            assert body == stream


def test_a_chunk_of_whole_events_with_the_usage_event_in_it_is_read():
    tap = SseTap(strip_injected=True)
    events = compact(chunk("a", usage=None), {"choices": [], "usage": USAGE})
    out = flat(tap(b"".join(events)))
    assert out == events[0].replace(b',"usage":null', b"") + events[-1]
    assert tap.usage.output == 7
