"""Leak scan: a full scenario through a real mitmdump (saved flows, debug logging, request
bodies logged) and the web UI, then every byte keymux produced is searched for every key
secret, client token and the admin token, raw and base64 (see leakscan.forms).

Scenario: OpenAI and Anthropic SDKs, streams and non-streams; 429, 401, 5xx and resets with
failover; every key failing (the client sees the gateway's error); wrong and missing client
tokens; a config reload that adds a key; upstreams that echo the key they were sent back in
a 4xx body, a 200 body, a header and an SSE event; the admin endpoints; the UI signed in
(dashboard, its APIs, the request log, keys, clients, the export page with default options,
a cooldown reset). Searched: the mitmdump log, the state directory (database, -wal; copied
while running and again after), the flows file, the UI's log, every answer of the gateway
and the UI (status, headers, body as received).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import anthropic
import httpx2 as httpx  # the SDKs here are built on httpx2
import openai
import pytest

from .harness import GatewayProcess, free_port
from .leakscan import Browser, Recording, files_under, forms, head, scan

KEYS = {"k1": "sk-leak-openai-one-A1b2C3d4E5", "k2": "sk-leak-openai-two-F6g7H8i9J0",
        "a1": "sk-ant-leak-one-K1l2M3n4O5p6", "a2": "sk-ant-leak-two-Q7r8S9t0U1v2"}
K3 = "sk-leak-after-reload-W3x4Y5z6"           # only in the config after the reload
ECHOED = {"e1": "sk-leak-echo-one-Z9y8X7w6V5", "e2": "sk-leak-echo-two-U4t3S2r1Q0",
          "ea1": "sk-ant-leak-echo-P9o8N7m6L5"}  # keys the mock echoes back
TOKENS = {"app": "kmx-leak-client-app-7f3e9a1c", "other": "kmx-leak-client-other-2b8d4c6e"}
WRONG_TOKEN = "kmx-leak-wrong-token-5a5a5a5a"
ADMIN = "kmx-leak-admin-token-9c9c9c9c9c"
CLAUDE = "claude-mock-1"
MSG = [{"role": "user", "content": "Say hello to the leak scan"}]


def config(mock_url: str, state: str, reloaded: bool = False) -> str:
    def key(name, provider, secret):
        return f"  - {{name: {name}, provider: {provider}, key: \"{secret}\"}}\n"
    keys = "".join(key(n, "mockant" if n.startswith("a") else "mock", s) for n, s in KEYS.items() if n != "k2")
    keys += key("k2", "mock", "${LEAK_KEY_2}")  # one secret from the environment
    keys += key("e1", "echo", ECHOED["e1"]) + key("e2", "echo", ECHOED["e2"]) + key("ea1", "echoant", ECHOED["ea1"])
    keys += key("k3", "mock", K3) if reloaded else ""
    return f"""version: 1
providers:
  mock: {{base_url: "{mock_url}/v1", models: ["gpt-*"], stream_usage: true}}
  mockant: {{base_url: "{mock_url}/v1", auth: x-api-key, models: ["claude-*"]}}
  echo: {{base_url: "{mock_url}/echo/v1", models: ["echo-*"], stream_usage: true}}
  echoant: {{base_url: "{mock_url}/echoant/v1", auth: x-api-key, models: ["claudecho-*"]}}
keys:
{keys}clients:
  - {{name: app, token: {TOKENS["app"]}}}
  - {{name: other, token: {TOKENS["other"]}}}
routing:
  cooldown: {{rate_limited_s: 1, server_error_s: 1, max_s: 2}}
state_dir: {state}
logging:
  bodies: true
