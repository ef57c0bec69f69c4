"""Builders for unit tests: configs in code, without YAML."""
import asyncio
import time

from keypool.config import ClientSpec, Config, KeySpec, Routing
from keypool.providers import PRESETS, ProviderSpec


def key(name, provider="openai", secret=None, **kw):
    return KeySpec(name=name, provider=provider, secret=secret or f"sk-{name}-secret-0000", **kw)


def config(keys=(), clients=None, providers=(), strategy="round_robin"):
    table = dict(PRESETS)
    for p in providers:
        table[p.name] = p
    return Config(providers=table, keys=tuple(keys), clients=clients,
                  routing=Routing(strategy=strategy))


def local(name="local", models=("mock-*",), auth="bearer", **kw):
    return ProviderSpec(name, "http://127.0.0.1:9100/v1", auth=auth, models=tuple(models), **kw)


def client(name, token, models=()):
    return ClientSpec(name=name, token=token, models=tuple(models))


async def until(cond, timeout: float = 5.0) -> bool:
    """Wait for ``cond()`` (a function or a coroutine function) on the running loop: True
    once it holds, False past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (await cond() if asyncio.iscoroutinefunction(cond) else cond()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True
