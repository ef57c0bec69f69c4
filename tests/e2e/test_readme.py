"""Every command in the README works verbatim after `scripts/demo`.

The README's ```bash blocks are read as they are: the servers (`scripts/demo`, `keymux
run|ui`, `mitmdump`, `mitmweb`) are started one at a time, waited for and stopped with
Ctrl-C (exit 0); every other command runs in one shell against the running demo and must
exit 0. The README's ports are fixed (8080, 8787, 8081, 9100): the test skips when one is
taken by something else.
"""
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from .harness import ROOT

README = (ROOT / "README.md").read_text()
PORTS = (8080, 8081, 8787, 9100)
SERVERS = re.compile(r"^(scripts/demo|\S*keymux (run|ui|demo)|\S*mitmdump|\S*mitmweb)\b")
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith(("OPENAI_", "ANTHROPIC_", "KEYMUX_")) and "proxy" not in k.lower()}
ENV["BROWSER"] = "true"  # mitmweb would open a browser


def commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip() and not cmd.lstrip().startswith("#"):
                out.append(cmd.strip())
    return out


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(url: str, proc: subprocess.Popen, deadline: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        assert proc.poll() is None, f"exited {proc.returncode} before {url} answered"
        try:
            opener.open(url, timeout=2).read()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.2)


class Server:
    """A README server command in its own session, stopped as Ctrl-C would stop it."""

    def __init__(self, cmd: str, log):
        self.cmd = cmd
        self.proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=ROOT, env=ENV,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def ready(self, timeout: float = 40) -> "Server":
        deadline = time.monotonic() + timeout
        if re.search(r"keymux (run|demo)|scripts/demo|mitmdump|mitmweb", self.cmd):
            wait_for("http://127.0.0.1:8080/health", self.proc, deadline)
        if re.search(r"keymux (run|ui|demo)|scripts/demo", self.cmd):
            wait_for("http://127.0.0.1:8787/", self.proc, deadline)
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def test_the_first_screen_is_two_commands():
    first = re.findall(r"```bash\n(.*?)```", README, re.S)[0]
    assert [line.split()[0] for line in first.strip().splitlines()] == ["scripts/demo",
                                                                        "scripts/test"]


@pytest.mark.skipif(any(port_taken(p) for p in PORTS),
                    reason="a README port (8080, 8081, 8787, 9100) is taken")
def test_every_readme_command_works_verbatim(tmp_path):
    cmds = [c for c in commands() if not c.startswith("scripts/test")]  # that runs this test
    servers = [c for c in cmds if SERVERS.match(c)]
    shell = [c for c in cmds if not SERVERS.match(c)]
    assert servers[0].startswith("scripts/demo") and len(servers) >= 5 and shell
    log = open(tmp_path / "servers.log", "ab")
    demo = Server(servers[0], log)
    try:
        demo.ready()
        r = subprocess.run(["bash", "-e", "-c", "\n".join(shell)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        assert '"keys"' in r.stdout  # the stats line
    finally:
        assert demo.stop() == 0, (tmp_path / "servers.log").read_text()
    for cmd in servers[1:]:
        server = Server(cmd, log)
        try:
            server.ready()
        finally:
            assert server.stop() == 0, f"{cmd}\n{(tmp_path / 'servers.log').read_text()}"
    log.close()
    text = (tmp_path / "servers.log").read_text()
    assert "Traceback" not in text and "sk-demo-" not in text
