"""The reserve calls' lane on redis-py's own connection (pipelined, answers handed back in
order by a reader task): kept for what keypool.shared_lane's Protocol lane does not speak
(a credential provider, a connection class of someone else's: none of them from a url)."""
from __future__ import annotations

import asyncio
from collections import deque

from redis.exceptions import ConnectionError, RedisError, ResponseError


class PooledLane:
    """One connection that pipelines the hot path's calls: each is written at once, in
    order, and a reader task hands the answers back in the same order (Redis answers in
    order). Half the client cost of the pooled client: no connection checked out per call.
    Any failure fails every call waiting and closes it; the next call reopens it."""

    def __init__(self, pool, script: str):
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._make = lambda: pool.connection_class(**kwargs)
        self.script = script
        self.sha = ""
        self.conn = None
        self._waiting: deque[asyncio.Future] = deque()
        self._reader: asyncio.Task | None = None
        self._opening: asyncio.Lock | None = None

    async def call(self, *args):
        if self.conn is None:
            await self._open()
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)  # before the write, with no await between: order kept
        try:
            await self.conn.send_packed_command(
                self.conn.pack_command("EVALSHA", self.sha, *args), check_health=False)
        except BaseException as e:
            self._fail(e)
            raise
        return await fut

    async def _open(self) -> None:
        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self.conn is not None:
                return
            conn = self._make()
            await conn.connect()
            await conn.send_command("SCRIPT", "LOAD", self.script)
            sha = await conn.read_response()
            self.sha = sha.decode() if isinstance(sha, bytes) else sha
            self.conn = conn
            self._reader = asyncio.get_running_loop().create_task(self._read(conn))

    async def _read(self, conn) -> None:
        while True:
            try:
                answer = await conn.read_response()
            except asyncio.CancelledError:
                raise
            except RedisError as e:
                if not isinstance(e, ResponseError):  # the connection broke
                    self._fail(e)
                    return
                answer = e
            if self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    (fut.set_exception if isinstance(answer, Exception) else fut.set_result)(answer)

    def _fail(self, e: BaseException) -> None:
        conn, self.conn = self.conn, None
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"shared state lane closed: {e}"))
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        if conn is not None:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    async def close(self) -> None:
        if self.conn is not None:
            self._fail(ConnectionError("closed"))
