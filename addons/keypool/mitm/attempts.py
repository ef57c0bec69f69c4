"""Every failed upstream attempt becomes a flow of its own, linked to the client's flow.

``reissue.serve`` tells ``Failures.add`` of each attempt that failed (nothing is recorded,
built or copied when the first attempt succeeds). Once ``serve`` returned (so the number
of attempts is known), the client flow lists the attempt flows' ids and a background task
builds them and publishes them the way mitmproxy publishes a loaded flow (every lifecycle
hook in turn), so they appear in mitmweb's list, in ``-w`` files and in mitmdump's output.
They are not live: keymux's hooks and FailClosed leave them alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from mitmproxy import ctx, eventsequence, flow as mflow, http

from ..echo import Masker
from . import flows

logger = logging.getLogger("keymux")


class Failures:
    """The failed attempts of one client request: (plan, reply, body, error) each."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def add(self, plan, reply, body, error) -> None:
        self.records.append((plan, reply, body, error))


def link(client: http.HTTPFlow, records: list[tuple]) -> list[str]:
    """Ids for the attempt flows to come, listed in the client flow's metadata."""
    ids = [str(uuid.uuid4()) for _ in records]
    meta = client.metadata.setdefault("keymux", {})
    meta["attempt_flows"] = ids
    return ids


def build(client: http.HTTPFlow, records: list[tuple], ids: list[str], fields, method: str,
          cap: int, masker: Masker) -> list[http.HTTPFlow]:
    total = len(records[0][0].ticket.attempts) if records else 0
    return [attempt_flow(client, rec, fid, n, total, fields, method, cap, masker)
            for n, (rec, fid) in enumerate(zip(records, ids), start=1)]


def attempt_flow(client: http.HTTPFlow, rec: tuple, fid: str, n: int, total: int, fields,
                 method: str, cap: int, masker: Masker) -> http.HTTPFlow:
    """One failed attempt as mitmproxy would have recorded it: the request as sent (key
    masked), the upstream's answer (body capped) or the error, the real connection."""
    plan, reply, body, error = rec
    conn = getattr(reply, "conn", None)
    t0 = (conn.timestamp_start if conn and conn.timestamp_start else None) or time.time()
    f = http.HTTPFlow(client.client_conn, flows.upstream_server(conn, plan))
    f.id = fid
    f.request = http.Request(
        "", 0, method.encode(), b"https", b"", b"/", b"HTTP/1.1", http.Headers(), b"",
        None, t0, t0)
    flows.show_request(f.request, plan, flows.sent_fields(plan, fields))
    if conn is not None and conn.timestamp_request_sent is not None:
        f.request.timestamp_end = conn.timestamp_request_sent
    if reply is not None:
        f.response = _response(reply, body, cap, masker, conn, t0)
    if error is not None:
        f.error = mflow.Error(masker.masked_text(error),
                              conn.timestamp_end if conn and conn.timestamp_end else time.time())
    outcome = reply.status if reply is not None and error is None else error
    after = "re-issued" if n < total else "the last"
    f.comment = (f"attempt {n} of {total} for {method} {plan.ticket.path}: "
                 f"{plan.key.name} {outcome} ({after})")
    f.marked = flows.FAILED
    f.metadata["keymux"] = {
        "attempt_of": client.id, "attempt": n, "attempts": total, "key": plan.key.name,
        "provider": plan.provider.name, "model": plan.model,
        "status": reply.status if reply is not None else None, "error": error}
    return f


def _response(reply, body, cap: int, masker: Masker, conn, t0: float) -> http.Response:
    kept = masker.masked(body[:cap]) if body else b""
    start = (conn.timestamp_response_start if conn else None) or t0
    end = (conn.timestamp_end if conn else None) or start
    fields = masker.masked_fields(list(getattr(reply, "fields", ()) or ()))
    return http.Response(b"HTTP/1.1", reply.status,
                         masker.masked_text(reply.reason or "").encode(),
                         http.Headers(fields), kept, None, start, end)


class Publisher:
    """Publishes attempt flows in the background; tasks kept until done."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def attempts(self, client: http.HTTPFlow, records: list[tuple], fields, method: str,
                 cap: int, masker: Masker) -> None:
        """The failed attempts become flows, built and published after the client's answer."""
        ids = link(client, records)
        self.publish(lambda: build(client, records, ids, fields, method, cap, masker))

    def publish(self, make) -> None:
        """``make()`` builds the flows, off the client's path."""
        task = asyncio.get_running_loop().create_task(self._publish(make))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _publish(self, make) -> None:
        try:
            for f in make():
                for event in eventsequence.iterate(f):
                    await ctx.master.addons.handle_lifecycle(event)
        except Exception as e:  # an attempt flow missing is no reason to fail anything
            logger.warning("keymux: an attempt flow could not be published: %s",
                           type(e).__name__)
