"""keypool.shared_lane: the RESP2 parser on replies split and merged anyhow (no Redis), and the
Protocol lane against a real redis-server: AUTH, SELECT, a unix socket, NOSCRIPT, a Redis
killed mid-call, order under many concurrent calls, back-pressure."""
import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

import pytest
from redis.exceptions import (AuthenticationError, ConnectionError, DataError, NoScriptError,
                              ResponseError)

from keypool import shared_lane
from keypool.shared_lane import _pack_args, _Wire, make_lane, pack, parse

from tests.redisserver import RedisServer, needs_redis

REPLIES = [  # (wire bytes, parsed)
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"+OK\r\n", b"OK"),
    (b"*3\r\n:1\r\n$2\r\nab\r\n*2\r\n:2\r\n$-1\r\n", [1, b"ab", [2, None]]),
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*2\r\n:1\r\n:1500\r\n", [1, 1500]),
]
ERROR = b"-ERR wrong thing\r\n"


class FakeTransport:
    def __init__(self):
        self.written, self.closed = [], False

    def write(self, b):
        self.written.append(b)

    def set_write_buffer_limits(self, high):
        pass

    def close(self):
        self.closed = True


def wire_with(n):
    """A _Wire on a fake transport with n calls waiting."""
    lost = []
    w = _Wire(lost.append)
    w.connection_made(FakeTransport())
    return w, [w.send(b"x") for _ in range(n)], lost


def settled(futs):
    return [f.exception() if f.exception() else f.result() for f in futs if f.done()]


def test_the_parser_reads_each_kind_and_says_when_a_reply_is_not_all_there():
    for raw, want in REPLIES:
        assert parse(raw) == (want, len(raw))
        for cut in range(1, len(raw)):
            assert parse(raw[:cut]) == (None, -1), (raw, cut)
    err, end = parse(ERROR)
    assert isinstance(err, ResponseError) and str(err) == "ERR wrong thing" and end == len(ERROR)
    assert isinstance(parse(b"-NOSCRIPT No matching script\r\n")[0], NoScriptError)


def test_replies_split_at_every_byte_and_merged_reach_their_calls_in_order():
    stream = b"".join(raw for raw, _ in REPLIES) + ERROR
    want = [w for _, w in REPLIES]

    async def main():
        for cut in range(len(stream) + 1):  # two pieces, cut anywhere (0: all in one)
            w, futs, _ = wire_with(len(REPLIES) + 1)
            for piece in (stream[:cut], stream[cut:]):
                if piece:
                    w.data_received(piece)
            got = settled(futs)
            assert got[:-1] == want and isinstance(got[-1], ResponseError), cut
        w, futs, _ = wire_with(len(REPLIES) + 1)
        for i in range(len(stream)):  # one byte at a time
            w.data_received(stream[i:i + 1])
        assert settled(futs)[:-1] == want and w.buf == b""
    asyncio.run(main())


def test_a_garbled_reply_or_a_lost_connection_fails_every_waiting_call():
    async def main():
        w, futs, lost = wire_with(3)
        w.data_received(b":1\r\n!what\r\n")
        assert futs[0].result() == 1 and lost == [w] and w.transport.closed
        assert all(isinstance(f.exception(), ConnectionError) for f in futs[1:])
        w, futs, lost = wire_with(2)
        w.connection_lost(OSError("reset"))
        assert all(isinstance(f.exception(), ConnectionError) for f in futs) and lost == [w]
    asyncio.run(main())


def test_pack_is_what_the_parser_reads_back_and_the_call_packs_the_same():
    raw = pack("EVALSHA", b"ab", 2, "k:1", 0.25, "é")
    assert parse(raw) == ([b"EVALSHA", b"ab", b"2", b"k:1", b"0.25", "é".encode()], len(raw))
    for args in ((2, "k:1", "k:2", 100, 0.0012, "tok:1"), (1, "é", 3), (b"\x00", 1)):
        assert b"*%d\r\n" % len(args) + _pack_args(args) == pack(*args)
    for bad in (None, True):
        with pytest.raises(DataError):
            _pack_args((1, bad))


def test_every_url_form_gets_the_protocol_lane_and_a_credential_provider_redis_pys():
    import redis.asyncio as aioredis
    from redis.credentials import UsernamePasswordCredentialProvider
    from keypool.shared_lane_pooled import PooledLane
    for url in ("redis://h:1/0", "rediss://u:p@h:1/2?ssl_cert_reqs=none",
                "unix:///tmp/r.sock?db=2", "redis://h:1/0?protocol=3"):
        assert type(make_lane(aioredis.ConnectionPool.from_url(url), "x")) is shared_lane.Lane
    pool = aioredis.ConnectionPool.from_url(
        "redis://h:1/0", credential_provider=UsernamePasswordCredentialProvider("u", "p"))
    assert type(make_lane(pool, "x")) is PooledLane


# -- against a real redis-server ---------------------------------------------------------

ECHO = "return ARGV[1]"
SLOW = ("local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] repeat t = "
        "redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1]) return 1")


def lane(url, script=ECHO):
    import redis.asyncio as aioredis
    lane = make_lane(aioredis.ConnectionPool.from_url(url, socket_connect_timeout=1.0), script)
    assert type(lane) is shared_lane.Lane
    return lane


