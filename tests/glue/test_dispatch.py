"""dispatch: mitmproxy's hooks reach the same addons, in the same order and with the same
error handling, through the planned dispatch as through mitmproxy's own chain walk."""
import logging
import types

import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.proxy.layers.http import HttpRequestHook as RequestHook
from mitmproxy.proxy.layers.http import HttpResponseHook as ResponseHook
from mitmproxy.test import taddons, tflow

from keypool.mitm import dispatch

from .conftest import keymux_in


class Rec:
    """Records its hooks in ``log``; ``fail``/``halt`` name hooks that raise."""

    def __init__(self, tag, log, *, fail=(), halt=(), children=None):
        self.tag, self.log, self.fail, self.halt = tag, log, set(fail), set(halt)
        self.name = f"rec-{tag}"
        if children is not None:
            self.addons = children

    def _hit(self, hook, flow):
        self.log.append((self.tag, hook))
        if hook in self.halt:
            raise exceptions.AddonHalt()
        if hook in self.fail:
            raise ValueError(f"{self.tag} failed in {hook}")

    def request(self, flow):
        self._hit("request", flow)

    async def response(self, flow):  # async hooks are awaited in turn
        self._hit("response", flow)

    def update(self, flows):
        self._hit("update", flows[0])


class Quiet:
    """Handles nothing; holds a module under a hook's name, which mitmproxy skips."""
    name = "quiet"
    request = logging  # a module, as ``from mitmproxy import log`` once made ``log``


def chain(log, **behaviour):
    kids = [Rec("b1", log, **behaviour.get("b1", {})), Rec("b2", log, **behaviour.get("b2", {}))]
    return [Rec("a", log, **behaviour.get("a", {})), Quiet(),
            Rec("b", log, children=kids, **behaviour.get("b", {})),
            Rec("c", log, **behaviour.get("c", {}))]


class Logged(logging.Handler):
    """What mitmproxy's addon manager logs meanwhile."""

    def __enter__(self):
        self.messages = []
        logging.getLogger("mitmproxy.addonmanager").addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger("mitmproxy.addonmanager").removeHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())


async def run(planned: bool, events, **behaviour):
    """The calls, in order, and the errors logged, for ``events`` over a fresh chain."""
    log = []
    with taddons.context(loadcore=False) as tctx, Logged() as logged:
        tctx.master.addons.add(*chain(log, **behaviour))
        if planned:
            assert dispatch.install(tctx.master.addons)
        for event in events:
            await tctx.master.addons.trigger_event(event)
    return log, logged


def flow_events():
    f = tflow.tflow(resp=True)
    return [RequestHook(f), hooks.UpdateHook([f]), ResponseHook(f), hooks.UpdateHook([f])]


def test_mitmproxys_dispatch_is_the_one_planned():
    """mitmproxy 12.2.3's trigger_event walks the chain as dispatch.py reproduces it; on
    another version install() refuses and mitmproxy dispatches as before."""
    assert dispatch.fits(addonmanager)


@pytest.mark.parametrize("behaviour", [
    {},
    {"b1": {"fail": {"request"}}},       # the rest of b's group is skipped, c still runs
    {"a": {"fail": {"response"}}},
    {"b": {"halt": {"request"}}},        # AddonHalt ends the event
    {"c": {"fail": {"update"}}, "a": {"halt": {"response"}}},
], ids=["plain", "nested-failure", "async-failure", "halt", "mixed"])
async def test_the_same_calls_and_errors_as_mitmproxys_own_dispatch(behaviour):
    own = await run(False, flow_events(), **behaviour)
    planned = await run(True, flow_events(), **behaviour)
    assert planned == own
    assert own[0]  # the chain did run


async def test_an_options_error_propagates_as_before():
    for planned in (False, True):
        with taddons.context(loadcore=False) as tctx:
            bad = Rec("x", [])
            bad.request = lambda flow: (_ for _ in ()).throw(exceptions.OptionsError("no"))
            tctx.master.addons.add(bad)
            if planned:
                dispatch.install(tctx.master.addons)
            with pytest.raises(exceptions.OptionsError):
                await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))


async def test_addons_added_and_removed_after_planning_are_seen():
    log = []
    with taddons.context(loadcore=False) as tctx:
        am = tctx.master.addons
        first = Rec("a", log)
        am.add(first)
        dispatch.install(am)
        await am.trigger_event(RequestHook(tflow.tflow()))
        late = Rec("late", log)
        am.add(late)
        await am.trigger_event(RequestHook(tflow.tflow()))
        am.remove(first)
        await am.trigger_event(RequestHook(tflow.tflow()))
    assert log == [("a", "request"), ("a", "request"), ("late", "request"),
                   ("late", "request")]


