"""A small client for mitmweb's HTTP API (mitmproxy 12.2.3, ``mitmproxy/tools/web/app.py``).

    with GatewayProcess(work, config, web=True) as gw:
        web = MitmWeb.of(gw)
        web.flows()                     # GET /flows: the flow list as JSON, as the UI gets it
        web.content(fid, "request")     # GET /flows/<id>/request/content.data: the raw body
        web.dump_flows()                # GET /flows/dump: every flow, mitmproxy's -w format
        web.command("keymux.keys")      # POST /commands/<name>: a command's {"value": ...}

Authentication: every request carries ``Authorization: Bearer <web_password>`` (mitmweb
also takes ``?token=``). POSTs additionally pass tornado's XSRF check: the
``_mitmproxy_xsrf`` cookie and the ``X-XSRFToken`` header must carry the same value, which
the client simply makes up; mitmweb also refuses a POST whose ``Sec-Fetch-Site`` is
cross-site (never sent here). Errors raise ``urllib.error.HTTPError``.
"""
from __future__ import annotations

import io
import json
import secrets
import urllib.parse
import urllib.request

from mitmproxy import io as mitmio


class MitmWeb:
    def __init__(self, url: str, password: str, timeout: float = 5.0):
        self.url, self.password, self.timeout = url.rstrip("/"), password, timeout

    @classmethod
    def of(cls, gw) -> "MitmWeb":
        """The API of a ``harness.GatewayProcess`` started with ``web=True``."""
        return cls(gw.web_url, gw.web_password)

    def raw(self, path: str, *, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> bytes:
        h = {"Authorization": f"Bearer {self.password}", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return r.read()

    def flows(self) -> list[dict]:
        """Every flow as mitmweb's list shows it (``flow_to_json``)."""
        return json.loads(self.raw("/flows"))

    def flow(self, flow_id: str) -> dict | None:
        return next((f for f in self.flows() if f["id"] == flow_id), None)

    def content(self, flow_id: str, message: str = "request") -> bytes:
        """A message's body as mitmweb serves it (``message``: request or response)."""
        return self.raw(f"/flows/{flow_id}/{message}/content.data")

    def dump(self, flow_filter: str | None = None) -> bytes:
        """Every flow (or those matching a mitmproxy filter) in the ``-w`` format."""
        query = "" if flow_filter is None else "?" + urllib.parse.urlencode({"filter": flow_filter})
        return self.raw("/flows/dump" + query)

    def dump_flows(self, flow_filter: str | None = None) -> list:
        """``dump`` read back into mitmproxy flow objects."""
        return list(mitmio.FlowReader(io.BytesIO(self.dump(flow_filter))).stream())

    def command(self, name: str, *args: str) -> dict:
        """Run a mitmproxy command as mitmweb's command bar does: ``{"value": result}``
        or ``{"error": message}``. Arguments are strings, parsed by the command's types."""
        xsrf = secrets.token_hex(16)
        return json.loads(self.raw(
            f"/commands/{name}", method="POST", body=json.dumps({"arguments": list(args)}).encode(),
            headers={"Content-Type": "application/json", "X-XSRFToken": xsrf,
                     "Cookie": f"_mitmproxy_xsrf={xsrf}"}))

    def clear(self) -> None:
        """Drop every flow from mitmweb's list (POST /clear)."""
        xsrf = secrets.token_hex(16)
        self.raw("/clear", method="POST", body=b"",
                 headers={"X-XSRFToken": xsrf, "Cookie": f"_mitmproxy_xsrf={xsrf}"})
