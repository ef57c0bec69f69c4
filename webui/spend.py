"""Spend for the web UI: today's and this month's totals by key and client, spend per day
(the dashboard's chart), and per key, client, provider or model over a period (the usage
page). Live figures come from the gateway's ``/_keymux/stats`` ``spend`` section; when the
gateway cannot be reached, the same figures are read from the state store's ``spend_day``
table (written once a second, so at most a second behind). Pure but for ``Store.query``.

An entry is ``{"usd", "requests", "unknown", "tokens_in", "tokens_out", ...}``; ``usd`` is
None when no request of it had a known price: "unknown" is never shown as $0.
"""
from __future__ import annotations

import datetime as dt
import math

from keypool.periods import Periods
from keypool.spend import DIMS
from keypool.spend_sums import SUM_FIELDS

from .store import Store

CHART_DAYS = 30
CHART_SERIES = 8          # the biggest names get their own colour; the rest are "other"
CHART_BY = ("provider", "key")
OTHER = "other"
TABLE_PERIODS = ("today", "month", "30d")


def periods_of(snap) -> Periods:
    """The gateway's rule for "today" (``routing.daily_reset`` in ``routing.timezone``)."""
    if snap is not None and snap.config is not None:
        try:
            return Periods.of(snap.config.routing)
        except ValueError:
            pass
    return Periods()


def money(usd: float | None) -> str:
    """``$12.34``, ``$0.46``, ``$0.0123`` (three significant digits below a dime), ``–`` for None."""
    if usd is None:
        return "–"
    if usd >= 1:
        return f"${usd:,.2f}"
    if usd <= 0:
        return "$0.00"
    if usd < 1e-6:
        return "<$0.000001"
    decimals = 2 if usd >= 0.1 else min(8, 2 - math.floor(math.log10(usd)))
    text = f"{usd:.{decimals}f}".rstrip("0")
    return "$" + (text + "0" if text.endswith(".") or len(text.split(".")[1]) < 2 else text)


def entry(name: str | None, raw: dict | None) -> dict:
    """One figure as the UI shows it: ``usd`` None when nothing of it was priced."""
    raw = raw if isinstance(raw, dict) else {}
    e = {f: _num(raw.get(f)) for f in SUM_FIELDS}
    e["usd"] = None if e["requests"] and e["unknown"] >= e["requests"] else round(e["usd"], 8)
    if name is not None:
        e["name"] = name
    return e


def _num(v) -> float | int:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def ranked(by_name: dict | None) -> list[dict]:
    """Entries sorted by spend (the most first), unknown-only ones after the priced."""
    rows = [entry(str(n), v) for n, v in (by_name or {}).items()]
    rows.sort(key=lambda r: (-(r["usd"] or 0), -r["requests"], r["name"]))
    return rows


def _block(raw: dict | None) -> dict:
    raw = raw if isinstance(raw, dict) else {}
    return {"total": entry(None, raw.get("total")), "by_key": ranked(raw.get("by_key")),
            "by_client": ranked(raw.get("by_client"))}


def current(stats: dict | None, store: Store, per: Periods, now: float) -> dict:
    """Today and this month, total and by key and client: the gateway's figures, else the
    state store's."""
    raw = stats.get("spend") if isinstance(stats, dict) else None
    source = "gateway"
    if not (isinstance(raw, dict) and isinstance(raw.get("today"), dict)):
        raw, source = from_store(store, per, now), "store"
    today, month = _block(raw.get("today")), _block(raw.get("this_month"))
    return {"source": source, "day": str(raw.get("day") or ""),
            "month": str(raw.get("month") or ""),
            "timezone": str(raw.get("timezone") or per.timezone),
            "daily_reset": str(raw.get("daily_reset") or per.daily_reset),
            "today": today, "this_month": month,
            "keys": side_by_side(today["by_key"], month["by_key"]),
            "clients": side_by_side(today["by_client"], month["by_client"])}


def side_by_side(today: list[dict], month: list[dict]) -> list[dict]:
    """``{"name", "today", "month"}`` per name, sorted by spend today, then this month."""
    names = {r["name"]: None for r in today + month}
    t, m = {r["name"]: r for r in today}, {r["name"]: r for r in month}
    rows = [{"name": n, "today": t.get(n) or entry(n, None), "month": m.get(n) or entry(n, None)}
            for n in names]
    rows.sort(key=lambda r: (-(r["today"]["usd"] or 0), -(r["month"]["usd"] or 0),
                             -r["month"]["requests"], r["name"]))
    return rows


def _sums(store: Store, dim: str | None, where: str, params: list) -> dict:
    cols = ", ".join(f"SUM({f})" for f in SUM_FIELDS)
    group = f"{dim}, " if dim else "'', "
    rows = store.query(f"SELECT {group}{cols} FROM spend_day WHERE {where}"
                       + (f" GROUP BY {dim}" if dim else ""), params)
    return {name: dict(zip(SUM_FIELDS, sums)) for name, *sums in rows if sums[1]}


