"""Auth that holds on a network: throttled guessing, server-side sessions, re-authentication
for a plain-text export, and the start-up checks on the admin token."""
import http.client
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from uihelpers import ADMIN_TOKEN, CONFIG, KEY_OPENAI, AuthActions, make_app
from webui import auth as auth_module, serve  # noqa: E402
from webui.throttle import GLOBAL, PER_ADDRESS

CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')
COOKIE = "keymux_session"


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _csrf(client, path="/login") -> str:
    return CSRF.search(client.get(path).get_data(as_text=True))[1]


def _guess(client, secret: str, address: str = "127.0.0.1"):
    return client.post("/login", data={"secret": secret, "csrf_token": _csrf(client)},
                       environ_base={"REMOTE_ADDR": address})


# -- throttling ---------------------------------------------------------------------------

class _Counting:
    """Wraps check_secret: how many guesses were actually evaluated."""
    def __init__(self, real):
        self.real, self.count, self.lock = real, 0, threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.count += 1
        return self.real(*args)


def _http_guess(port: int, secret: str) -> tuple[int, str | None]:
    """One browser-like attempt over a real socket: GET /login for a cookie and token, POST."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/login")
        r = conn.getresponse()
        page = r.read().decode()
        cookie = r.getheader("Set-Cookie").split(";", 1)[0]
        body = f"secret={secret}&csrf_token={CSRF.search(page)[1]}"
        conn.request("POST", "/login", body=body, headers={
            "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("Retry-After")
    finally:
        conn.close()


def test_200_parallel_wrong_guesses_are_throttled(config_path, monkeypatch):
    counting = _Counting(auth_module.check_secret)
    monkeypatch.setattr(auth_module, "check_secret", counting)
    app = make_app(config_path)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            results = list(pool.map(lambda i: _http_guess(server.port, f"wrong-{i}"), range(200)))
        right = _http_guess(server.port, ADMIN_TOKEN)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    statuses = [s for s, _ in results]
    assert counting.count <= PER_ADDRESS.limit
    assert statuses.count(401) == counting.count
    assert statuses.count(429) == 200 - counting.count
    assert all(int(after) >= 1 for s, after in results if s == 429)
    assert right[0] == 429 and int(right[1]) >= 1  # the right password waits too


def test_an_address_locked_out_is_refused_even_the_right_password(app, client):
    clock = FakeClock()
    app.extensions[auth_module.LIMITER].clock = clock
    for _ in range(PER_ADDRESS.limit):
        clock.now += PER_ADDRESS.cap + 1  # past every growing pause
        assert _guess(client, "wrong").status_code == 401
    clock.now += PER_ADDRESS.cap + 1
    r = _guess(client, ADMIN_TOKEN)
    assert r.status_code == 429
    assert "Too many failed attempts" in r.get_data(as_text=True)
    assert 0 < int(r.headers["Retry-After"]) <= PER_ADDRESS.window
    assert _guess(client, ADMIN_TOKEN, address="10.0.0.7").status_code == 302  # others may
    clock.now += PER_ADDRESS.window
    assert _guess(client, ADMIN_TOKEN).status_code == 302  # the window has passed


def test_growing_pause_then_a_success_resets_the_address(app, client):
    clock = FakeClock()
    limiter = app.extensions[auth_module.LIMITER]
    limiter.clock = clock
    for _ in range(PER_ADDRESS.free):
        assert _guess(client, "wrong").status_code == 401
    r = _guess(client, "wrong")  # past ``free``: a pause, answered at once
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    clock.now += 1
    assert _guess(client, "wrong").status_code == 401
    assert _guess(client, "wrong").headers["Retry-After"] == "2"  # doubled
    clock.now += 2
    assert _guess(client, ADMIN_TOKEN).status_code == 302
    assert limiter.failures("127.0.0.1") == 0


def test_the_global_limit_holds_across_addresses(app, client):
    clock = FakeClock()
    app.extensions[auth_module.LIMITER].clock = clock
    for i in range(GLOBAL.limit):
        clock.now += GLOBAL.cap + 1
        assert _guess(client, "wrong", address=f"10.1.{i // 250}.{i % 250}").status_code == 401
    r = _guess(client, ADMIN_TOKEN, address="192.168.9.9")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


# -- sessions -----------------------------------------------------------------------------

def _copy(app, client):
    """A second client holding a copy of ``client``'s session cookie."""
    other = app.test_client()
    other.set_cookie(COOKIE, client.get_cookie(COOKIE).value)
    return other


def test_a_cookie_copied_before_logout_gets_401_after(app, client, signed_in):
    thief = _copy(app, client)
    assert thief.get("/api/stats").status_code == 200
    signed_in.logout()
    assert thief.get("/api/stats").status_code == 401
    assert thief.get("/keys/").status_code == 302


def test_a_cookie_copied_before_a_token_change_gets_401_after(app, client, signed_in):
    thief = _copy(app, client)
    app.config["KEYMUX_ENVIRON"]["KEYMUX_ADMIN_TOKEN"] = "another-admin-token-of-24-chars"
    assert thief.get("/api/stats").status_code == 401
    assert client.get("/api/stats").status_code == 401


