"""The gateway's decisions, free of I/O.

    admit(request)  -> Answer (the gateway answers itself) | Ticket   (keypool.admission)
    pick(ticket)    -> Plan (one attempt on one key)      | NoKeyAvailable
    judge(plan, status, headers, body) -> Verdict: cool the key? re-issue?
    finish(plan, status, usage)        -> pool counters, limits, metrics

``keypool.reissue`` drives these for one request, attempt after attempt; the mitmproxy
glue (``keypool.mitm``) does the I/O. Headers are a case-insensitive mapping (mitmproxy's
``Headers``) or a dict with lower-case names.
"""
from __future__ import annotations

import random
from typing import Callable, Mapping

from . import admission, answers, policy, refusals
from .answers import Answer
from .budgets import Budgets
from .canon import MB, screen_head
from .clients import ClientAuth
from .clock import Clock, SystemClock
from .config import Config
from .echo import Masker
from .globs import GlobSet
from .limits import ClientRate
from .metrics import Metrics
from .pool import WHOLE_KEY, NoKeyAvailable, Pool, ProviderOutage
from .prices import Pricer
from .redact import scrub
from .refusals import RefusalLimit, Seen
from .routing import Router
from .spend import NO_CLIENT, Ledger
from .store.recorder import Recorder
from .ticket import Plan, Ticket, request_row
from .usage import Usage

BODY_LOG_LIMIT = 64 * 1024  # logging.bodies keeps at most this much of each body


