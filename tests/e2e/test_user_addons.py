"""A user's own mitmproxy addon beside keymux: its hooks still run, in chain order, and a
reload of it is picked up, with keymux's planned hook dispatch (mitm/dispatch.py) on and off."""
import pytest
import openai

from .conftest import CLIENT_TOKEN, pool_yaml
from .harness import ROOT, GatewayProcess, wait_for

PLANNED = "mitmproxy's hooks go only to the addons that define them"

USER_ADDON = """
from mitmproxy import ctx


class Stamp:
    def __init__(self):
        self.seen = 0

    def request(self, flow):
        self.seen += 1  # keymux answered in its own request hook, before this one

    def response(self, flow):
        flow.response.headers["x-user-addon"] = "VERSION:%d" % self.seen


addons = [Stamp()]
"""


def stamp_script(tmp_path):
    script = tmp_path / "stamp.py"
    script.write_text(USER_ADDON.replace("VERSION", "v1"))
    return script


def stamped(gw) -> str | None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0,
                           timeout=10)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    return raw.headers.get("x-user-addon")


@pytest.mark.parametrize("fast", ["true", "false"])
def test_a_users_addon_runs_after_keymux_and_its_reload_is_seen(mock, tmp_path, confdir, fast):
    script = stamp_script(tmp_path)
    clients = f"clients:\n  - name: app\n    token: {CLIENT_TOKEN}\n"
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, clients), confdir=confdir,
                        scripts=(script,), args=("--set", f"keymux_fast_hooks={fast}")) as gw:
        first = stamped(gw)  # the harness's own readiness probe may have passed too
        assert first.startswith("v1:")
        assert stamped(gw) == f"v1:{int(first[3:]) + 1}"
        # mitmproxy reloads a changed script: remove() + register(), a new chain
        script.write_text(USER_ADDON.replace("VERSION", "v2"))
        assert wait_for(lambda: (stamped(gw) or "").startswith("v2:"), timeout=20)
        assert "Addon error" not in gw.log()


def test_keymux_reloading_its_own_script_keeps_serving_with_the_planned_dispatch(
        mock, tmp_path, confdir):
    """An edit of keymux's script: mitmproxy removes the old instance (its done() puts
    mitmproxy's dispatch back) and registers the new one (which plans it again)."""
    script = tmp_path / "keymux_copy.py"
    script.write_text((ROOT / "addons" / "keymux.py").read_text())
    clients = f"clients:\n  - name: app\n    token: {CLIENT_TOKEN}\n"
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, clients), confdir=confdir,
                        script=script, scripts=(stamp_script(tmp_path),)) as gw:
        assert stamped(gw).startswith("v1:")
        script.write_text(script.read_text() + "\n# edited\n")
        assert wait_for(lambda: gw.log().count(PLANNED) >= 2, timeout=20), gw.log()
        assert stamped(gw).startswith("v1:")
        assert "Addon error" not in gw.log() and "Traceback" not in gw.log()
