#!/usr/bin/env python3
"""The streaming benchmark's upstream: as cheap as an asyncio server can be, so that what
bench_streams measures is the proxy, not the harness.

It answers every POST with the chat completion keypool.demo.mock_responses builds (the
same bytes as the demo mock: a stream of ``--chunks`` content events ``--gap-ms`` apart
when the body asks ``"stream": true``, with the usage event when it asks
``include_usage``), any GET with the model list. Everything is built once at start, as
ready HTTP chunks; a connection is a bare ``asyncio.Protocol`` (no tasks, no streams, no
JSON parse), and the streams due at the same millisecond are sent from one timer: one
``call_at`` per tick batch, not a sleeping coroutine per stream; on uvloop when installed.

    python scripts/benchmock.py --port PORT [--chunks 20] [--gap-ms 50]

Not the demo/test mock (no keys, behaviours, records or control API): that one is
keypool.demo.mock_upstream.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal

from benchlib import loop_factory
from keypool.demo import mock_http as H
from keypool.demo import mock_responses as R

TICK_S = 0.001  # streams due within the same millisecond share one timer
END = b"0\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.I)


def payloads(chunks: int) -> dict:
    """The answers, as bytes ready to write: the stream's events as HTTP chunks, with and
    without the usage event; the JSON completion; the model list."""
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    rid = {"x-request-id": "req_bench"}
    stream = {}
    for usage in (False, True):
        body = dict(ask, stream=True, **({"stream_options": {"include_usage": True}} if usage else {}))
        events = [b"%x\r\n%s\r\n" % (len(ev), ev) for ev in R.chat_completion_stream(body, chunks)]
        if usage:  # the usage event right behind the stop event, as OpenAI sends it: a
            events[-3:-1] = [events[-3] + events[-2]]  # stream as long with usage as without
        stream[usage] = events
    return {"stream": stream,
            "sse_head": H.head(200, "text/event-stream; charset=utf-8", rid, False, None),
            "json": H.json_response(200, R.dumps(R.chat_completion(ask, chunks)), rid, False),
            "models": H.json_response(200, R.dumps(R.models(False)), rid, False)}


class Ticker:
    """Streams by the tick their next event is due; one timer per tick that has any."""

    def __init__(self, gap_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.gap = max(1, round(gap_s / TICK_S))
        self.due: dict[int, list] = {}

    def add(self, tick: int, item: list) -> None:
        batch = self.due.get(tick)
        if batch is None:
            batch = self.due[tick] = []
            self.loop.call_at(tick * TICK_S, self.fire, tick)
        batch.append(item)

    def start(self, conn: "Conn", events: list[bytes]) -> None:
        self.add(math.ceil(self.loop.time() / TICK_S) + self.gap, [conn, events, 1])

    def fire(self, tick: int) -> None:
        for item in self.due.pop(tick):
            conn, events, i = item
            if conn.transport is None:
                continue
            if i + 1 == len(events):
                conn.transport.write(events[i] + END)
                conn.done()
            else:
                conn.transport.write(events[i])
                item[2] = i + 1
                self.add(tick + self.gap, item)


class Conn(asyncio.Protocol):
    def __init__(self, answers: dict, ticker: Ticker) -> None:
        self.answers, self.ticker = answers, ticker
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a stream is being sent: a pipelined request waits for it

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, start = self.buf[:end + 2], end + 4
            if _CHUNKED.search(head):
                stop = self.buf.find(b"\r\n0\r\n\r\n", start - 2)
                if stop < 0:
                    return
                stop += 7
            else:
                m = _LENGTH.search(head)
                stop = start + (int(m.group(1)) if m else 0)
                if len(self.buf) < stop:
                    return
            body, self.buf = self.buf[start:stop], self.buf[stop:]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        a = self.answers
        if head.startswith(b"GET"):
            self.transport.write(a["models"])
        elif b'"stream":true' in body.replace(b" ", b""):
            events = a["stream"][b"include_usage" in body]
            self.transport.write(a["sse_head"] + events[0])
            self.busy = True
            self.ticker.start(self, events)
        else:
            self.transport.write(a["json"])

    def done(self) -> None:
        self.busy = False
        if self.buf:
            self.data_received(b"")


async def serve(host: str, port: int, chunks: int, gap_s: float) -> None:
    answers, ticker = payloads(chunks), Ticker(gap_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(answers, ticker), host, port, backlog=1024)
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=50)
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port, args.chunks, args.gap_ms / 1000),
                loop_factory=loop_factory())


if __name__ == "__main__":
    main()
