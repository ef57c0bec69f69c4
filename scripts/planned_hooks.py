"""mitmproxy with keymux's planned hook dispatch and nothing else (keypool.mitm.dispatch).

The benchmarks' ``mitmdump-planned`` row: plain mitmdump plus this script, so keymux's own
cost per request shows apart from what the planned dispatch saves every mitmdump.

    mitmdump -s scripts/planned_hooks.py --mode reverse:http://127.0.0.1:PORT
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addons"))

from mitmproxy import ctx  # noqa: E402

from keypool.mitm import dispatch  # noqa: E402


class Planned:
    def load(self, loader) -> None:
        dispatch.install(ctx.master.addons)

    def done(self) -> None:
        dispatch.uninstall(ctx.master.addons)


addons = [Planned()]
