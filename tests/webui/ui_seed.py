"""Fill a state store (schema.sql, as the gateway writes it) with made-up traffic."""
from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "addons" / "keypool" / "store" / "schema.sql"


def create(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA.read_text())


def add_request(db: Path, ts: float, key: str | None, status: int, *, client: str | None = None,
                model: str = "gpt-4o-mini", provider: str = "openai", latency_s: float = 0.5,
                attempts: list | None = None, tokens=(10, 20), body: str | None = None) -> None:
    attempts = attempts if attempts is not None else [
        {"key": key, "status": status, "error": None, "latency_s": latency_s}]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO requests (ts, client, key, provider, model, status, attempts, latency_s,"
            " ttfb_s, tokens_in, tokens_out, stream, request_body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ts, client, key, provider, model, status, json.dumps(attempts), latency_s,
             latency_s / 2, tokens[0], tokens[1], 0, body))


def add_minute(db: Path, key: str, minute: int, requests: int, *, provider: str = "openai",
               latency_sum: float | None = None, tokens=(0, 0), successes: int | None = None) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO usage_minute (key, minute, provider, requests, successes, tokens_in,"
            " tokens_out, latency_sum) VALUES (?,?,?,?,?,?,?,?)",
            (key, minute, provider, requests, requests if successes is None else successes,
             tokens[0], tokens[1], latency_sum if latency_sum is not None else 0.4 * requests))


def add_key_state(db: Path, key: str, secret: str, counters: dict) -> None:
    """A key_state row as the gateway saves it (fingerprint of ``secret``, lifetime counters)."""
    from keypool.pool import fingerprint
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT OR REPLACE INTO key_state (key, fingerprint, counters, updated)"
                     " VALUES (?,?,?,?)", (key, fingerprint(secret), json.dumps(counters), 0.0))


def synthetic_day(db: Path, now: float, keys: list[tuple[str, str]], seed: int = 7) -> None:
    """A day of plausible traffic per (key, provider), and a few hundred request log rows."""
    rng = random.Random(seed)
    create(db)
    end = int(now // 60)
    with sqlite3.connect(db) as conn:
        for i, (key, provider) in enumerate(keys):
            base = 6 + 5 * i
            rows = []
            for m in range(end - 1440, end + 1):
                wave = 1 + 0.6 * math.sin((m % 1440) / 1440 * 6.283 + i)
                n = max(0, int(rng.gauss(base * wave, 2)))
                if n:
                    lat = n * rng.uniform(0.35, 0.9 + 0.2 * i)
                    rows.append((key, m, provider, n, n - rng.randint(0, min(2, n)), n * 180,
                                 n * 260, lat))
            conn.executemany(
                "INSERT INTO usage_minute (key, minute, provider, requests, successes, tokens_in,"
                " tokens_out, latency_sum) VALUES (?,?,?,?,?,?,?,?)", rows)
        models = ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "text-embedding-3-small"]
        clients = ["web-app", "batch-jobs", None]
        reqs = []
        for j in range(240):
            ts = now - j * 13.7
            key, provider = keys[j % len(keys)]
            status = rng.choice([200] * 12 + [429, 500])
            attempts = [{"key": key, "status": status, "error": None,
                         "latency_s": round(rng.uniform(0.2, 1.8), 3)}]
            if status != 200 and len(keys) > 1 and j % 5:
                other = keys[(j + 1) % len(keys)][0]
                attempts.append({"key": other, "status": 200, "error": None,
                                 "latency_s": round(rng.uniform(0.2, 1.2), 3)})
                key, status = other, 200
            lat = sum(a["latency_s"] for a in attempts)
            reqs.append((ts, clients[j % 3], key, provider, models[j % len(models)], status,
                         json.dumps(attempts), lat, lat / 3, rng.randint(20, 900),
                         rng.randint(10, 600), j % 4 == 0))
        conn.executemany(
            "INSERT INTO requests (ts, client, key, provider, model, status, attempts, latency_s,"
            " ttfb_s, tokens_in, tokens_out, stream) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", reqs)


def add_spend(db: Path, day: str, key: str, usd: float, *, client: str = "app",
              provider: str = "openai", model: str = "gpt-4o", requests: int = 1,
              unknown: int = 0, tokens=(100, 50), cache_read: int = 0) -> None:
    """A ``spend_day`` row as the gateway's ledger writes it (added to an existing row)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO spend_day (day, key, client, provider, model, usd, requests, unknown,"
            " tokens_in, tokens_out, cache_read) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (day, key, client, provider, model) DO UPDATE SET"
            " usd = usd + excluded.usd, requests = requests + excluded.requests,"
            " unknown = unknown + excluded.unknown, tokens_in = tokens_in + excluded.tokens_in,"
            " tokens_out = tokens_out + excluded.tokens_out",
            (day, key, client, provider, model, usd, requests, unknown, tokens[0], tokens[1],
             cache_read))


def synthetic_spend(db: Path, now: float, keys: list[tuple[str, str]], days: int = 30,
                    seed: int = 11) -> None:
    """A month of plausible spend per (key, provider) and a few clients, days in UTC."""
    import datetime as dt
    rng = random.Random(seed)
    create(db)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    for i in range(days):
        day = (today - dt.timedelta(days=days - 1 - i)).isoformat()
        for j, (key, provider) in enumerate(keys):
            for client in ("web-app", "batch-jobs", "-"):
                n = rng.randint(5, 40)
                usd = n * rng.uniform(0.002, 0.02) * (1 + j) * (1.5 if client == "batch-jobs" else 1)
                add_spend(db, day, key, round(usd, 6), client=client, provider=provider,
                          model="gpt-4o-mini", requests=n, unknown=rng.choice([0, 0, 0, 1]),
                          tokens=(n * 400, n * 150))
