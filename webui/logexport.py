"""The request log as a download: CSV (a spreadsheet's) or JSONL (a script's), streamed;
also any flat table (the audit log) through :func:`table_response`.

No secret is in a row (the gateway stores none; the caller scrubs again). A CSV cell that
a spreadsheet would run as a formula (model names and error messages come from clients)
is prefixed with an apostrophe.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Iterable, Iterator

from flask import Response, stream_with_context

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
COLUMNS = ("time", "status", "client", "model", "key", "provider", "path", "error_code", "error",
           "attempts", "latency_s", "ttfb_s", "tokens_in", "tokens_out", "cost_usd", "stream", "id",
           "gateway")
BODY_COLUMNS = ("request_body", "response_body")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def record(row: dict, bodies: bool) -> dict:
    """One exported row: times in ISO 8601 UTC, attempts as a list."""
    out = {c: row.get(c) for c in COLUMNS if c not in ("time", "attempts")}
    out["time"] = iso(row.get("ts"))
    out["attempts"] = row.get("attempts") or []
    out["stream"] = bool(out["stream"])
    if bodies:
        for c in BODY_COLUMNS:
            out[c] = row.get(c)
    return out


def _cell(value) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return "" if value is None else value


def _story(attempts: list[dict]) -> str:
    """``a:429 > b:200``: each attempt's key and status (or error)."""
    return " > ".join(f"{a.get('key') or '-'}:{a.get('status') or a.get('error') or '-'}"
                      for a in attempts)


def csv_lines(rows: Iterable[dict], bodies: bool) -> Iterator[str]:
    columns = COLUMNS + (BODY_COLUMNS if bodies else ())
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        r = record(row, bodies)
        r["attempts"] = _story(r["attempts"])
        writer.writerow([_cell(r[c]) for c in columns])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def jsonl_lines(rows: Iterable[dict], bodies: bool) -> Iterator[str]:
    for row in rows:
        yield json.dumps(record(row, bodies), ensure_ascii=False) + "\n"


def response(fmt: str, rows: Iterable[dict], bodies: bool) -> Response:
    lines = csv_lines(rows, bodies) if fmt == "csv" else jsonl_lines(rows, bodies)
    return download(fmt, lines, "keymux-requests")


def download(fmt: str, lines: Iterable[str], stem: str) -> Response:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Response(stream_with_context(lines), mimetype=FORMATS[fmt], headers={
        "Content-Disposition": f'attachment; filename="{stem}-{stamp}.{fmt}"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def table_lines(fmt: str, rows: Iterable[dict], columns: tuple[str, ...]) -> Iterator[str]:
    """Any flat rows (already in their exported form) as CSV or JSONL lines."""
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n"
        return
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def table_response(fmt: str, rows: Iterable[dict], columns: tuple[str, ...], stem: str) -> Response:
    return download(fmt, table_lines(fmt, rows, columns), stem)