async def test_a_chain_rebound_or_resized_behind_the_managers_methods_is_seen():
    """clientauth moves itself to the front by rebinding ``chain``; others insert in place."""
    log = []
    with taddons.context(loadcore=False) as tctx:
        am = tctx.master.addons
        dispatch.install(am)
        first, second, third = Rec("first", log), Rec("second", log), Rec("third", log)
        for rec in (first, second, third):
            am.register(rec)
        am.chain.append(second)
        await am.trigger_event(RequestHook(tflow.tflow()))
        am.chain = [first, *am.chain]  # rebound, as clientauth._to_front does
        await am.trigger_event(RequestHook(tflow.tflow()))
        am.chain.insert(0, third)  # resized in place
        await am.trigger_event(RequestHook(tflow.tflow()))
    assert [tag for tag, _ in log] == ["second", "first", "second", "third", "first", "second"]


async def test_a_rebound_hook_is_the_one_called():
    log = []
    with taddons.context(loadcore=False) as tctx:
        rec = Rec("a", log)
        tctx.master.addons.add(rec)
        dispatch.install(tctx.master.addons)
        await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
        rec.request = lambda flow: log.append(("a", "rebound"))
        await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
    assert log == [("a", "request"), ("a", "rebound")]


async def test_a_hook_that_is_not_callable_takes_mitmproxys_path_which_reports_it():
    with taddons.context(loadcore=False) as tctx, Logged() as logged:
        odd = types.SimpleNamespace(name="odd", request=42)
        tctx.master.addons.add(odd)
        dispatch.install(tctx.master.addons)
        await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
        assert tctx.master.addons.keymux_dispatch.plans["request"] is None
    assert any("not callable" in m for m in logged)


class Raising:
    """An addon whose attribute lookup raises (a broken ``__getattr__``)."""
    name = "raising"

    def __getattr__(self, attr):
        if attr == "request":
            raise RuntimeError("lookup failed")
        raise AttributeError(attr)


async def test_an_addon_whose_lookup_raises_is_handled_as_mitmproxy_does():
    """mitmproxy logs the error and goes on to the next addon; so does the planned path."""
    results = []
    for planned in (False, True):
        log = []
        with taddons.context(loadcore=False) as tctx, Logged() as logged:
            tctx.master.addons.add(Raising(), Rec("after", log))
            if planned:
                dispatch.install(tctx.master.addons)
            await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
        results.append((log, logged))
    assert results[0] == results[1]
    assert results[0][0] == [("after", "request")] and "lookup failed" in results[0][1][0]


async def test_events_no_addon_handles_cost_a_dict_lookup():
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(Quiet())
        dispatch.install(tctx.master.addons)
        f = tflow.tflow()
        await tctx.master.addons.trigger_event(hooks.UpdateHook([f]))
        await tctx.master.addons.trigger_event(RequestHook(f))
        assert tctx.master.addons.keymux_dispatch.plans == {"update": (), "request": ()}


async def test_lifecycle_events_take_mitmproxys_path_and_drop_the_plans():
    """An addon may add another while ``running`` runs; mitmproxy's walk reaches it."""
    log = []

    class Adder:
        name = "adder"

        def running(self):
            tctx.master.addons.add(Rec("joined", log))

    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(Adder())
        dispatch.install(tctx.master.addons)
        await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
        await tctx.master.addons.trigger_event(hooks.RunningHook())
        await tctx.master.addons.trigger_event(RequestHook(tflow.tflow()))
    assert log == [("joined", "request")]


def test_install_is_idempotent_and_uninstall_restores_mitmproxys_methods():
    with taddons.context(loadcore=False) as tctx:
        am = tctx.master.addons
        assert dispatch.install(am) and dispatch.install(am)
        assert dispatch.installed(am) and "trigger_event" in vars(am)
        dispatch.uninstall(am)
        assert not dispatch.installed(am)
        assert not {"trigger_event", "register", "remove", "clear", "add"} & set(vars(am))
        assert am.trigger_event.__func__ is addonmanager.AddonManager.trigger_event


def test_another_mitmproxy_is_left_alone(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "fits", lambda module: False)
    with taddons.context(loadcore=False) as tctx:
        assert not dispatch.install(tctx.master.addons)
        assert not dispatch.installed(tctx.master.addons)
    assert "dispatched by mitmproxy itself" in caplog.text


async def test_keymux_installs_it_switches_it_off_on_request_and_removes_it_when_done(
        glue_config):
    async with keymux_in(glue_config) as (addon, tctx):
        am = tctx.master.addons
        assert dispatch.installed(am)
        tctx.options.update(keymux_fast_hooks=False)
        assert not dispatch.installed(am)
        tctx.options.update(keymux_fast_hooks=True)
        assert dispatch.installed(am)
        addon.done()
        assert not dispatch.installed(am)
