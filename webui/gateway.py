"""The UI's only conversation with the gateway: live stats, readiness, and the reset action.

Never with an upstream provider. The admin token (``KEYMUX_ADMIN_TOKEN``, else the
``KEYMUX_SIDECAR_TOKEN`` that ``keymux run`` generates for its two children) goes as a bearer
token; no error raised here quotes a response body or the token. The sidecar token is only
for the gateway: it never logs anyone into the UI.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

from .notes import N_, Note

TIMEOUT_S = 2.0
TEST_TIMEOUT_S = 25.0  # a key test waits for the upstream (the gateway gives up after 20 s)


class GatewayUnavailable(Exception):
    """No usable answer; the note is short and safe to show."""

    def __init__(self, note: Note):
        super().__init__(str(note))
        self.note = note


@dataclass(frozen=True)
class ResetResult:
    status: int
    ok: bool
    reason: str  # "reset" | "unknown_key" | "unsupported" | "refused" | "error"


class GatewayClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT_S):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    @property
    def token(self) -> str | None:
        if self._token is not None:
            return self._token
        return os.environ.get("KEYMUX_ADMIN_TOKEN") or os.environ.get("KEYMUX_SIDECAR_TOKEN")

    def _call(self, method: str, path: str, timeout: float | None = None) -> tuple[int, dict]:
        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=b"" if method == "POST" else None)
        try:
            with _opener.open(req, timeout=timeout or self.timeout) as r:
                return r.status, _json(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, _json(e.read())
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e.__class__.__name__
            raise GatewayUnavailable(N_("cannot reach the gateway at %(url)s (%(reason)s)",
                                        url=self.url, reason=str(reason))) from None

    def stats(self) -> dict:
        status, body = self._call("GET", "/_keymux/stats")
        if status in (401, 403):
            raise GatewayUnavailable(N_("the gateway refused the admin token (set the same"
                                        " KEYMUX_ADMIN_TOKEN for the UI and the gateway)"))
        if status != 200 or not isinstance(body.get("keys"), list):
            raise GatewayUnavailable(N_("the gateway answered %(status)s to %(path)s",
                                        status=status, path="/_keymux/stats"))
        return body

    def health(self) -> dict:
        status, body = self._call("GET", "/_keymux/health")
        if status not in (200, 503):
            raise GatewayUnavailable(N_("the gateway answered %(status)s to %(path)s",
                                        status=status, path="/_keymux/health"))
        return body

    def reset(self, name: str) -> ResetResult:
        status, body = self._call("POST", f"/_keymux/keys/{quote(name, safe=":")}/reset")
        code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
        if status == 200:
            return ResetResult(status, True, "reset")
        if status == 404 and code == "unknown_path":  # a gateway without the endpoint
            return ResetResult(status, False, "unsupported")
        if status == 404:
            return ResetResult(status, False, "unknown_key")
        if status in (401, 403):
            return ResetResult(status, False, "refused")
        return ResetResult(status, False, "error")

    def test_key(self, name: str) -> "KeyTestResult":
        """POST /_keymux/keys/NAME/test: the gateway makes one cheap upstream call with the
        key (the UI never talks to a provider itself) and updates the key's state."""
        status, body = self._call("POST", f"/_keymux/keys/{quote(name, safe=':')}/test",
                                  timeout=TEST_TIMEOUT_S)
        err = body.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        if status == 200 and isinstance(body.get("ok"), bool):
            return KeyTestResult(status, "tested", body)
        if status == 404 and code == "unknown_path":  # a gateway without the endpoint
            return KeyTestResult(status, "unsupported", {})
        if status == 404:
            return KeyTestResult(status, "unknown_key", {})
        if status in (401, 403):
            return KeyTestResult(status, "refused", {})
        return KeyTestResult(status, "error", {})


@dataclass(frozen=True)
class KeyTestResult:
    status: int        # of the gateway's answer
    reason: str        # "tested" | "unknown_key" | "unsupported" | "refused" | "error"
    summary: dict      # when tested: ok, status, outcome, latency_ms, state, error (masked)


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# The gateway is on loopback or named by the operator: never through an HTTP(S)_PROXY.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
