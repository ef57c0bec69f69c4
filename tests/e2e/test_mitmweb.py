"""What a mitmweb user sees of keymux's traffic, read through mitmweb's own HTTP API and in
its UI in headless Chromium: a request re-issued after a 429, its failed attempt, a stream,
a refusal, and mitmweb's own Replay button (issue 10's "done when").

Screenshots go to the test's tmp dir; with KEYMUX_UPDATE_SCREENSHOTS=1 also to
docs/screenshots/ (that is how the ones in docs/mitmweb.md were made).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from .conftest import CLIENT_TOKEN, K1, K2, SECRETS, pool_yaml
from .harness import ROOT, GatewayProcess, get, wait_for
from .mitmweb import MitmWeb

CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
"""
WRONG = "kmx-wrong-token-mitmweb-0000"
ASK = dict(model="mock/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
CHROMIUM = Path("/usr/bin/chromium")
DOCS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def web(mock, tmp_path_factory, confdir):
    """mitmweb + keymux after: a request re-issued from k1 (429) to k2, a stream, a 401."""
    work = tmp_path_factory.mktemp("mitmweb")
    mock.reset()
    mock.set_behavior(K1, status=429, headers={"Retry-After": "30"})
    with GatewayProcess(work, pool_yaml(mock.base_url, CLIENTS), env={"MOCK_KEY_2": K2},
                        confdir=confdir, web=True) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0,
                               timeout=20)
        for _ in range(4):  # until k1 was tried once (round-robin may start on k2)
            assert client.chat.completions.create(**ASK).choices[0].message.content
            if mock.count(K1):
                break
        assert mock.count(K1) == 1
        assert list(client.chat.completions.create(**ASK, stream=True))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key=WRONG, max_retries=0) \
                .chat.completions.create(**ASK)
        api = MitmWeb.of(gw)
        assert wait_for(lambda: len(api.flows()) >= 5, 10), api.flows()  # attempts publish late
        yield gw, api, mock


def by_comment(api: MitmWeb, prefix: str) -> list[dict]:
    return [f for f in api.flows() if f["comment"].startswith(prefix)]


def header(message: dict, name: str) -> str | None:
    return next((v for k, v in message["headers"] if k.lower() == name), None)


def test_the_list_names_keys_and_outcomes(web):
    _, api, mock = web
    [attempt] = by_comment(api, "attempt 1 of 2 for POST /v1/chat/completions: k1 429")
    assert attempt["response"]["status_code"] == 429 and attempt["marked"] == "❌"
    [client] = by_comment(api, "k1 429 → k2 200")
    assert client["marked"] == "🔁" and client["response"]["status_code"] == 200
    [refused] = [f for f in api.flows() if (f.get("response") or {}).get("status_code") == 401]
    assert refused["request"]["host"] == "keymux" and refused["marked"] == "⛔"
    assert refused["comment"] == "401 missing or invalid client token"
    assert refused["server_conn"]["address"][0] == "keymux"  # not the reverse target


def test_the_attempt_is_linked_to_its_client_flow(web):
    _, api, _ = web
    [attempt] = by_comment(api, "attempt 1 of 2")
    [client] = by_comment(api, "k1 429 → k2 200")
    saved = {f.id: f for f in api.dump_flows()}
    assert saved[attempt["id"]].metadata["keymux"]["attempt_of"] == client["id"]
    assert saved[client["id"]].metadata["keymux"]["attempt_flows"] == [attempt["id"]]
    assert saved[attempt["id"]].response.content  # the upstream's 429 body, kept


def test_flows_show_the_request_as_sent_and_the_real_server(web):
    _, api, mock = web
    host, port = urlsplit(mock.base_url).hostname, urlsplit(mock.base_url).port
    for f in by_comment(api, "attempt 1 of 2") + by_comment(api, "k1 429 → k2 200"):
        assert f["request"]["host"] == host and f["request"]["port"] == port
        assert f["server_conn"]["address"] == [host, port]
        assert f["server_conn"]["peername"][1] == port
        assert header(f["request"], "authorization") in ("Bearer sk-…0001", "Bearer sk-…0002")
        assert json.loads(api.content(f["id"], "request"))["model"] == "gpt-4o-mini"
        assert header(f["request"], "connection") is None  # hop-by-hop: never sent on
        times = (f["request"]["timestamp_start"], f["server_conn"]["timestamp_start"],
                 f["response"]["timestamp_start"], f["response"]["timestamp_end"])
        assert list(times) == sorted(times), times  # the upstream's own, in order