def test_sign_out_everywhere(app, config_path, client, signed_in):
    other = app.test_client()
    assert AuthActions(other, config_path).login().status_code == 302
    page = client.get("/sessions").get_data(as_text=True)
    assert page.count("<code>") == 2 and "this one" in page
    r = client.post("/logout/everywhere", data={"csrf_token": signed_in.csrf()})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    page = other.get("/keys/", follow_redirects=True).get_data(as_text=True)
    assert "Your session has ended" in page
    assert other.get("/api/stats").status_code == 401
    assert client.get("/api/stats").status_code == 401


def test_a_session_ends_after_its_lifetime_server_side(app, client, signed_in):
    clock = FakeClock(app.extensions[auth_module.SESSIONS].clock())
    app.extensions[auth_module.SESSIONS].clock = clock
    assert client.get("/api/stats").status_code == 200
    clock.now += app.permanent_session_lifetime.total_seconds()
    assert client.get("/api/stats").status_code == 401


def test_a_post_from_an_expired_session_says_so(app, config_path):
    client = app.test_client()  # no session: the page was loaded before a restart or expiry
    r = client.post("/keys/openai-1/toggle", data={"csrf_token": "from-an-old-page"})
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    page = client.get("/login").get_data(as_text=True)
    assert "Your session has expired: sign in again." in page and "Invalid CSRF" not in page
    client = app.test_client()  # a sign-in page left open past a restart
    r = client.post("/login", data={"secret": ADMIN_TOKEN, "csrf_token": "from-an-old-page"})
    assert r.status_code == 400 and "Your session has expired" in r.get_data(as_text=True)
    r = app.test_client().post("/api/keys/openai-1/reset", headers={"X-CSRF-Token": "from-an-old-page"})
    assert r.status_code == 401 and "expired" in r.json["error"]


# -- re-authentication for secrets ----------------------------------------------------------

def test_export_with_secrets_asks_for_the_credential_and_is_throttled(app, client, signed_in):
    form = client.get("/transfer/export").get_data(as_text=True)
    assert 'name="secret"' in form
    clock = FakeClock()
    app.extensions[auth_module.LIMITER].clock = clock
    for _ in range(PER_ADDRESS.limit):
        clock.now += PER_ADDRESS.cap + 1
        r = client.post("/transfer/export", data={"csrf_token": signed_in.csrf(), "confirm": "yes",
                                                  "secret": "wrong"})
        assert r.status_code == 403 and KEY_OPENAI not in r.get_data(as_text=True)
    r = client.post("/transfer/export", data={"csrf_token": signed_in.csrf(), "confirm": "yes",
                                              "secret": ADMIN_TOKEN})
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert KEY_OPENAI not in r.get_data(as_text=True)


# -- the token itself ---------------------------------------------------------------------

def test_a_blank_token_is_never_a_credential_and_does_not_open_the_ui(config_path):
    client = make_app(config_path, admin_token=" ").test_client()
    assert client.get("/keys/").status_code == 302  # locked, not open
    assert "KEYMUX_ADMIN_TOKEN is blank" in client.get("/login").get_data(as_text=True)
    assert _guess(client, " ").status_code == 401


def test_start_up_checks_on_the_token(config_path):
    long_token = "t" * serve.MIN_TOKEN_LEN
    assert "blank" in serve.bind_refusal("127.0.0.1", config_path, environ={"KEYMUX_ADMIN_TOKEN": " "})
    assert "blank" in serve.bind_refusal("0.0.0.0", config_path, environ={"KEYMUX_ADMIN_TOKEN": "\t"})
    short = serve.bind_refusal("0.0.0.0", config_path, environ={"KEYMUX_ADMIN_TOKEN": "x"})
    assert "at least 24" in short and "keymux hash-password" in short
    assert "secrets.token_urlsafe(32)" in short
    assert serve.bind_refusal("0.0.0.0", config_path, environ={"KEYMUX_ADMIN_TOKEN": long_token}) is None
    assert serve.bind_refusal("127.0.0.1", config_path, environ={"KEYMUX_ADMIN_TOKEN": "x"}) is None
    assert "24" in serve.bind_warning("127.0.0.1", environ={"KEYMUX_ADMIN_TOKEN": "x"})
    assert serve.bind_warning("127.0.0.1", environ={"KEYMUX_ADMIN_TOKEN": long_token}) is None
    config_path.write_text(CONFIG + f"admin:\n  password_hash: '{generate_password_hash('x' * 12)}'\n")
    assert serve.bind_refusal("0.0.0.0", config_path, environ={}) is None
    # a short token beside the hash would still open the door: refused
    assert serve.bind_refusal("0.0.0.0", config_path, environ={"KEYMUX_ADMIN_TOKEN": "short"})


def test_keymux_ui_refuses_a_blank_token_even_on_loopback(config_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(config_path.parent), "KEYMUX_ADMIN_TOKEN": "  "}
    r = subprocess.run([sys.executable, "-m", "keypool.cli", "ui", "--config", str(config_path),
                        "--port", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "blank" in r.stderr and "keymux hash-password" in r.stderr and "Traceback" not in r.stderr