@needs_redis
def test_auth_with_a_password_and_with_a_username_and_the_wrong_one_refused():
    with RedisServer(password="s3cret") as server:
        async def main():
            for url in (server.url, server.url.replace("//:", "//default:")):
                a = lane(url)
                assert await a.call(0, "hi") == b"hi"
                await a.close()
            bad = lane(server.url.replace("s3cret", "nope"))
            with pytest.raises(AuthenticationError):
                await bad.call(0, "hi")
            await bad.close()
        asyncio.run(main())


@needs_redis
def test_the_db_in_the_url_is_selected_and_a_unix_socket_works():
    import redis
    path = os.path.join(tempfile.mkdtemp(prefix="keymux-redis-"), "r.sock")
    with RedisServer(args=("--unixsocket", path, "--unixsocketperm", "700")) as server:
        async def main():
            a = lane(server.url.replace("/0", "/3"), "return redis.call('INCR', KEYS[1])")
            assert await a.call(1, "n") == 1
            u = lane(f"unix://{path}?db=3", "return redis.call('INCR', KEYS[1])")
            assert await u.call(1, "n") == 2
            for x in (a, u):
                await x.close()
        asyncio.run(main())
        r = redis.Redis.from_url(server.url.replace("/0", "/3"))
        assert r.get("n") == b"2" and redis.Redis.from_url(server.url).get("n") is None


@needs_redis
def test_noscript_after_script_flush_loads_it_again():
    import redis
    with RedisServer() as server:
        async def main():
            a = lane(server.url)
            assert await a.call(0, "one") == b"one"
            redis.Redis.from_url(server.url).script_flush()
            got = await asyncio.gather(*[a.call(0, str(i)) for i in range(50)])
            assert got == [str(i).encode() for i in range(50)]
            await a.close()
        asyncio.run(main())


@needs_redis
def test_redis_killed_mid_call_fails_the_calls_at_once_and_the_lane_comes_back():
    with RedisServer() as server:
        async def main():
            a = lane(server.url, SLOW)
            assert await a.call(0, 0) == 1
            calls = [asyncio.ensure_future(a.call(0, 3_000_000)) for _ in range(5)]
            await asyncio.sleep(0.2)  # the first is running in Redis, the rest queued
            t0 = time.monotonic()
            os.kill(server.proc.pid, signal.SIGKILL)
            got = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(e, ConnectionError) for e in got), got
            assert time.monotonic() - t0 < 2.0  # at once, not after the script's 3 s
            server.proc.wait(5)
            with pytest.raises(OSError):  # refused while it is down: fails fast too
                await a.call(0, 0)
            server.start()
            assert await a.call(0, 0) == 1  # reconnected and the script loaded again
            await a.close()
        asyncio.run(main())


@needs_redis
def test_many_concurrent_calls_keep_their_order_and_big_ones_wait_for_the_socket(monkeypatch):
    paused = []
    pause = _Wire.pause_writing
    monkeypatch.setattr(_Wire, "pause_writing", lambda w: (paused.append(1), pause(w)))
    with RedisServer() as server:
        async def main():
            a = lane(server.url)
            got = await asyncio.gather(*[a.call(0, f"v{i}") for i in range(3000)])
            assert got == [f"v{i}".encode() for i in range(3000)]
            big = [os.urandom(8) * (100_000 + i) for i in range(16)]  # ~13 MB at once
            os.kill(server.proc.pid, signal.SIGSTOP)  # Redis reads nothing: the socket fills
            try:
                calls = [asyncio.ensure_future(a.call(0, b)) for b in big]
                deadline = time.monotonic() + 5
                while not paused and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert paused and not any(c.done() for c in calls)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert await asyncio.gather(*calls) == big  # drained, in order
            await a.close()
        asyncio.run(main())


@needs_redis
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test's cert")
def test_rediss_verifies_as_redis_py_would_and_takes_its_ssl_options(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", tmp_path / "k.pem", "-out", tmp_path / "c.pem", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = RedisServer().port  # a free port for TLS beside the plain one the fixture probes
    with RedisServer(password="pw", args=(
            "--tls-port", str(tls), "--tls-cert-file", str(tmp_path / "c.pem"),
            "--tls-key-file", str(tmp_path / "k.pem"), "--tls-auth-clients", "no")):
        url = f"rediss://:pw@127.0.0.1:{tls}/1"

        async def main():
            for query in (f"?ssl_ca_certs={tmp_path / 'c.pem'}", "?ssl_cert_reqs=none"):
                a = lane(url + query)
                assert await a.call(0, "over tls") == b"over tls"
                await a.close()
            a = lane(url)  # the default context: the test's own CA is not trusted
            with pytest.raises(ssl.SSLCertVerificationError):
                await a.call(0, "x")
            await a.close()
        asyncio.run(main())


def test_closing_while_connecting_fails_the_waiting_calls_with_connectionerror():
    async def main():
        mute = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never answers
        a = lane(f"redis://127.0.0.1:{mute.sockets[0].getsockname()[1]}/0")
        call = asyncio.ensure_future(a.call(0, "x"))
        await asyncio.sleep(0.05)
        await a.close()
        with pytest.raises(ConnectionError):
            await call
        mute.close()
    asyncio.run(main())
