"""Clients: a generated token is shown once, masked afterwards; limits; removal."""
import re

from keypool.config import load_config
from uihelpers import CLIENT_TOKEN, ENV


def clients_of(path):
    return {c.name: c for c in load_config(path, env=ENV).clients}


def test_list_is_masked(signed_in, client):
    page = client.get("/clients/").get_data(as_text=True)
    assert "app" in page and "kmx…0004" in page and CLIENT_TOKEN not in page


def test_new_client_token_is_shown_once(signed_in, client, config_path):
    r = signed_in.post("/clients/new", {"name": "batch", "models": "gpt-4o*", "rpm": "30"})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token" class="mono" value="([^"]+)"', r.get_data(as_text=True))[1]
    assert token.startswith("kmx-") and len(token) >= 40
    spec = clients_of(config_path)["batch"]
    assert (spec.token, spec.models, spec.rpm) == (token, ("gpt-4o*",), 30)
    for page in ("/clients/", "/clients/batch/edit", "/", "/api/stats", "/transfer/export"):
        assert token not in client.get(page).get_data(as_text=True), page


def test_first_client_closes_an_open_gateway(tmp_path):
    from uihelpers import make_app, AuthActions
    path = tmp_path / "keys.yaml"
    path.write_text("version: 1\nkeys:\n  - name: a\n    provider: openai\n    key: sk-aaaaaaaa1\n")
    client = make_app(path).test_client()
    auth = AuthActions(client, path)
    auth.login()
    assert "the gateway is open" in client.get("/clients/").get_data(as_text=True)
    assert auth.post("/clients/new", {"name": "only"}).status_code == 200
    assert [c.name for c in load_config(path).clients] == ["only"]


def test_rotate_gives_a_new_token(signed_in, config_path):
    r = signed_in.post("/clients/app/rotate")
    token = re.search(r'id="new-token" class="mono" value="([^"]+)"', r.get_data(as_text=True))[1]
    assert token != CLIENT_TOKEN and clients_of(config_path)["app"].token == token


def test_edit_limits(signed_in, client, config_path):
    assert 'value="gpt-*"' in client.get("/clients/app/edit").get_data(as_text=True)
    r = signed_in.post("/clients/app/edit", {"models": "", "rpm": "12"})
    assert r.status_code == 303
    spec = clients_of(config_path)["app"]
    assert (spec.models, spec.rpm, spec.token) == ((), 12, CLIENT_TOKEN)
    bad = signed_in.post("/clients/app/edit", {"models": "", "rpm": "lots"})
    assert bad.status_code == 400


def test_remove_and_duplicate(signed_in, client, config_path):
    before = config_path.read_bytes()
    r = signed_in.post("/clients/new", {"name": "app"})
    assert r.status_code == 400 and "duplicate client name" in r.get_data(as_text=True)
    assert config_path.read_bytes() == before
    assert signed_in.post("/clients/app/delete").status_code == 303
    assert load_config(config_path, env=ENV).clients == ()
    assert "refuses every request" in client.get("/clients/").get_data(as_text=True)
    assert client.get("/clients/app/edit").status_code == 404
