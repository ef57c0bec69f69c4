"""Masking of key secrets an upstream echoes back (keypool.echo)."""
import random

import pytest

from keypool.echo import Masker
from keypool.redact import mask

A = "sk-proj-" + "a1B2c3D4" * 6
B = "sk-ant-api03-" + "Zz9Yy8Xx" * 8
C = "AIzaSyD-" + "q" * 31
KEYS = [A, B, C]


def test_masks_every_configured_secret_in_a_body():
    m = Masker(KEYS)
    body = f'{{"error": "bad key {A}", "also": "{C}{B}"}}'.encode()
    out = m.masked(body)
    for s in KEYS:
        assert s.encode() not in out and mask(s).encode() in out


def test_a_body_without_secrets_is_returned_as_it_is():
    m = Masker(KEYS)
    body = b'{"choices": [{"message": {"content": "sk-proj- is how keys start"}}]}' * 100
    assert m.masked(body) is body
    small = b"data: {}\n\n"
    assert m.masked(small) is small


def test_long_bodies_take_the_in_path_and_still_mask():
    m = Masker(KEYS)
    body = b"x" * 100_000 + B.encode() + b"y" * 10
    out = m.masked(body)
    assert B.encode() not in out and out.endswith(mask(B).encode() + b"y" * 10)


def test_longest_secret_wins_when_one_is_a_prefix_of_another():
    short, long = "sk-abcdefgh12", "sk-abcdefgh12345678"
    out = Masker([short, long]).masked(b"<" + long.encode() + b">")
    assert out == b"<" + mask(long).encode() + b">"


def test_short_secrets_are_not_searched_and_no_secrets_is_a_no_op():
    m = Masker(["abc", ""])
    assert not m and m.masked(b"abc") == b"abc"
    assert m.stream().feed(b"abc") == b"abc"


def ascii_mask(secret):
    return mask(secret).replace("…", "...").encode()


def test_header_fields_names_and_values_and_text():
    m = Masker(KEYS)
    fields = [(b"x-echo", A.encode()), (b"content-type", b"application/json"),
              (C.encode(), b"1")]
    out = m.masked_fields(fields)
    assert out == [(b"x-echo", ascii_mask(A)), (b"content-type", b"application/json"),
                   (ascii_mask(C), b"1")]
    clean = [(b"a", b"b")]
    assert m.masked_fields(clean) is clean
    assert m.masked_text(f"Bad {B}") == f"Bad {mask(B)}"


def feed_all(m, chunks):
    s = m.stream()
    return b"".join(s.feed(c) for c in chunks) + s.flush()


@pytest.mark.parametrize("secret", KEYS)
def test_a_secret_split_across_chunks_at_every_point_is_masked(secret):
    m = Masker(KEYS)
    data = b"data: {\"k\": \"" + secret.encode() + b"\"}\n\n"
    for cut in range(1, len(data)):
        out = feed_all(m, [data[:cut], data[cut:]])
        assert secret.encode() not in out
        assert out == m.masked(data)


def test_byte_by_byte_and_random_chunking_equal_whole_masking():
    rng = random.Random(7)
    m = Masker(KEYS)
    data = b"".join(rng.choice([b"sk-", b"sk-proj-a1", b"AIza", b" text ", s.encode()])
                    for s in KEYS * 30)
    want = m.masked(data)
    assert feed_all(m, [data[i:i + 1] for i in range(len(data))]) == want
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), 15))
        parts = [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]
        assert feed_all(m, parts) == want


def test_stream_holds_back_only_a_possible_secret_start():
    m = Masker(KEYS)
    s = m.stream()
    event = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    assert s.feed(event) == event  # an event that ends in a blank line goes out whole
    assert s.feed(b"key: sk-pr") == b"key: "  # "sk-pr" may start a secret
    assert s.feed(b"oj-nope\n\n") == b"sk-proj-nope\n\n"
    assert s.feed(b"x" * 10 + A.encode()[:-1]) == b"x" * 10
    assert len(A) - 1 <= m.hold
    assert s.flush() == A.encode()[:-1]  # the end of the stream: whatever was held
