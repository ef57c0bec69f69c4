"""Operator commands in mitmproxy (mitmweb's command bar, the console's ``:`` prompt).

    keymux.keys                  every key's state, one line each; never a secret
    keymux.reset KEY             end KEY's cooldowns now (the UI's reset button)
    keymux.disable KEY           enabled: false in keys.yaml, written as the web UI writes it
    keymux.enable KEY            enabled: true (the reload watcher then applies the file)
    keymux.replay FLOW [KEY]     re-send a recorded request through the pool, or on KEY only

A replay is untrusted input (a flow may come from a ``-w`` file): it is sent only to the
configured base URL of the provider its keymux metadata names, and only if the flow's URL
is that provider's; a chosen key must belong to that provider. Its result is a new flow.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import command, ctx, eventsequence, exceptions, flow, http

from .. import answers
from ..answers import Answer
from ..canon import Refused, canonical_target
from ..gateway import Gateway
from ..keylog import held_back_text
from ..limits import estimate_tokens
from ..redact import mask, scrub
from ..reissue import Reply, UpstreamError, serve
from ..routing import Route
from ..ticket import Plan, Ticket, read_json, rewrite_body
from ..usage import usage_of_body
from . import boundary, flows, responses

if TYPE_CHECKING:
    from .addon import Keymux

logger = logging.getLogger("keymux")

OPERATOR = "@operator"  # the request log's client of a replay: no configured client has an @
AUDIT_WHO, AUDIT_WHERE = "mitmproxy", "command"


class Commands:
    """Nested in ``Keymux`` (its ``addons``), so it lives and dies with that instance."""
    name = "keymux_commands"

    def __init__(self, keymux: "Keymux") -> None:
        self.keymux = keymux
        self.tasks: set[asyncio.Task] = set()  # running replays (kept: the loop holds weak refs)

    def _gateway(self) -> Gateway:
        if self.keymux.gateway is None:
            raise exceptions.CommandError("keymux: no config is loaded")
        return self.keymux.gateway

    @command.command("keymux.keys")
    def keys(self) -> Sequence[str]:
        """The state of every key: name, provider, state, cooldown left, in flight, requests,
        last status. Masked forms only, never a secret."""
        gw = self._gateway()
        rows = [_row(k) for k in gw.pool.snapshot()]
        head = ("NAME", "PROVIDER", "STATE", "COOLDOWN", "IN-FLIGHT", "REQUESTS", "LAST", "KEY", "WHY")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]

    @command.command("keymux.reset")
    def reset(self, key: str) -> str:
        """End a key's cooldowns and dead mark now, as the web UI's reset button does."""
        gw = self._gateway()
        if not gw.pool.reset_cooldown(key):
            raise exceptions.CommandError(f"keymux: no key named {_shown(key)}")
        _audit(gw, "cooldown.reset", key)
        return f"keymux: {key}: cooldowns cleared, now {gw.pool.by_name[key].state(gw.clock.monotonic())}"

    @command.command("keymux.disable")
    def disable(self, key: str) -> str:
        """Write enabled: false for a key in keys.yaml (as the web UI does); the gateway
        applies it when it reloads the file."""
        return self._set_enabled(key, False)

    @command.command("keymux.enable")
    def enable(self, key: str) -> str:
        """Write enabled: true for a key in keys.yaml (as the web UI does)."""
        return self._set_enabled(key, True)

    def _set_enabled(self, key: str, enabled: bool) -> str:
        gw = self._gateway()
        path = Path(ctx.options.keymux_config)
        word = "enabled" if enabled else "disabled"
        try:
            changed = set_enabled(path, key, enabled)
        except LookupError:
            raise exceptions.CommandError(f"keymux: no key named {_shown(key)} in {path}; "
                                          "nothing written") from None
        except ValueError as e:
            raise exceptions.CommandError(f"keymux: {path} not written: {e}") from None
        if not changed:
            return f"keymux: {key} is already {word} in {path}; nothing written"
        _audit(gw, f"key.{word}", key)
        return f"keymux: {key} {word} in {path}; the gateway applies it when it reloads the file"

    @command.command("keymux.replay")
    def replay(self, flow: flow.Flow, key: str = "") -> str:
        """Re-send a recorded request (a flow keymux routed) through the pool, or with one
        key only (one attempt, whatever its state). The result is a new flow."""
        gw = self._gateway()
        ticket, fields = replay_ticket(gw, flow, key)
        task = asyncio.get_running_loop().create_task(
            self._replay(flow, ticket, fields, key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        on = f"on key {key}" if key else "through the pool"
        return f"keymux: replaying {flow.id} {on}; the result appears as a new flow"

    async def _replay(self, original: http.HTTPFlow, ticket: Ticket, fields, key: str) -> None:
        try:
            new = await self._send(original, ticket, fields, key)
            for event in eventsequence.iterate(new):  # as a loaded flow, without host rewrites
                await ctx.master.addons.handle_lifecycle(event)
            logger.info("keymux: %s", new.comment)
        except Exception as e:
            self.keymux._failed("replay", e)

    async def _send(self, original: http.HTTPFlow, ticket: Ticket, fields,
                    key: str) -> http.HTTPFlow:
        gw, upstream = self._gateway(), self.keymux.upstream
        method = original.request.method
        cap = gw.max_response_bytes

        def send(plan: Plan):
            return upstream.send(plan, method, fields, cap)

        started = time.time()
        if key:
            out = await _one_attempt(gw, ticket, key, send)
        else:
            o = await serve(gw, ticket, send)
            out = Result(plan=o.plan, answer=o.answer, reply=o.reply, body=o.body)
        plan = out.plan
        try:
            new = _new_flow(original, ticket, plan.rewrite_fields(fields, secret=False)
                            if plan else fields, started)  # the key masked
            if plan is None:  # nothing was sent: no credential shown either
                boundary.mask_client_auth(new.request)
            status = _settle(gw, new, ticket, out)
            if plan is not None and out.reply is not None:  # where it really went, and when
                flows.show_connection(new, out.reply, plan, whole=False)
        except BaseException:
            if plan is not None:  # whatever failed, the key is given back (a no-op once settled)
                gw.finish(plan, None, outcome="cancelled")
            raise
        finally:
            if out.reply is not None:
                out.reply.close()
        shown = plan.key.name if plan else (key or "the pool")
        new.comment = f"replay of {original.id} on {shown}: {status}"
        new.metadata["keymux"] = {
            "replay_of": original.id, "key": plan.key.name if plan else None,
            "provider": ticket.route.provider.name, "model": ticket.route.model,
            "client": OPERATOR, "rule": "replay", "attempts": ticket.attempts}
        return new


def _row(k: dict) -> tuple[str, ...]:
    state = k["state"]
    held = k.get("held_back") or []
    if state == "ok" and held and held[0]["reason"] != "cooldown":  # rpm, tpm, a learned budget
        state = {"learned_budget": "budget", "in_flight": "busy"}.get(held[0]["reason"], "limited")
    cool = k["cooldown_s"] or k["limited_s"]
    if k["cooling_models"] and k["state"] == "ok":
        state += " (" + ", ".join(sorted(k["cooling_models"])) + " cooling)"
    flight = f"{k['in_flight']}/{k['max_in_flight']}" if k["max_in_flight"] else str(k["in_flight"])
    last = k.get("last_status")
    return (k["name"], k["provider"], state, f"{cool:.0f}s" if cool else "-", flight,
            str(k["requests"]), "-" if last is None else str(last)[:40], k["key"],
            held_back_text(held) or "-")


def _shown(name: str) -> str:
    """An unknown name, as an error may repeat it (someone may paste a secret as a name)."""
    return repr(name[:64]) if len(name) < 20 else repr(mask(name))


def set_enabled(path: Path, key: str, enabled: bool) -> bool:
    """The web UI's own save path (``ConfigFile.save``: ruamel round trip, validated with the
    gateway's parser, atomic write under keymux's writer lock). False: already so.
    LookupError: no such key (nothing written); ValueError: why it was not written."""
    # The sidecar's code, imported when an operator first edits: the gateway does not load
    # Flask otherwise. One writer path for keys.yaml, whoever edits it.
    from webui.configfile import ConfigError, ConfigFile, Conflict, EditError
    from webui.yamledit import KEY_ORDER

    cf = ConfigFile(path)
    snap = cf.read()
    if snap.doc is None:
        raise ValueError(snap.error or "cannot read it")
    if key not in snap.doc.names("keys"):
        raise LookupError(key)
    if bool(snap.doc.find("keys", key).get("enabled", True)) == enabled:
        return False
    try:
        cf.save(snap.version,
                lambda doc: doc.update_item("keys", key, {"enabled": enabled}, KEY_ORDER))
    except Conflict:
        raise ValueError("it changed on disk meanwhile; try again") from None
    except EditError as e:
        raise ValueError(scrub(str(e), snap.secrets)) from None
    except ConfigError as e:
        raise ValueError("the gateway would reject it: " + scrub(str(e), snap.secrets)) from None
    except OSError as e:
        raise ValueError(e.strerror or "I/O error") from None
    return True


def _audit(gw: Gateway, action: str, target: str) -> None:
    """One row in the web UI's audit log (``<state_dir>/audit.db``), as its pages write."""
    from webui.auditlog import DB_NAME, AuditError, AuditLog
    cfg = gw.config
    try:
        AuditLog(Path(cfg.state_dir) / DB_NAME).write(
            action, target, "", AUDIT_WHO, AUDIT_WHERE, cfg.logging.retention_days)
    except AuditError as e:
        logger.error("keymux: audit log: cannot record %s %s: %s", action, target, e)


