"""Shared by the web UI tests: the test config, its secrets, the app factory, an auth helper."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the real webui package, not this test directory
    sys.path.insert(0, str(ROOT))

from webui import create_app
from webui.atomicfile import version_of


KEY_OPENAI = "sk-test-openai-literal-secret-0001"
KEY_ANTHROPIC = "sk-ant-test-env-secret-0002"
KEY_LOCAL = "sk-local-test-secret-0003"
CLIENT_TOKEN = "kmx-client-token-for-tests-0004"
ADMIN_TOKEN = "admin-token-for-tests-0005"
SECRETS = (KEY_OPENAI, KEY_ANTHROPIC, KEY_LOCAL, CLIENT_TOKEN, ADMIN_TOKEN)
ENV = {"ANTHROPIC_KEY_1": KEY_ANTHROPIC}
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens

CONFIG = f"""\
# keymux test config: the comments and the order below must survive every edit.
version: 1

providers:
  local:                        # a provider of our own
    base_url: http://127.0.0.1:9/v1
    models: ["mock-*"]

keys:
  # the main OpenAI key
  - name: openai-1
    provider: openai
    key: {KEY_OPENAI}
    rpm: 100                    # per-key limit
  - name: claude-1
    provider: anthropic
    key: ${{ANTHROPIC_KEY_1}}
  - name: local-1
    provider: local
    key: {KEY_LOCAL}
    enabled: false              # parked

  # more keys go here

clients:
  - name: app
    token: {CLIENT_TOKEN}
    models: ["gpt-*"]

routing:
  strategy: round_robin         # the default
  daily_reset: "00:00"

logging:
  bodies: false
"""


def make_app(config_path: Path, gateway_url: str = UNREACHABLE, env: dict | None = None,
             admin_token: str | None = ADMIN_TOKEN):
    environ = {**ENV, **(env or {})}
    if admin_token:
        environ["KEYMUX_ADMIN_TOKEN"] = admin_token
    return create_app(config_path, gateway_url=gateway_url, test_config={
        "TESTING": True, "KEYMUX_ENVIRON": environ})


class AuthActions:
    def __init__(self, client, config_path: Path):
        self.client = client
        self.config_path = config_path

    def csrf(self) -> str:
        page = self.client.get("/login" if not self.signed_in() else "/keys/").get_data(as_text=True)
        return re.search(r'name="csrf-token" content="([^"]+)"', page)[1]

    def signed_in(self) -> bool:
        return self.client.get("/api/stats").status_code == 200

    def login(self, secret: str = ADMIN_TOKEN):
        page = self.client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
        return self.client.post("/login", data={"secret": secret, "csrf_token": token})

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf()})

    def version(self) -> str:
        return version_of(self.config_path.read_bytes())

    def post(self, path: str, data: dict | None = None, **kw):
        """A form POST with the session's CSRF token and the file's current version."""
        form = {"csrf_token": self.csrf(), "version": self.version(), **(data or {})}
        return self.client.post(path, data=form, **kw)