"""


class Scenario:
    def __init__(self, mock, gw: GatewayProcess, seen: list):
        self.mock, self.gw, self.seen = mock, gw, seen

    def oai(self, token=TOKENS["app"]):
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=token, max_retries=0, timeout=20,
                             http_client=httpx.Client(transport=Recording(self.seen)))

    def ant(self, token=TOKENS["other"], provider=None):
        headers = {"x-keymux-provider": provider} if provider else None
        return anthropic.Anthropic(base_url=self.gw.url, api_key=token, max_retries=0, timeout=20,
                                   default_headers=headers, http_client=httpx.Client(transport=Recording(self.seen)))

    def chat(self, model="gpt-4o-mini", stream=False, token=TOKENS["app"]) -> str:
        c = self.oai(token)
        if not stream:
            return c.chat.completions.create(model=model, messages=MSG).choices[0].message.content
        chunks = c.chat.completions.create(model=model, messages=MSG, stream=True,
                                           stream_options={"include_usage": True})
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    def claude(self, model=CLAUDE, stream=False, provider=None) -> str:
        c = self.ant(provider=provider)
        if not stream:
            return c.messages.create(model=model, max_tokens=16, messages=MSG).content[0].text
        with c.messages.stream(model=model, max_tokens=16, messages=MSG) as s:
            return "".join(s.text_stream)

    def failing(self, fn, status: int) -> None:
        with pytest.raises(openai.APIStatusError) as e:
            fn()
        assert e.value.status_code == status, e.value.response.text

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        return self.call("GET", path, None, headers)

    def call(self, method: str, path: str, body: dict | None, headers: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.gw.url + path, data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, pairs, raw = r.status, r.getheaders(), r.read()
        except urllib.error.HTTPError as e:
            status, pairs, raw = e.code, e.headers.items(), e.read()
        self.seen.append((f"gateway {method} {path}", head(status, [(k.encode(), v.encode()) for k, v in pairs]) + raw))
        return status, raw

    def run(self, reload) -> None:
        m = self.mock
        # plain traffic, both SDKs, streams and not
        assert self.chat() and self.chat(stream=True) and self.claude() and self.claude(stream=True)
        # failures with failover: each request still succeeds on the other key
        for behaviour in ({"status": 429, "headers": {"retry-after": "1"}}, {"status": 503}, {"reset": True}):
            m.set_behavior(KEYS["k1"], times=1, **behaviour)  # one of the two requests meets it
            assert self.chat(stream=True) and self.chat()
        m.set_behavior(KEYS["a1"], status=529, times=1)
        assert self.claude(stream=True) and self.claude()
        # every key fails: the client sees the gateway's own error
        m.set_behavior(KEYS["k1"], status=500)
        m.set_behavior(KEYS["k2"], status=500)
        with pytest.raises(openai.APIStatusError):
            self.chat()
        m.set_behavior(KEYS["k1"])
        m.set_behavior(KEYS["k2"], status=401, times=1)  # k2 is dead from now on
        self.until_served()
        assert self.chat() and self.chat()
        # wrong and missing client tokens, a model nobody serves
        self.failing(lambda: self.chat(token=WRONG_TOKEN), 401)
        assert self.call("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSG})[0] == 401
        self.failing(lambda: self.chat(model="nobody-serves-this"), 404)
        # echoing upstreams: a 401 echo fails over, then 200 bodies, headers and streams echo
        m.set_behavior(ECHOED["e1"], status=401, times=1, echo=["body", "header"])
        m.set_behavior(ECHOED["e2"], echo=["body", "header", "sse"])
        m.set_behavior(ECHOED["ea1"], echo=["body", "header", "sse"])
        for stream in (False, True, False, True):
            self.chat(model="echo-model", stream=stream)
            self.claude(model="claudecho-1", stream=stream, provider="echoant")
        m.set_behavior(ECHOED["e2"], status=400, echo=["body", "header"])  # passed on to the client
        m.set_behavior(ECHOED["e1"], status=400, echo=["body", "header"])
        self.failing(lambda: self.chat(model="echo-model"), 400)
        # a reload that adds a key, then traffic that uses it
        reload()
        for _ in range(3):
            assert self.chat(stream=True) and self.chat()
        assert self.claude()

    def until_served(self, within: float = 15) -> None:
        """After every key failed: wait out the cooldowns (or a provider backoff)."""
        deadline = time.monotonic() + within
        while True:
            try:
                self.chat()
                return
            except openai.APIStatusError:
                assert time.monotonic() < deadline, "the pool did not recover"
                time.sleep(0.3)

    def admin_surface(self) -> None:
        for path in ("/health", "/_keymux/health", "/metrics", "/_keymux/stats"):
            self.get(path)
        for path in ("/_keymux/stats", "/_keymux/health", "/metrics"):
            self.get(path, {"x-keymux-admin-token": ADMIN})
        self.get("/v1/models", {"authorization": f"Bearer {TOKENS['app']}"})
        self.get("/_keymux/stats", {"authorization": f"Bearer {WRONG_TOKEN}"})


def _rows(db, within: float = 15) -> int:
    """Wait until the request log stops growing (the store writes in batches)."""
    deadline, last, n = time.monotonic() + within, -1, 0
    while time.monotonic() < deadline:
        try:
            n = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM requests").fetchone()[0]
        except sqlite3.OperationalError:
            n = 0
        if n and n == last:
            return n
        last = n
        time.sleep(0.5)
    return n


def _use_ui(ui: Browser, key_names: list[str]) -> None:
    ui.login(ADMIN)
    pages = ["/", "/api/stats", "/api/history?range=hour", "/requests/?range=all", "/requests/?status=error&range=all",
             "/keys/", "/keys/new", "/clients/", "/transfer/", "/transfer/export", "/transfer/export.yaml",
             "/transfer/export.yaml?download=1"]
    pages += [f"/keys/{n}/edit" for n in key_names] + [f"/clients/{n}/edit" for n in TOKENS]
    for page in pages:
        status, _ = ui.fetch(page)
        assert status == 200, page
    status, _ = ui.fetch("/api/keys/k2/reset", {}, {"X-CSRF-Token": ui.csrf})  # through the gateway's admin API
    assert status == 200


@pytest.fixture(scope="module")
def produced(mock, tmp_path_factory, confdir):
    """Run the scenario; every artifact keymux produced, as (where, bytes)."""
    mock.reset()  # a module fixture runs before the per-test reset: clear earlier modules' behaviours
    work = tmp_path_factory.mktemp("leak")
    state, flows = work / "state", work / "flows.mitm"
    env = {"KEYMUX_ADMIN_TOKEN": ADMIN, "LEAK_KEY_2": KEYS["k2"]}
    seen: list[tuple[str, bytes]] = []
    gw = GatewayProcess(work, config(mock.base_url, str(state)), env=env, confdir=confdir,
                        args=("-w", str(flows), "--set", "termlog_verbosity=debug", "--set", "flow_detail=4"))
    ui_port, ui_log = free_port(), open(work / "webui.log", "wb")
    ui_proc = subprocess.Popen([sys.executable, "-m", "webui", "--config", str(gw.config), "--port", str(ui_port),
                                "--gateway", gw.url, "-v"], stdout=ui_log, stderr=subprocess.STDOUT,
                               env={**os.environ, **env}, cwd=work)
    try:
        gw.start()
        sc = Scenario(mock, gw, seen)

        def reload():
            gw.config.write_text(config(mock.base_url, str(state), reloaded=True))
            deadline = time.monotonic() + 10
            while json.loads(sc.get("/_keymux/health")[1])["keys"]["total"] != 8:
                assert time.monotonic() < deadline, "the reload was not picked up"
                time.sleep(0.2)

        sc.run(reload)
        sc.admin_surface()
        assert _rows(state / "keymux.db") > 20
        while_running = files_under(state, "state dir (while running)")
        ui = Browser(f"http://127.0.0.1:{ui_port}", seen)
        deadline = time.monotonic() + 20
        while ui_proc.poll() is None and time.monotonic() < deadline:
            try:
                ui.fetch("/login")
                break
            except OSError:
                time.sleep(0.2)
        _use_ui(ui, [*KEYS, "k3", *ECHOED])
    finally:
        if ui_proc.poll() is None:
            ui_proc.terminate()
            ui_proc.wait(10)
        ui_log.close()
        gw.stop()
    out = seen + while_running + files_under(state, "state dir (after stop)")
    out += [("mitmdump log", gw.log_path.read_bytes()), ("flows file", flows.read_bytes()),
            ("web UI log", (work / "webui.log").read_bytes())]
    _check_coverage(dict(out))
    return out


def _check_coverage(by_where: dict) -> None:
    """The scan only proves something if the places it searched really hold the traffic."""
    assert len(by_where["flows file"]) > 10_000 and len(by_where["mitmdump log"]) > 10_000
    assert b"Hello from the keymux mock upstream" in by_where["UI GET /requests/?range=all"]  # bodies logged
    assert b"${" in by_where["UI GET /transfer/export"]  # the default export: placeholders
    wal = [w for w in by_where if w.startswith("state dir (while running)/keymux.db-wal")]
    assert wal and any(by_where[w] for w in wal)
    for where in ("gateway GET /metrics", "gateway GET /_keymux/health", "UI GET /api/stats", "web UI log",
                  "state dir (after stop)/keymux.db"):
        assert by_where.get(where), where


def test_no_pool_key_or_client_token_anywhere(produced):
    secrets = {**KEYS, "k3": K3, **{f"client {n}": t for n, t in TOKENS.items()},
               "wrong client token": WRONG_TOKEN}
    hits = scan(produced, secrets)
    assert not hits, f"{len(hits)} leak(s):\n" + "\n".join(hits[:40])


def test_no_admin_token_anywhere(produced):
    hits = scan(produced, {"admin token": ADMIN})
    assert not hits, f"{len(hits)} leak(s):\n" + "\n".join(hits[:40])


def test_no_echoed_key_anywhere(produced):
    hits = scan(produced, {f"echoed {n}": s for n, s in ECHOED.items()})
    assert not hits, f"{len(hits)} leak(s):\n" + "\n".join(hits[:40])


def test_the_scan_finds_what_it_looks_for():
    """The scanner itself: raw, base64 at any alignment, urlsafe, bearer and basic forms."""
    import base64
    s = KEYS["k1"]
    planted = [("raw", f"x{s}y".encode()),
               ("b64 shifted", base64.b64encode(b"ab" + s.encode() + b"cd")),
               ("urlsafe", base64.urlsafe_b64encode(b"Authorization: Bearer " + s.encode())),
               ("basic", b"Basic " + base64.b64encode(b"user:" + s.encode()))]
    hits = scan(planted, {"k1": s})
    assert {h.split(" in ")[1].split(" (")[0] for h in hits} == {"raw", "b64 shifted", "urlsafe", "basic"}
    assert not scan([("clean", b"sk-\xe2\x80\xa6E5 " + base64.b64encode(b"other"))], {"k1": s})
    assert len(forms(s)) > 30