def replay_ticket(gw: Gateway, f: flow.Flow, key: str) -> tuple[Ticket, tuple]:
    """A ticket for a recorded flow, or CommandError. Nothing of the flow decides where it
    goes: the provider comes from the config, and the flow must already name its URL."""
    fail = exceptions.CommandError
    meta = f.metadata.get("keymux") if isinstance(f, http.HTTPFlow) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("provider"), str):
        raise fail("keymux: not a flow keymux sent upstream (no keymux metadata); nothing sent")
    provider = gw.config.providers.get(meta["provider"])
    if provider is None or provider.name not in gw.pool.by_provider:
        raise fail(f"keymux: provider {meta['provider'][:64]!r} has no keys in the config; "
                   "nothing sent")
    req = f.request
    if (req.scheme, req.host, req.port) != (provider.scheme, provider.host, provider.port):
        raise fail(f"keymux: the flow's host {req.host[:100]!r} is not provider "
                   f"{provider.name}'s base URL; nothing sent")
    base = provider.base_path
    rest = req.path[len(base):] if req.path.startswith(base) else None
    path = "/v1" + rest if rest and rest[0] in "/?" else ""
    try:
        target = canonical_target(path)
        ok = target.upstream == path and provider.upstream_path(path) == req.path
    except (Refused, ValueError):
        ok = False
    if not ok:
        raise fail(f"keymux: the flow's path is not under provider {provider.name}'s "
                   "base URL; nothing sent")
    if key:
        state = gw.pool.by_name.get(key)
        if state is None:
            raise fail(f"keymux: no key named {_shown(key)}; nothing sent")
        if state.spec.provider != provider.name:
            raise fail(f"keymux: key {key} belongs to {state.spec.provider}, not "
                       f"{provider.name}: a key is only sent to its own provider")
    try:
        body = req.content  # as sent upstream (model already rewritten)
        data = read_json(target.path, req.headers, body)
    except (ValueError, Refused) as e:
        raise fail(f"keymux: the flow's body cannot be replayed: {getattr(e, 'message', e)}") from None
    sent = data.get("model") if data else None
    model = meta.get("model") if isinstance(meta.get("model"), str) else sent
    route = Route(provider, model, 0)
    if isinstance(sent, str) and sent != model:  # a flow that kept the client's body
        body = rewrite_body(target.path, route, data, sent, body)[0]
    now = gw.clock.monotonic()
    ticket = Ticket(path=path, route=route, client=OPERATOR, body=body,
                    stream=False, strip_usage=False,  # a replay's answer is read whole
                    anthropic=target.path.startswith("/v1/messages"),
                    est_tokens=estimate_tokens(data, len(body or b"")), arrived=now,
                    deadline=now + gw.config.routing.timeout_s, arrived_wall=gw.clock.wall())
    # the body goes out as it is: the length is aiohttp's, and nothing is encoded
    fields = tuple((k, v) for k, v in req.headers.fields
                   if k.lower() not in (b"content-encoding", b"content-length"))
    return ticket, fields


