"""The limiter and the session registry on their own: pure, with an injected clock."""
from webui import sessions as sessions_module, throttle
from webui.sessions import SessionRegistry
from webui.throttle import LoginLimiter, Policy


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_reserved_guess_counts_until_it_succeeds():
    clock = Clock()
    limiter = LoginLimiter(Policy(free=2, base=1, cap=4, limit=5, window=100),
                           Policy(free=50, base=1, cap=1, limit=100, window=100), clock)
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    assert limiter.acquire("a") == 1       # a pause after ``free`` reservations
    assert limiter.failures("a") == 2 and limiter.failures() == 2
    limiter.succeeded("a")
    assert limiter.failures("a") == 0 and limiter.failures() == 1
    assert limiter.acquire("a") == 0


def test_the_pause_doubles_up_to_the_cap_then_the_window_locks():
    clock = Clock()
    limiter = LoginLimiter(Policy(free=1, base=1, cap=4, limit=5, window=100),
                           Policy(free=50, base=1, cap=1, limit=100, window=100), clock)
    waits = []
    for _ in range(4):
        assert limiter.acquire("a") == 0
        waits.append(limiter.acquire("a"))
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 4]
    assert limiter.acquire("a") == 0       # the 5th failure
    assert limiter.acquire("a") == 100 - clock.now  # locked until the window ends
    clock.now = 100
    assert limiter.acquire("a") == 0


def test_addresses_are_bounded(monkeypatch):
    monkeypatch.setattr(throttle, "MAX_ADDRESSES", 10)
    limiter = LoginLimiter(clock=Clock())
    for i in range(25):
        limiter.acquire(f"10.0.0.{i}")
    assert len(limiter._addresses) <= 10
    assert limiter.failures() == 25  # the global count forgets nothing


def test_sessions_end_one_all_or_by_age(monkeypatch):
    clock = Clock()
    registry = SessionRegistry(lifetime_s=50, clock=clock)
    a, b = registry.start("1.1.1.1"), registry.start("2.2.2.2")
    assert registry.check(a) and registry.check(b) and not registry.check("forged")
    assert not registry.check(None) and not registry.check(["x"])
    registry.end(a)
    assert not registry.check(a) and registry.check(b)
    clock.now += 50
    assert not registry.check(b)
    c = registry.start("3.3.3.3")
    assert [s.address for s in registry.live()] == ["3.3.3.3"]
    assert registry.end_all() == 1 and not registry.check(c)
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    ids = [registry.start("x") for _ in range(5)]
    assert len(registry.live()) == 3 and registry.check(ids[-1])
