"""canon.HeaderMap reads a request's headers exactly as mitmproxy's ``Headers`` does."""
from mitmproxy import http

from keypool.canon import HeaderMap
from keypool.exposure import _origin_and_host

FIELDS = ((b"Host", b"127.0.0.1:8080"), (b"AUTHORIZATION", b"Bearer sk-client-1"),
          (b"X-Api-Key", b""), (b"Accept", b"a/b"), (b"accept", b"c/d"),
          (b"X-Name", "é\u20ac".encode()), (b"x-bad", b"\xff\xfe"), (b"Origin", b"http://a"),
          (b"Host", b"evil.example"))
NAMES = ["host", "authorization", "Authorization", "x-api-key", "accept", "x-name", "x-bad",
         "origin", "content-type", "content-encoding", "x-keymux-provider", "anthropic-version"]


def test_every_lookup_gives_what_headers_get_gives():
    ours, theirs = HeaderMap(FIELDS), http.Headers(FIELDS)
    for name in NAMES:
        assert ours.get(name.lower()) == theirs.get(name), name
        assert (name.lower() in ours) == (name in theirs), name
    assert ours.get("content-type", "") == ""


def test_exposure_still_reads_the_raw_fields():
    assert _origin_and_host(HeaderMap(FIELDS)) == _origin_and_host(http.Headers(FIELDS))
    assert HeaderMap(FIELDS).fields is FIELDS