@dataclass(slots=True)
class Result:
    """What a replay got: the gateway's own answer, or an attempt's reply, or why none."""
    plan: Plan | None = None
    answer: Answer | None = None
    reply: Reply | None = None
    body: bytes | None = None
    error: str | None = None


async def _one_attempt(gw: Gateway, ticket: Ticket, key: str, send) -> Result:
    """One attempt on the named key whatever its state (like the admin key test), judged by
    the normal policy. The reply (even a 401) is kept: that is what the operator asked."""
    lease = gw.pool.lease_named(key)
    if lease is None:  # removed by a reload since the command was typed
        return Result(answer=answers.error(404, f"no key named '{key[:64]}'", "key_not_found"))
    plan = Plan(ticket=ticket, lease=lease, started=gw.clock.monotonic())
    reply = None
    try:
        try:
            async with asyncio.timeout(max(0.0, ticket.deadline - gw.clock.monotonic())):
                reply = await send(plan)
                gw.first_byte(plan)
                body = await reply.read()
        except (TimeoutError, UpstreamError) as e:
            error = str(e) or "timeout"
            verdict = gw.judge(plan, None, {}, None, error=error,
                               answered=None if reply is None else reply.status)
            gw.finish(plan, None, outcome=verdict.outcome)  # a no-op when judge finished it
            if reply is not None:
                reply.close()
            return Result(plan=plan, error=error)
        if gw.judge(plan, reply.status, reply.headers, body).outcome == "ok":
            gw.pool.revive(plan.key)  # as a successful key test does
        return Result(plan=plan, reply=reply, body=body)
    except BaseException:
        gw.abandon(plan)  # cancelled or a bug: free the key, blame nobody
        if reply is not None:
            reply.close()
        raise


