"""mitmproxy's hook dispatch, planned once per hook name instead of searched per event.

mitmproxy 12.2.3's ``AddonManager.trigger_event`` walks the whole addon chain for every
event: per addon a ``safecall`` context manager, an ``invoke_addon`` coroutine, two
generators (``traverse``, ``_iter_hooks``), a ``getattr`` and ``event.args()``. An HTTP
request fires eight events (four hooks, each followed by ``update``) over ~45 addons, and
most addons handle none of them: measured, that walk was over half of plain mitmdump's CPU
per small request. ``install`` replaces ``trigger_event`` on the manager instance with one
that keeps, per hook name, the addons that define the hook, and calls only those.

Kept as mitmproxy does it: chain order, nested addons right after their parent (as
``traverse`` yields them); an exception in a hook is logged by mitmproxy's own ``safecall``
and skips the rest of that top-level addon's hooks; ``AddonHalt`` ends the event;
``OptionsError`` and ``BaseException`` propagate; the hook is looked up when it is called,
so a rebound method is the one that runs. A plan is dropped whenever the chain changes:
through ``register``, ``remove``, ``clear``, ``add`` (how mitmproxy's docs require addons to
manage sub-addons; script reloads go through them too), or when ``chain`` is rebound or
changes length behind them. Lifecycle events (load, configure,
running, done) and hooks some addon defines as something not callable (mitmproxy reports
those) take mitmproxy's own path. ``uninstall`` puts mitmproxy's dispatch back.
"""
from __future__ import annotations

import inspect
import logging
import types

logger = logging.getLogger("keymux")
LIFECYCLE = frozenset({"load", "configure", "running", "done"})
_CHANGES = ("register", "remove", "clear", "add")  # AddonManager methods that alter the chain
MARK = "keymux_dispatch"  # the installed Dispatch, on the manager instance


class Dispatch:
    """One manager's planned dispatch: per hook name, the addons (grouped by top-level
    addon) that define it."""

    def __init__(self, manager, traverse, safecall, exceptions) -> None:
        self.manager = manager
        self.original = manager.trigger_event  # mitmproxy's own (the class's), bound
        self._traverse, self._safecall = traverse, safecall
        self._halt, self._options_error = exceptions.AddonHalt, exceptions.OptionsError
        self.plans: dict[str, tuple | None] = {}  # None: take mitmproxy's own path
        self._chain: tuple[list, int] = (manager.chain, len(manager.chain))  # planned over

    def plan(self, name: str) -> tuple | None:
        groups = []
        for top in self.manager.chain:
            found = []
            try:
                for addon in self._traverse([top]):
                    hook = getattr(addon, name, None)
                    if not hook or isinstance(hook, types.ModuleType):  # mitmproxy skips them
                        continue
                    if not callable(hook):
                        return None  # mitmproxy's own dispatch reports it, every time
                    found.append(addon)
            except Exception:  # an addon whose lookup raises: mitmproxy's path logs it
                return None
            if found:
                groups.append(tuple(found))
        return tuple(groups)

    async def trigger_event(self, event) -> None:
        name = event.name
        if name in LIFECYCLE:  # rare, and addons may join the chain while they run
            self.plans.clear()
            return await self.original(event)
        chain = self.manager.chain
        if chain is not self._chain[0] or len(chain) != self._chain[1]:
            # rebound or resized behind the manager's methods (clientauth moves itself first)
            self.plans.clear()
            self._chain = (chain, len(chain))
        try:
            groups = self.plans[name]
        except KeyError:
            groups = self.plans[name] = self.plan(name)
        if groups is None:
            return await self.original(event)
        if not groups:
            return None
        args = event.args()
        for group in groups:  # one safecall per top-level addon, as mitmproxy has it
            try:
                for addon in group:
                    hook = getattr(addon, name, None)
                    if hook:
                        res = hook(*args)
                        if res is not None and inspect.isawaitable(res):
                            await res
            except self._halt:
                return None
            except self._options_error:
                raise
            except Exception:
                with self._safecall():  # logs "Addon error: ..." with the traceback
                    raise
        return None

    def changed(self) -> None:
        self.plans.clear()


def install(manager) -> bool:
    """Plan ``manager``'s dispatch (idempotent); False when this mitmproxy's dispatch is not
    the one this module was written against (then nothing changes)."""
    if getattr(manager, MARK, None) is not None:
        return True
    try:
        from mitmproxy import addonmanager, exceptions
    except ImportError:  # pragma: no cover - mitmproxy is always there in the addon
        return False
    if not fits(addonmanager):
        logger.warning("keymux: this mitmproxy's addon dispatch differs from 12.2.3's: "
                       "hooks are dispatched by mitmproxy itself")
        return False
    d = Dispatch(manager, addonmanager.traverse, addonmanager.safecall, exceptions)
    for method in _CHANGES:
        setattr(manager, method, _dropping_plans(getattr(manager, method), d))
    manager.trigger_event = d.trigger_event
    setattr(manager, MARK, d)
    logger.info("keymux: mitmproxy's hooks go only to the addons that define them "
                "(--set keymux_fast_hooks=false: mitmproxy's own dispatch)")
    return True


def uninstall(manager) -> None:
    """mitmproxy's own dispatch again (the instance attributes go; the class's remain)."""
    if getattr(manager, MARK, None) is None:
        return
    for attr in (*_CHANGES, "trigger_event", MARK):
        manager.__dict__.pop(attr, None)


def installed(manager) -> bool:
    return getattr(manager, MARK, None) is not None


def fits(addonmanager) -> bool:
    """mitmproxy's trigger_event is the chain walk this module reproduces."""
    try:
        trigger = inspect.getsource(addonmanager.AddonManager.trigger_event)
        invoke = inspect.getsource(addonmanager.AddonManager.invoke_addon)
        hooks = inspect.getsource(addonmanager.AddonManager._iter_hooks)
    except (AttributeError, OSError, TypeError):
        return False
    return ("for i in self.chain:" in trigger and "with safecall():" in trigger
            and "except exceptions.AddonHalt:" in trigger
            and "self._iter_hooks(addon, event)" in invoke and "func(*event.args())" in invoke
            and "traverse([addon])" in hooks and "getattr(a, event.name, None)" in hooks)


def _dropping_plans(method, d: Dispatch):
    def call(*args, **kwargs):
        d.changed()
        try:
            return method(*args, **kwargs)
        finally:
            d.changed()  # again: ``add`` appends to the chain after ``register`` returns
    call.__name__ = method.__name__
    return call