class Gateway:
    def __init__(self, config: Config, clock: Clock | None = None,
                 rng: random.Random | None = None, admin_token: str | None = None):
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.admin_token = admin_token or None
        self.started_wall = self.clock.wall()
        self.reload_error: str | None = None
        self.store_status: Callable[[], dict] | None = None  # the store writer's, when there is one
        self.fleet_log = None  # store.fleetlog.FleetLog: the fleet's request log in Redis
        self.pool = Pool(config, self.clock, self.rng)
        self.client_rate = ClientRate()
        self.waiting: dict[str, int] = {}  # provider -> requests queued for a key
        self.recorder = Recorder()
        self.refusal_limit = RefusalLimit()  # refusal rows per second: a 401 flood fills no disk
        self.metrics = Metrics(self.pool.snapshot, self.clock.wall, providers=self.pool.providers)
        self.ledger = Ledger(self.pool.periods)
        self.budgets = Budgets(self.ledger, self.clock, self.pool.keylog,
                               lambda *a: self.pricer.cost(*a))
        self.pool.hold_checks.append(self.budgets.hold_rows)
        self.pool.budget_wait = lambda name: self.budgets.key_wait(name, self.clock.wall())
        self.metrics.watch_budgets(lambda: self.budgets.ratios(self.clock.wall()))
        self.update(config)

    def update(self, config: Config) -> None:
        """Swap in a new config as one step; key state carries over (see Pool.update)."""
        self.router = Router(config)
        self.clients = ClientAuth(config.clients)
        self.client_rate.forget_except({c.name for c in config.clients or ()})
        self.pool.update(config)
        self.ledger.set_periods(self.pool.periods)  # the pool's and the ledger's day agree
        self.pricer = Pricer({n: p.price for n, p in config.providers.items()}, self.clock.wall)
        self.budgets.update(config)  # new limits apply to the next request; holds stay
        globs = [g for p in config.providers.values() for g in p.models]
        self.metrics.set_model_globs(GlobSet(globs + [g for k in config.keys for g in k.models]))
        self._secrets = [k.secret for k in config.keys] + [c.token for c in config.clients or ()]
        # Keys an upstream may echo; those of the previous config too, for the answers of
        # requests that were sent before this reload.
        previous = getattr(self, "config", None)
        self.masker = Masker([k.secret for k in config.keys]
                             + ([k.secret for k in previous.keys] if previous else []))
        self.max_response_bytes = int(config.routing.max_response_mb * (1 << 20))
        self.config = config
        self.loaded_wall = self.clock.wall()

    # -- request side --------------------------------------------------------------

    def admit(self, method: str, path: str, headers: Mapping[str, str],
              body: bytes | None) -> Answer | Ticket:
        seen = Seen()
        result = admission.admit(self, method, path, headers, body, seen)
        if isinstance(result, Answer):
            self.count_answer(result)
            self.log_refusal(result, seen)
        return result

    def log_refusal(self, answer: Answer, seen: Seen) -> None:
        """A request-log row for an API request the gateway refused itself (bounded rate)."""
        if answer.status < 400 or seen.path is None or not refusals.logged(seen.path):
            return
        now = self.clock.wall()
        if not self.refusal_limit.allow(now):
            self.metrics.refusals_dropped.inc()
            return
        self.recorder.request(refusals.row(now, answer, seen))

    def count_answer(self, answer: Answer) -> None:
        if answer.status >= 400:
            self.metrics.gateway_answers.labels(
                str(answer.status), answer.headers.get("x-keymux-error", "")).inc()

    def screen(self, method: str, target: str, authority: str, fields) -> Answer | None:
        """Refusals decided on the request head, before its body is read (mitmproxy's
        requestheaders): CONNECT, absolute-form targets, oversized URL, headers or
        Content-Length. Never sent upstream, so never blamed on a key."""
        refused = screen_head(method, target, authority, fields, self.max_body)
        if refused is None:
            return None
        answer = answers.error(refused.status, refused.message, refused.code)
        self.count_answer(answer)
        seen = Seen()
        seen.path = target if target.startswith("/v1/") else None
        self.log_refusal(answer, seen)
        return answer

    @property
    def max_body(self) -> int:
        return int(self.config.routing.max_body_mb * MB)

    def pick(self, ticket: Ticket) -> Plan:
        """Lease a key not yet tried for this ticket, or raise NoKeyAvailable."""
        route = ticket.route
        lease = self.pool.pick(route.provider.name, route.model, exclude=ticket.tried,
                               est_tokens=ticket.est_tokens)
        if ticket.hold is not None:  # the estimate now counts against this key's budget too
            ticket.hold = self.budgets.rebind(ticket.hold, lease.key.name)
        return Plan(ticket=ticket, lease=lease, started=self.clock.monotonic())

    def handle(self, method: str, path: str, headers: Mapping[str, str],
               body: bytes | None) -> Answer | Plan:
        """admit + one pick: the first attempt, without queueing (tests, simple callers)."""
        ticket = self.admit(method, path, headers, body)
        if isinstance(ticket, Answer):
            return ticket
        try:
            return self.pick(ticket)
        except NoKeyAvailable as e:
            return self.refuse(ticket, e)

    def refuse(self, ticket: Ticket, e: NoKeyAvailable) -> Answer:
        """The answer when no (further) key can take the ticket."""
        if isinstance(e, ProviderOutage):
            answer = answers.error(503, e.message, "provider_outage",
                                   retry_after=self._capped(e.retry_after), anthropic=ticket.anthropic)
        elif e.budget:  # a period reset is exact: not capped like a guessed recovery
            answer = answers.error(429, e.message, "keys_over_budget",
                                   retry_after=e.retry_after, anthropic=ticket.anthropic)
        elif e.retry_after is not None:
            answer = answers.error(429, e.message, "all_keys_busy",
                                   retry_after=self._capped(e.retry_after), anthropic=ticket.anthropic)
        elif ticket.attempts:
            answer = self.exhausted(ticket)
        else:
            answer = answers.error(404, e.message, "no_key_available", anthropic=ticket.anthropic)
        self.count_answer(answer)
        return answer

    def exhausted(self, ticket: Ticket) -> Answer:
        """Every attempt failed: 429 if only limits stood in the way, else 502."""
        story = ", ".join(f"{a['key']}: {a['status'] or a['error']}" for a in ticket.attempts)
        if all(a["outcome"] in ("rate_limited", "quota") for a in ticket.attempts):
            wait = self.pool.soonest(ticket.route.provider.name, ticket.route.model)
            return answers.error(429, f"every key tried is rate limited ({story})",
                                 "all_keys_rate_limited", retry_after=self._capped(wait or 1.0),
                                 anthropic=ticket.anthropic)
        return answers.error(502, f"the upstream failed on every attempt ({story})",
                             "upstream_failed", anthropic=ticket.anthropic)

    def _capped(self, seconds: float) -> float:
        """No Retry-After keymux tells a client exceeds cooldown.max_s."""
        return min(seconds, float(self.config.routing.cooldown.max_s))

    def timed_out(self, ticket: Ticket) -> Answer:
        answer = answers.error(504, f"no answer within timeout_s "
                               f"({self.config.routing.timeout_s:g} s)", "timeout",
                               anthropic=ticket.anthropic)
        self.count_answer(answer)
        return answer

    # -- answer side ---------------------------------------------------------------

    def first_byte(self, plan: Plan) -> None:
        plan.ttfb = self.clock.monotonic() - plan.started

    def judge(self, plan: Plan, status: int | None, headers: Mapping[str, str],
              body: bytes | None, error: str | None = None,
              answered: int | None = None) -> policy.Verdict:
        """Classify an attempt's answer: cool its key, learn its budget, record it.

        ``answered``: the status of an answer whose body then failed (``status`` None); only
        a server-class one is evidence of a provider outage, the rest is the key's fault.

        A failed attempt is finished here; a successful or passed-through one is finished
        by the caller once its body (or stream) is complete."""
        key = plan.key
        v = policy.classify(status, headers, body, cooldown=self.config.routing.cooldown,
                            failures_in_row=key.failures_in_row, now=self.clock.wall(),
                            rng=self.rng)
        # before any cooldown: a failure that is the provider's outage cools no key
        evidence = v.outcome if answered is None or answered >= 500 or answered == 408 else "answered"
        blame_key = self.pool.observe(plan.lease, evidence)
        if v.cooldown_s > 0 and blame_key:
            scope = plan.model if v.scope == "model" and plan.model else WHOLE_KEY
            self.pool.cool_down(key, scope, v.cooldown_s, v.outcome,
                                status if status is not None else error, v.hint)
        if v.outcome == "ok":
            b = policy.budget(headers, self.clock.wall())
            if b is not None:
                # The upstream counted only what it had seen: requests this key still has in
                # flight will spend that budget too.
                others = key.in_flight - 1
                left = None if b.remaining_requests is None else b.remaining_requests - others
                cap = self._capped
                key.limits.learn(self.clock.monotonic(), left,
                                 None if b.requests_reset_s is None else cap(b.requests_reset_s),
                                 b.remaining_tokens,
                                 None if b.tokens_reset_s is None else cap(b.tokens_reset_s))
                self.pool.shared.learned(key)  # other processes adopt it (no-op alone)
                if b.remaining_requests == 0 or b.remaining_tokens == 0:  # rare: only then
                    self._log_hold(key, b, headers)
        key.last_status = status if status is not None else error
        plan.ticket.attempts.append({
            "key": key.name, "status": status, "error": error, "outcome": v.outcome,
            "latency_s": round(self.clock.monotonic() - plan.started, 4)})
        if v.retry:
            self.finish(plan, status, outcome=v.outcome, final=False)
        return v

    def _log_hold(self, key, b: policy.Budget, headers: Mapping[str, str]) -> None:
        """The upstream said a key's budget is spent: one log line when the hold starts."""
        what = "requests" if b.remaining_requests == 0 else "tokens"
        waits = key.limits.waits(self.clock.monotonic())
        wait = waits["learned_" + what]
        if wait > 0:
            openai = headers.get(f"x-ratelimit-remaining-{what}") is not None
            header = (f"x-ratelimit-remaining-{what}" if openai
                      else f"anthropic-ratelimit-{what}-remaining")
            self.pool.keylog.held(key.name, what, header, wait)

    def abandon(self, plan: Plan) -> None:
        """The client went away mid-attempt: free the key, blame nobody."""
        self.finish(plan, None, outcome="cancelled")

    def close(self, ticket: Ticket) -> None:
        """The request is over: its budget estimate is released (idempotent)."""
        if ticket.hold is not None:
            self.ledger.release(ticket.hold)
        if ticket.shared_hold is not None:  # its hold in Redis (keypool.shared_lua)
            self.pool.shared.release_hold(ticket.shared_hold)
            ticket.shared_hold = None

    def finish(self, plan: Plan, status: int | None, usage: Usage | None = None,
               outcome: str | None = None, final: bool = True) -> None:
        """Account one attempt exactly once; ``final``: no attempt follows (judge's re-issued
        ones are not), so the request's budget estimate is settled by the real cost."""
        if plan.finished:
            return
        plan.finished = True
        try:
            self._account(plan, status, usage, outcome)
        finally:
            if final:
                self.close(plan.ticket)

    def _account(self, plan: Plan, status: int | None, usage: Usage | None,
                 outcome: str | None) -> None:
        latency = self.clock.monotonic() - plan.started
        u = usage or Usage()
        if outcome is None:
            outcome = "ok" if status is not None and status < 400 else (
                "client_error" if status is not None and status < 500 else "server")
        self.pool.release(plan.lease, outcome=outcome, latency=latency,
                          tokens_in=u.input, tokens_out=u.output)
        self.metrics.observe(plan.provider.name, plan.key.name, status, latency, plan.ttfb,
                             plan.model, u.input, u.output)
        if outcome != "cancelled":
            self.recorder.attempt(self.clock.wall(), plan.key.name, plan.provider.name, outcome,
                                  latency, u.input, u.output)
            if u.seen or (status is not None and status < 400 and plan.model):
                self._spend(plan, u)

    def _spend(self, plan: Plan, u: Usage) -> None:
        """Price the attempt and add it to the ledger; an answer without usage costs
        "unknown", as does a model without a price."""
        provider, model, wall = plan.provider.name, plan.model, self.clock.wall()
        cost = plan.cost = self.pricer.cost(provider, model, u, wall) if u.seen else None
        client = plan.ticket.client
        self.ledger.add(wall, plan.key.name, client, provider, model, cost, u)
        if self.budgets.shared is not None:  # several processes share budgets (Redis)
            self.budgets.share(plan.key.name, client, wall)
        if plan.key.spec.budget is not None:  # logs the key leaving rotation, if it does now
            self.budgets.key_wait(plan.key.name, wall)
        if cost:
            self.metrics.spend(provider, model, plan.key.name, client or NO_CLIENT, cost)

    def complete(self, ticket: Ticket, status: int, plan: Plan | None = None,
                 usage: Usage | None = None, response_body: bytes | None = None,
                 answer: Answer | None = None) -> None:
        """The client has its answer: one row for the request log (``answer``: the
        gateway's own, e.g. 503 provider_outage, whose code and reason the row keeps)."""
        self.close(ticket)  # first: nothing below may keep a budget's estimate held
        row = request_row(ticket, status, plan, usage or Usage(), self.clock.monotonic())
        if answer is not None:
            row["error_code"], row["error"] = refusals.error_of(answer)
        if self.config.logging.bodies:
            row["request_body"] = self._redacted(ticket.body)
            row["response_body"] = self._redacted(response_body)
        self.recorder.request(row)

    def _redacted(self, body: bytes | None) -> str | None:
        if not body:
            return None
        return scrub(body[:BODY_LOG_LIMIT].decode("utf-8", "replace"), self._secrets)