def _settle(gw: Gateway, new: http.HTTPFlow, ticket: Ticket, out: Result) -> int | str:
    """The new flow's response (or error), the key's accounting and one request-log row."""
    if out.answer is not None:  # the gateway's own (no key free, every attempt failed, ...)
        new.response = responses.from_answer(out.answer)
        gw.complete(ticket, out.answer.status, answer=out.answer)
        return out.answer.status
    plan, reply = out.plan, out.reply
    if reply is None:  # no answer at all
        new.error = flow.Error(out.error or "no answer")
        gw.complete(ticket, 502, plan)
        return out.error or "no answer"
    masker, usage = gw.masker, None
    try:
        body = masker.masked(out.body or b"")
        new.response = responses.response(reply.status, masker.masked_text(reply.reason),
                                          body, masker.masked_fields(reply.fields))
        usage = usage_of_body(body) if reply.status < 400 else None
    finally:
        gw.finish(plan, reply.status, usage)  # a no-op when judge already finished it
    gw.complete(ticket, reply.status, plan, usage, body)
    return reply.status


def _new_flow(original: http.HTTPFlow, ticket: Ticket, fields, started: float) -> http.HTTPFlow:
    """A copy of the original (a new id, not live) showing the request as it was sent."""
    new = original.copy()
    new.response, new.error, new.marked, new.metadata = None, None, "", {}
    req = new.request
    req.headers.fields = fields
    req.raw_content = ticket.body
    if ticket.body:
        req.headers["content-length"] = str(len(ticket.body))
    req.timestamp_start = req.timestamp_end = started
    return new