def test_a_stream_can_be_read(web):
    _, api, _ = web
    [stream] = [f for f in api.flows() if f.get("response") and (header(
        f["response"], "content-type") or "").startswith("text/event-stream")]
    body = api.content(stream["id"], "response")
    assert body.startswith(b"data: ") and b"[DONE]" in body
    assert stream["comment"].startswith("k2 200")


def test_no_secret_in_any_flow(web):
    _, api, _ = web
    listed, dumped = json.dumps(api.flows()).encode(), api.dump()
    for secret in (CLIENT_TOKEN, WRONG, *SECRETS):
        assert secret.encode() not in listed and secret.encode() not in dumped


def test_mitmwebs_replay_button_goes_back_through_keymux(web):
    """A recorded flow holds a masked client token and a provider URL; mitmweb's Replay
    sends it back through keymux's hooks, which refuse it (its Host is the provider's, its
    token masked): the provider is never contacted with anything mitmweb had (use
    keymux.replay to re-send, see docs/commands.md)."""
    gw, api, mock = web
    known = {f["id"] for f in api.flows()}
    openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0) \
        .chat.completions.create(**ASK)
    [client] = [f for f in api.flows() if f["id"] not in known]  # its own: the others stay
    before = mock.count()
    api.replay(client["id"])

    def replayed():
        f = api.flow(client["id"])
        return f if f and f["is_replay"] == "request" and f.get("response") else None
    assert wait_for(replayed, 10), api.flow(client["id"])
    f = replayed()
    # The recorded Host is the provider's: refused before the token is even looked at.
    assert f["response"]["status_code"] == 403 and f["request"]["host"] == "keymux", f
    assert mock.count() == before
    assert get(gw, "/health")[0] == 200  # and the gateway carries on


# -- the UI itself, in headless Chromium ------------------------------------------------

@pytest.fixture(scope="module")
def page(web):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's /usr/bin/chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    gw, _, _ = web
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 640})
        page.goto(f"{gw.web_url}/?token={gw.web_password}")
        yield page
        browser.close()


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("KEYMUX_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"))


def open_flow(page, text: str, tab: str) -> None:
    """Click the flow whose row shows ``text``, then one of its detail tabs."""
    page.get_by_text(text).first.click()
    page.get_by_text(tab, exact=True).first.click()


def test_mitmweb_in_a_browser(web, page, tmp_path):
    _, api, _ = web
    page.get_by_text("attempt 1 of 2 for POST").wait_for(timeout=15_000)
    assert page.get_by_text("k1 429 → k2 200").count() >= 1  # the comment column is on
    assert page.get_by_text("keymux").count() >= 1
    shot(page, tmp_path, "mitmweb-list")
    open_flow(page, "k1 429 → k2 200", "Request")
    page.get_by_text('"gpt-4o-mini"').first.wait_for(timeout=15_000)  # the body as sent
    shot(page, tmp_path, "mitmweb-client-flow")
    open_flow(page, "attempt 1 of 2 for POST", "Response")
    page.get_by_text("rate_limit").first.wait_for(timeout=15_000)  # the upstream's 429 body
    shot(page, tmp_path, "mitmweb-attempt")
    open_flow(page, "1.8kb", "Response")  # the stream (its copy is the largest body)
    page.get_by_text("[DONE]").first.wait_for(timeout=15_000)
    shot(page, tmp_path, "mitmweb-stream")
    open_flow(page, "k1 429 → k2 200", "Timing")
    page.get_by_text("Server conn. initiated").first.wait_for(timeout=15_000)
    shot(page, tmp_path, "mitmweb-timing")
