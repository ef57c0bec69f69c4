"""A tiny stand-in for the gateway's admin paths, on a loopback port in a thread."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubGateway:
    """Answers /_keymux/stats, /_keymux/health and POST /_keymux/keys/<name>/reset.

    ``stats`` and ``reset_status`` can be changed by a test; ``seen`` records (method, path,
    authorization header) of every request.
    """

    def __init__(self, stats: dict | None = None):
        self.stats = stats or {"uptime_s": 1.0, "totals": {}, "keys": []}
        self.health = {"status": "ok", "last_reload_error": None}
        self.reset_status = 200
        self.reset_body: dict | None = None
        self.seen: list[tuple[str, str, str | None]] = []
        # POST /_keymux/keys/<name>/test: what the gateway says about the key
        self.test_status = 200
        self.test_body: dict = {"ok": True, "status": 200, "outcome": "ok", "latency_ms": 42,
                                "state": "ok", "error": None}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.seen.append(("GET", self.path, self.headers.get("authorization")))
                if self.path == "/_keymux/stats":
                    self._send(200, stub.stats)
                elif self.path == "/_keymux/health":
                    self._send(200, stub.health)
                else:
                    self._send(404, {"error": {"code": "unknown_path"}})

            def do_POST(self):
                stub.seen.append(("POST", self.path, self.headers.get("authorization")))
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                if self.path.startswith("/_keymux/keys/") and self.path.endswith("/reset"):
                    body = stub.reset_body or ({"ok": True} if stub.reset_status == 200 else
                                               {"error": {"code": "unknown_key", "message": "x"}})
                    self._send(stub.reset_status, body)
                elif self.path.startswith("/_keymux/keys/") and self.path.endswith("/test"):
                    self._send(stub.test_status, stub.test_body)
                else:
                    self._send(404, {"error": {"code": "unknown_path"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "StubGateway":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def entry(usd: float | None, requests: int = 1, unknown: int = 0, tokens=(100, 50)) -> dict:
    """One figure of the stats' ``spend`` section (``usd`` None: every request unknown)."""
    return {"usd": usd or 0.0, "requests": requests,
            "unknown": requests if usd is None else unknown, "tokens_in": tokens[0],
            "tokens_out": tokens[1], "cache_read": 0, "cache_write": 0}


def spend_section(today: dict, month: dict, day: str = "2026-11-30") -> dict:
    """``/_keymux/stats`` ``spend`` from ``{"total": e, "by_key": {...}, "by_client": {...}}``
    blocks (by_provider and by_model left empty)."""
    block = lambda b: {"total": b.get("total") or entry(0.0, 0), "by_key": b.get("by_key", {}),  # noqa: E731
                       "by_client": b.get("by_client", {}), "by_provider": {}, "by_model": {}}
    return {"timezone": "UTC", "daily_reset": "00:00", "day": day, "day_ends_at": 0.0,
            "month": day[:7], "month_ends_at": 0.0, "today": block(today),
            "this_month": block(month)}
