"""Login, sessions, CSRF, headers, and where the UI may listen."""
import re
import subprocess
import sys

import pytest
from werkzeug.security import generate_password_hash

from uihelpers import ADMIN_TOKEN, CONFIG, make_app
from webui import serve  # noqa: E402


def test_pages_need_a_login(client):
    r = client.get("/keys/")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=/keys/")
    assert client.get("/api/stats").status_code == 401
    assert client.get("/api/stats").json == {"error": "Sign in first."}
    assert client.get("/static/style.css").status_code == 200  # assets are public


def test_login_with_the_token_then_logout(client, auth):
    r = auth.login()
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert client.get("/keys/").status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert auth.logout().status_code == 302
    assert client.get("/keys/").status_code == 302


def test_wrong_token_is_refused(client, auth):
    r = auth.login("not-the-token")
    assert r.status_code == 401 and "Wrong token or password." in r.get_data(as_text=True)
    assert client.get("/keys/").status_code == 302
    assert auth.login("").status_code == 401


def test_login_goes_back_to_a_local_page_only(client, auth):
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
    for target, expected in (("/requests/?key=a", "/requests/?key=a"), ("https://evil.example/", "/"),
                             ("//evil.example", "/"), ("/\\evil.example", "/"),
                             ("/\t/evil.example", "/"), ("/\n/evil.example", "/")):
        r = client.post("/login", data={"secret": ADMIN_TOKEN, "csrf_token": csrf, "next": target})
        assert r.headers["Location"] == expected
        csrf = re.search(r'name="csrf-token" content="([^"]+)"',
                         client.get("/keys/").get_data(as_text=True))[1]


def test_password_hash_from_the_config(tmp_path):
    path = tmp_path / "keys.yaml"
    digest = generate_password_hash("correct horse battery")
    path.write_text(CONFIG + f'admin:\n  password_hash: "{digest}"\n')
    app = make_app(path, admin_token=None)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
    assert client.post("/login", data={"secret": "wrong horse", "csrf_token": csrf}).status_code == 401
    r = client.post("/login", data={"secret": "correct horse battery", "csrf_token": csrf})
    assert r.status_code == 302
    assert client.get("/clients/").status_code == 200
    assert digest not in client.get("/transfer/export.yaml").get_data(as_text=True)


def test_changing_the_credential_ends_sessions(tmp_path, signed_in, client, app):
    assert client.get("/keys/").status_code == 200
    app.config["KEYMUX_ENVIRON"]["KEYMUX_ADMIN_TOKEN"] = "a-new-admin-token-000"
    assert client.get("/keys/").status_code == 302


def test_open_ui_without_credentials_shows_a_banner(config_path):
    client = make_app(config_path, admin_token=None).test_client()
    r = client.get("/keys/")
    assert r.status_code == 200
    assert "No admin token or password is set" in r.get_data(as_text=True)
    assert client.get("/login").status_code == 302  # nothing to log in to


