#!/usr/bin/env python3
"""keymux's two senders in one process: CPU per small attempt and per relayed stream chunk.

The lean HTTP/1.1 client (``keymux_sender=lean``) and aiohttp (``keymux_sender=aiohttp``)
against the same raw loopback upstream (a fixed answer: its cost is the same for both),
interleaved round by round; CPU is the process's (time.process_time), so the difference is
the sender's. Streams go upstream -> sender -> relay -> a raw reader, as mitmproxy reads
the relay; per chunk, over the relay's loopback socket and in memory (``memrelay``, what
mitmproxy gets from its patched ``open_connection``).

    .venv/bin/python scripts/bench_sender.py [--rounds 5] [--attempts 2000] [--chunks 4000]

Loopback only, nothing started outside this process.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))

from keypool.echo import Masker  # noqa: E402
from keypool.mitm import memrelay  # noqa: E402
from keypool.mitm.relay import Relay  # noqa: E402
from mitmproxy.proxy import server as mitm_server  # noqa: E402
from keypool.mitm.upstream import Upstream  # noqa: E402
from keypool.providers import ProviderSpec  # noqa: E402

BODY = b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "hello"}}]}'
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
          % len(BODY) + BODY)
EVENT = b'data: {"choices": [{"delta": {"content": "token"}}]}\n\n'
FIELDS = ((b"content-type", b"application/json"), (b"authorization", b"Bearer x"))


async def upstream_server(chunks: int):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if b"/stream" in head.split(b"\r\n")[0]:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n")
                    for _ in range(chunks):  # one HTTP chunk per event, each its own write
                        writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                        await writer.drain()
                        await asyncio.sleep(0)
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def plan(port: int, path: str):
    p = ProviderSpec(name="bench", base_url=f"http://127.0.0.1:{port}/v1")
    return SimpleNamespace(provider=p, url=f"http://127.0.0.1:{port}{path}",
                           ticket=SimpleNamespace(body=b'{"model": "m"}'),
                           rewrite_fields=lambda fields: fields)


async def attempts(up: Upstream, port: int, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        reply = await up.send(plan(port, "/v1/chat/completions"), "POST", FIELDS)
        await reply.read()
    return (time.process_time() - t0) / n * 1e6


async def stream(up: Upstream, relay: Relay, port: int, chunks: int,
                 connect=asyncio.open_connection) -> float:
    masker = Masker(("sk-bench-secret-0000000000000",))  # as with keys configured
    t0 = time.process_time()
    reply = await up.send(plan(port, "/v1/stream"), "POST", FIELDS)
    token = relay.park(reply, 30.0, masker)
    reader, writer = await connect("127.0.0.1", relay.port)
    writer.write(f"GET /{token} HTTP/1.1\r\nhost: relay\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    while True:  # the relay's chunked answer, read as it comes (as mitmproxy does)
        line = await reader.readuntil(b"\r\n")
        size = int(line, 16)
        await reader.readexactly(size + 2)
        if not size:
            break
    writer.close()
    return (time.process_time() - t0) / chunks * 1e6


async def main(args) -> None:
    server, port = await upstream_server(args.chunks)
    relay = Relay()
    await relay.start()
    senders = {"lean": Upstream(), "aiohttp": Upstream()}
    senders["aiohttp"].lean = False
    got = {(s, k): [] for s in senders for k in ("attempt", "chunk", "memory")}
    memrelay.install()  # as the addon does: mitmproxy's open_connection, relay in memory
    in_memory = mitm_server.asyncio.open_connection
    for s, up in senders.items():  # warm up: connections, imports, caches
        await attempts(up, port, 50)
        await stream(up, relay, port, args.chunks)
    for r in range(args.rounds):
        for s, up in senders.items():
            got[(s, "attempt")].append(await attempts(up, port, args.attempts))
            got[(s, "chunk")].append(await stream(up, relay, port, args.chunks))
            got[(s, "memory")].append(await stream(up, relay, port, args.chunks, in_memory))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for up in senders.values():
        await up.close()
    await relay.close()
    server.close()
    print(f"\nmedians of {args.rounds} rounds; CPU of this process (sender + upstream + relay reader)")
    for k, unit in (("attempt", "us per small attempt (send + read)"),
                    ("chunk", "us per relayed stream chunk")):
        lean, aio = (statistics.median(got[(s, k)]) for s in ("lean", "aiohttp"))
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(got[("lean", k)], got[("aiohttp", k)]))
        print(f"{unit}: lean {lean:.1f}, aiohttp {aio:.1f}, lean/aiohttp {lean / aio:.3f} "
              f"(rounds: {rounds})")
    for s in senders:  # the relay's hop: over loopback TCP vs in memory (memrelay)
        tcp, mem = (statistics.median(got[(s, k)]) for k in ("chunk", "memory"))
        rounds = ", ".join(f"{m / t:.2f}" for t, m in zip(got[(s, "chunk")], got[(s, "memory")]))
        print(f"us per relayed stream chunk, {s}: loopback {tcp:.1f}, in memory {mem:.1f}, "
              f"memory/loopback {mem / tcp:.3f} (rounds: {rounds})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--attempts", type=int, default=2000)
    ap.add_argument("--chunks", type=int, default=4000)
    asyncio.run(main(ap.parse_args()))