def from_store(store: Store, per: Periods, now: float) -> dict:
    """The stats ``spend`` shape (today and this month, by key and client) from ``spend_day``."""
    day, month = per.day_of(now), per.month_of(now)
    out = {"day": day, "month": month, "timezone": per.timezone, "daily_reset": per.daily_reset}
    for label, where, param in (("today", "day = ?", day), ("this_month", "day LIKE ?", month + "-%")):
        block = {f"by_{d}": _sums(store, d, where, [param]) for d in ("key", "client")}
        block["total"] = _sums(store, None, where, [param]).get("", {})
        out[label] = block
    return out


def day_labels(per: Periods, now: float, days: int = CHART_DAYS) -> list[str]:
    """The names of the last ``days`` days, oldest first (local dates: plain date steps)."""
    today = dt.date.fromisoformat(per.day_of(now))
    return [(today - dt.timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


def daily(store: Store, per: Periods, now: float, by: str = "provider",
          days: int = CHART_DAYS) -> dict:
    """USD per day for the chart: one series per ``by`` name (the biggest CHART_SERIES;
    the rest summed as "other"), and per day how many requests had no known price."""
    by = by if by in CHART_BY else "provider"
    labels = day_labels(per, now, days)
    index = {d: i for i, d in enumerate(labels)}
    rows = store.query(f"SELECT day, {by}, SUM(usd), SUM(unknown) FROM spend_day"
                       f" WHERE day >= ? AND day <= ? GROUP BY day, {by}", [labels[0], labels[-1]])
    per_name: dict[str, list[float]] = {}
    unknown = [0] * len(labels)
    for day, name, usd, unk in rows:
        if day not in index:
            continue
        per_name.setdefault(str(name), [0.0] * len(labels))[index[day]] += usd or 0.0
        unknown[index[day]] += unk or 0
    names = sorted(per_name, key=lambda n: (-sum(per_name[n]), n))
    series = [{"name": n, "usd": [round(v, 8) for v in per_name[n]]} for n in names[:CHART_SERIES]]
    if len(names) > CHART_SERIES:
        rest = [round(sum(per_name[n][i] for n in names[CHART_SERIES:]), 8)
                for i in range(len(labels))]
        series.append({"name": OTHER, "usd": rest})
    return {"by": by, "days": labels, "series": series, "unknown": unknown,
            "total": round(sum(sum(s["usd"]) for s in series), 8)}


def period_days(period: str, per: Periods, now: float) -> tuple[str, str]:
    """(first, last) day names of ``today``, ``month`` (this month so far) or ``30d``."""
    today = per.day_of(now)
    if period == "month":
        return per.month_of(now) + "-01", today
    if period == "30d":
        return day_labels(per, now)[0], today
    return today, today


def table(store: Store, dim: str, first: str, last: str) -> tuple[list[dict], dict]:
    """Spend per ``dim`` (key, client, provider, model) over the days ``first``..``last``,
    the most first, and the total."""
    dim = dim if dim in DIMS else "key"
    where, params = "day >= ? AND day <= ?", [first, last]
    rows = ranked(_sums(store, dim, where, params))
    return rows, entry(None, _sums(store, None, where, params).get(""))


def key_budget_hold(held_back: list[dict]) -> dict | None:
    """A key held back by its budget (reason ``budget`` in ``held_back``), or None."""
    for h in held_back or ():
        if isinstance(h, dict) and h.get("reason") == "budget":
            return h
    return None


def attach(rows: list[dict], view: dict) -> None:
    """Each dashboard row gains its key's spend today and this month, and its budget hold."""
    today = {r["name"]: r for r in view["today"]["by_key"]}
    month = {r["name"]: r for r in view["this_month"]["by_key"]}
    for row in rows:
        row["spend_today"] = today.get(row["name"]) or entry(row["name"], None)
        row["spend_month"] = month.get(row["name"]) or entry(row["name"], None)
        row["budget_hold"] = key_budget_hold(row.get("held_back") or [])


# -- template filters (registered in create_app)

def shown(e: dict | None) -> str:
    """An entry's spend in words: "unknown" when none of its requests had a price."""
    from .i18n import t
    if e and e.get("usd") is None and e.get("requests"):
        return t("unknown")
    return money((e or {}).get("usd") or 0.0)


def time_left(seconds: float) -> str:
    from .i18n import t
    if seconds < 120:
        return t("%(s)s s left", s=math.ceil(seconds))
    if seconds < 7200:
        return t("%(n)s min left", n=math.ceil(seconds / 60))
    if seconds < 172800:
        return t("%(n)s h left", n=math.ceil(seconds / 3600))
    return t("%(n)s d left", n=math.ceil(seconds / 86400))


def init_app(app) -> None:
    app.jinja_env.filters.update(money=money, spent=shown, time_left=time_left)
