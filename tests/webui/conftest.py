"""Fixtures for the web UI: a config in tmp_path, the app, a client, an auth helper.

This directory has no __init__.py on purpose: as a package it would be imported as
``webui`` and hide the real one. Helpers live in uniquely named modules beside it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from uihelpers import CONFIG, UNREACHABLE, AuthActions, make_app
from ui_stub_gateway import StubGateway


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def gateway_url() -> str:
    return UNREACHABLE


@pytest.fixture
def app(config_path, gateway_url):
    return make_app(config_path, gateway_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def stub():
    with StubGateway() as s:
        yield s


@pytest.fixture
def auth(client, config_path):
    return AuthActions(client, config_path)


@pytest.fixture
def signed_in(auth):
    assert auth.login().status_code == 302
    return auth
