"""A fast, stdlib-only mock LLM provider (OpenAI + Anthropic shapes) with per-key behaviours.

Used by the e2e tests (in-process :class:`MockUpstream`), by ``keymux demo`` and by the
throughput benchmarks, so the hot path is a hand-rolled HTTP/1.1 server on asyncio
streams: keep-alive, Content-Length bodies, chunked SSE (one HTTP chunk per event),
chunked request bodies, ``Connection: close``.

    python -m keypool.demo.mock_upstream --host 127.0.0.1 --port 9100 [--behaviors FILE.json] [-v|-q]

Control API on the same port: ``GET /_mock/stats``, ``GET /_mock/requests?limit=N``,
``POST /_mock/behavior`` (``{"key": secret-or-null, ...behaviour}``), ``POST /_mock/reset``.
The server is :mod:`.mock_server`; response bodies live in :mod:`.mock_responses`,
behaviours/records in :mod:`.mock_behaviour`, HTTP parsing in :mod:`.mock_http`.

Order of checks per request: unknown path -> 404; no key -> 401; the key's behaviour
(reset / scripted ``status`` / ``rpm`` window) -> bad JSON -> 400; ``/messages`` without
``anthropic-version`` -> 400; else success.  Errors on ``/messages*`` use Anthropic's
error shape, 529 always does, everything else OpenAI's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl as ssl_module
import sys
import threading
from typing import Callable

from .mock_behaviour import Behaviour, MockState, masked_record
from .mock_server import Server

__all__ = ["MockUpstream", "MockState", "Behaviour", "main"]


class MockUpstream:
    """The mock on its own daemon thread and event loop; every method is thread-safe."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_records: int = 10_000,
                 log: Callable[[dict], None] | None = None, ssl: "ssl_module.SSLContext | None" = None):
        self.host, self.port = host, port
        self.state = MockState(max_records)
        self._server = Server(self.state, host, port, log, ssl)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "MockUpstream":
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as e:  # noqa: BLE001 - handed to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self._server.close())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mock-upstream-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise failure[0]
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self._server.ssl else 'http'}://{self.host}:{self.port}"

    def set_behavior(self, key: str, **behavior: object) -> None:
        """Replace ``key``'s behaviour (see :class:`Behaviour` for the fields)."""
        self.state.set_behavior(key, **behavior)

    def set_default(self, **behavior: object) -> None:
        """Behaviour of every key that has none of its own."""
        self.state.set_behavior(None, **behavior)

    def reset(self) -> None:
        self.state.reset()
        self._server.catalog.reset()

    def set_models(self, ids: list[str] | None = None, *, key: str | None = None,
                   status: int = 200) -> None:
        """What ``GET .../models`` answers ``key`` (None: every key without its own): these
        ids (None: the default list), or the error ``status`` (e.g. 500)."""
        self._server.catalog.set(ids, key=key, status=status)

    def requests(self, key: str | None = None) -> list[dict]:
        """Recorded requests, oldest first: time, key, method, path, headers, header_list, body, status."""
        return self.state.requests(key)

    def count(self, key: str | None = None, status: int | None = None) -> int:
        """Requests seen (of ``key``, answered ``status``; 0 = connection reset)."""
        return self.state.count(key, status)

    def __enter__(self) -> "MockUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- CLI

def load_behaviors(state: MockState, path: str) -> None:
    """``{"sk-secret": {...behaviour}, "*": {...default}}`` from a JSON file."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object mapping keys to behaviours")
    for key, behaviour in spec.items():
        state.set_behavior(None if key == "*" else key, **behaviour)


def _log_line(rec: dict) -> None:
    r = masked_record(rec)
    print(f"{r['method']} {r['path']} -> {r['status']} key={r['key']}", file=sys.stderr, flush=True)


async def _serve(args: argparse.Namespace) -> None:
    state = MockState()
    if args.behaviors:
        load_behaviors(state, args.behaviors)
    server = Server(state, args.host, args.port, _log_line if args.verbose and not args.quiet else None)
    await server.start()
    print(f"mock upstream listening on http://{args.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m keypool.demo.mock_upstream", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--behaviors", metavar="FILE.json", help='JSON mapping key secrets (or "*") to behaviours')
    p.add_argument("-v", "--verbose", action="store_true", help="log every request (keys masked) to stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-request logging (the default)")
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as e:
        print(f"mock upstream: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
