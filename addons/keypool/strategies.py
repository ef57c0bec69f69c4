"""Selection strategies: pick one key among eligible candidates.

Each is a function ``(candidates, rng) -> KeyState``; candidates is non-empty. They run
synchronously on the event loop between two awaits, so picking and acquiring a key is
atomic with respect to other flows without any lock.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence, TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import KeyState


def round_robin(cands: Sequence["KeyState"], rng: random.Random) -> "KeyState":
    """Smooth weighted round robin (nginx): weights honoured, picks evenly interleaved."""
    total = 0.0
    best = None
    for k in cands:
        k.rr_current += k.spec.weight
        total += k.spec.weight
        if best is None or k.rr_current > best.rr_current:
            best = k
    best.rr_current -= total
    return best


def weighted(cands: Sequence["KeyState"], rng: random.Random) -> "KeyState":
    return rng.choices(cands, weights=[k.spec.weight for k in cands])[0]


def least_used(cands: Sequence["KeyState"], rng: random.Random) -> "KeyState":
    """Fewest requests so far (weight-adjusted); the longest idle key breaks ties."""
    return min(cands, key=lambda k: (k.requests / k.spec.weight, k.last_used))


def least_busy(cands: Sequence["KeyState"], rng: random.Random) -> "KeyState":
    """Fewest requests in flight (weight-adjusted); then the longest idle key."""
    return min(cands, key=lambda k: (k.in_flight / k.spec.weight, k.last_used))


def uniform(cands: Sequence["KeyState"], rng: random.Random) -> "KeyState":
    return cands[rng.randrange(len(cands))]


STRATEGIES: dict[str, Callable[[Sequence["KeyState"], random.Random], "KeyState"]] = {
    "round_robin": round_robin,
    "weighted": weighted,
    "least_used": least_used,
    "least_busy": least_busy,
    "random": uniform,
}
