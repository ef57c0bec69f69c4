"""Tools of the leak scan: the forms a secret can take, the scan, and recorders of what
a client or a browser was sent (status, headers and body bytes as they came off the wire)."""
from __future__ import annotations

import base64
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import httpx2 as httpx  # the SDKs here are built on httpx2

_URLSAFE = bytes.maketrans(b"+/", b"-_")


def forms(secret: str) -> dict[str, bytes]:
    """Every form to look for: raw, and base64 (standard and urlsafe) of the secret, of
    ``Bearer <secret>`` and of the basic-auth forms ``:<secret>`` and ``<secret>:``, at each
    of the three byte alignments (so a secret inside a longer encoded text is found too)."""
    s = secret.encode()
    out = {"raw": s}
    for label, plain in (("secret", s), ("Bearer secret", b"Bearer " + s),
                         (":secret", b":" + s), ("secret:", s + b":")):
        for shift in range(3):
            enc = base64.b64encode(b"\0" * shift + plain)
            lo = 4 if shift else 0                                  # the group holding the shift
            hi = len(enc) - 4 if (shift + len(plain)) % 3 else len(enc)  # a partial last group
            core = enc[lo:hi]
            out[f"base64({label})@{shift}"] = core
            out[f"urlsafe-base64({label})@{shift}"] = core.translate(_URLSAFE)
            out[f"base64({label})@{shift} unpadded"] = core.rstrip(b"=")
    return out


def scan(artifacts: list[tuple[str, bytes]], secrets: dict[str, str]) -> list[str]:
    """One line per hit: which secret, in which form, where (artifact and byte offset)."""
    hits = []
    needles = [(name, form, needle) for name, secret in secrets.items()
               for form, needle in forms(secret).items()]
    for where, data in artifacts:
        for name, form, needle in needles:
            at = data.find(needle)
            if at >= 0:
                context = bytes(data[max(0, at - 60):at + len(needle) + 20])
                hits.append(f"{name} as {form} in {where} ({data.count(needle)}x, first at byte {at}): "
                            f"...{context!r}...")
    return hits


def files_under(root: Path, label: str) -> list[tuple[str, bytes]]:
    return [(f"{label}/{p.relative_to(root)}", p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()]


# ---------------------------------------------------------------- what clients were sent

class _Tee(httpx.SyncByteStream):
    def __init__(self, inner, sink: bytearray):
        self.inner, self.sink = inner, sink

    def __iter__(self):
        for chunk in self.inner:
            self.sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class Recording(httpx.BaseTransport):
    """An httpx transport for the SDKs that keeps every response's raw head and body."""

    def __init__(self, seen: list[tuple[str, bytes]]):
        self.inner, self.seen = httpx.HTTPTransport(), seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        sink = bytearray(head(r.status_code, r.headers.raw))
        self.seen.append((f"client response #{len(self.seen)} to {request.method} {request.url.path}", sink))
        return httpx.Response(r.status_code, headers=r.headers, stream=_Tee(r.stream, sink),
                              extensions=r.extensions)

    def close(self) -> None:
        self.inner.close()


def head(status: int, pairs) -> bytes:
    lines = [f"{status}".encode()] + [bytes(k) + b": " + bytes(v) for k, v in pairs]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Browser:
    """urllib with a cookie jar: a signed-in UI session; keeps every page it was sent."""

    def __init__(self, base: str, seen: list[tuple[str, bytes]]):
        self.base, self.seen = base, seen
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def fetch(self, path: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as r:
                status, pairs, raw = r.status, r.getheaders(), r.read()
        except urllib.error.HTTPError as e:
            status, pairs, raw = e.code, e.headers.items(), e.read()
        self.seen.append((f"UI {'POST' if data is not None else 'GET'} {path}",
                          head(status, [(k.encode(), v.encode()) for k, v in pairs]) + raw))
        found = re.search(rb'name="csrf[-_]token" (?:value|content)="([^"]+)"', raw)
        if found:
            self.csrf = found.group(1).decode()
        return status, raw

    def login(self, secret: str) -> None:
        self.fetch("/login")
        status, raw = self.fetch("/login", {"secret": secret, "csrf_token": self.csrf, "next": "/"})
        assert status == 200, raw[:300]  # a wrong secret is a 401
