"""Selection strategies: pick one key among eligible candidates.

Each is a function ``(candidates, rng) -> KeyState``; candidates is non-empty. They run
synchronously on the event loop between two awaits, so picking and acquiring a key is
atomic with respect to other flows without any lock.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence, TYPE_CHECKING

if TYPE_CHECKING:
    from .keystate import KeyState


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


def stagger(pool, index: int, count: int) -> None:
    """Start process ``index`` of ``count`` at its own place in each provider's round-robin
    cycle, so that processes picking at the same moment pick different keys (processes
    sharing one pool, keypool.shared; the cursor itself is not shared: that would cost a
    round trip per pick). Run once at start; moves ``rr_current`` only."""
    if count <= 1:
        return
    for keys in pool.by_provider.values():
        cands = [k for k in keys if k.spec.enabled]
        if len(cands) > 1:
            for _ in range(_phases(cands, count)[index % count]):
                round_robin(cands, pool.rng)


def _phases(cands, count: int) -> list[int]:
    """Each process's steps into the cycle: spread evenly, and, for unequal weights (whose
    cycle repeats the heavy keys), each next one where it meets the others' picks least."""
    scaled = [max(1, round(k.spec.weight * 1000)) for k in cands]
    period = sum(scaled) // math.gcd(*scaled)
    even = [i * period // count for i in range(count)]
    if len(set(scaled)) == 1 or period > 400 or count > period:
        return even
    cur, seq = [k.rr_current for k in cands], []
    for _ in range(period):  # one cycle of round_robin, on copies
        for i, k in enumerate(cands):
            cur[i] += k.spec.weight
        best = max(range(len(cands)), key=lambda i: cur[i])
        cur[best] -= sum(k.spec.weight for k in cands)
        seq.append(best)
    meet = [sum(seq[j] == seq[(j + d) % period] for j in range(period)) for d in range(period)]
    phases = [0]
    for i in range(1, count):
        free = [d for d in range(period) if d not in phases]
        phases.append(min(free, key=lambda d: (sum(meet[(d - q) % period] for q in phases),
                                               abs(d - even[i]))))
    return phases


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