def test_unreadable_config_locks_the_ui_without_a_token(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [\n")
    client = make_app(path, admin_token=None).test_client()
    assert client.get("/keys/").status_code == 302
    page = client.get("/login").get_data(as_text=True)
    assert "cannot be parsed" in page and "keys.yaml, line " in page  # where to fix it


# -- CSRF ----------------------------------------------------------------------------

def _form(auth):
    return {"version": auth.version(), "name": "x-1", "provider": "openai", "key": "sk-x-123456789"}


@pytest.mark.parametrize("path", ["/keys/new", "/keys/openai-1/toggle", "/keys/openai-1/delete",
                                  "/clients/new", "/clients/app/delete", "/clients/app/rotate",
                                  "/api/keys/openai-1/reset", "/logout", "/transfer/export"])
def test_missing_or_wrong_csrf_token_is_refused_and_nothing_written(signed_in, client, config_path, path):
    before = config_path.read_bytes()
    missing = client.post(path, data=_form(signed_in))
    assert missing.status_code == 400
    wrong = client.post(path, data={**_form(signed_in), "csrf_token": "forged"})
    assert wrong.status_code == 403
    header = client.post(path, data=_form(signed_in), headers={"X-CSRF-Token": "forged"})
    assert header.status_code == 403
    assert config_path.read_bytes() == before
    assert client.get("/keys/").status_code == 200  # still signed in


def test_login_itself_needs_the_csrf_token(client):
    assert client.post("/login", data={"secret": ADMIN_TOKEN}).status_code == 400


def test_cross_origin_post_is_refused(signed_in, client, config_path):
    before = config_path.read_bytes()
    r = client.post("/keys/new", data={**_form(signed_in), "csrf_token": signed_in.csrf()},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and config_path.read_bytes() == before


def test_fetch_post_with_the_header_token_passes(signed_in, client):
    r = client.post("/api/keys/openai-1/reset", headers={"X-CSRF-Token": signed_in.csrf()})
    assert r.status_code == 502  # past the CSRF check: the (unreachable) gateway answers
    assert "cannot reach the gateway" in r.json["message"]


# -- headers and hosts ------------------------------------------------------------------

def test_security_headers(signed_in, client):
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    assert "<script>" not in r.get_data(as_text=True)  # no inline script anywhere


def test_loopback_bind_accepts_only_loopback_host_names(app, client, auth):
    app.config["TRUSTED_HOSTS"] = serve.trusted_hosts("127.0.0.1")
    assert client.get("/login", headers={"Host": "127.0.0.1:8787"}).status_code in (200, 302)
    assert client.get("/login", headers={"Host": "localhost:8787"}).status_code in (200, 302)
    assert client.get("/login", headers={"Host": "rebound.evil.example"}).status_code == 400


# -- where it may listen ----------------------------------------------------------------

def test_non_loopback_bind_needs_a_credential(config_path):
    assert serve.bind_refusal("127.0.0.1", config_path, environ={}) is None
    assert serve.bind_refusal("::1", config_path, environ={}) is None
    refusal = serve.bind_refusal("0.0.0.0", config_path, environ={})
    assert refusal and "refusing to listen on 0.0.0.0" in refusal
    assert serve.bind_refusal("0.0.0.0", config_path, environ={"KEYMUX_ADMIN_TOKEN": "t" * 24}) is None
    config_path.write_text(CONFIG + f"admin:\n  password_hash: '{generate_password_hash('x' * 12)}'\n")
    assert serve.bind_refusal("192.168.1.10", config_path, environ={}) is None


def test_keymux_ui_exits_with_a_message_on_a_public_bind(config_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(config_path.parent)}
    r = subprocess.run([sys.executable, "-m", "keypool.cli", "ui", "--config", str(config_path),
                        "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0" in r.stderr and "Traceback" not in r.stderr


def test_hash_password_prints_a_checkable_hash():
    r = subprocess.run([sys.executable, "-m", "keypool.cli", "hash-password"], input="s3cret-pass\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    digest = r.stdout.strip()
    from werkzeug.security import check_password_hash
    assert check_password_hash(digest, "s3cret-pass")
    short = subprocess.run([sys.executable, "-m", "keypool.cli", "hash-password"], input="short\n",
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and "at least" in short.stderr


def test_a_broken_key_does_not_lock_out_the_password(tmp_path):
    path = tmp_path / "keys.yaml"
    digest = generate_password_hash("correct horse battery")
    path.write_text(CONFIG.replace("provider: anthropic", "provider: nosuch")
                    + f'admin:\n  password_hash: "{digest}"\n')
    client = make_app(path, admin_token=None).test_client()
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
    assert client.post("/login", data={"secret": "correct horse battery", "csrf_token": csrf}).status_code == 302
    assert "unknown provider" in client.get("/keys/").get_data(as_text=True)


def test_an_unusable_password_hash_locks_rather_than_opens(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG + "admin:\n  password_hash: ${KEYMUX_UNSET_HASH}\n")
    client = make_app(path, admin_token=None).test_client()
    assert client.get("/keys/").status_code == 302
    assert serve.bind_refusal("0.0.0.0", path, environ={}) is not None
