"""A test instrument loaded with ``-s`` after keymux: makes one named step raise.

The step is read from the file named by ``KEYMUX_FAULT_FILE`` at each call (empty: no
fault), so one gateway process serves every fault in turn. The injected message carries
a real key and the client token: the log must show neither.
"""
import os
from pathlib import Path

from keypool.gateway import Gateway
from keypool.metrics import Metrics
from keypool.mitm.addon import Keymux
from keypool.mitm.relay import Relay
from keypool.mitm.runtime import Runtime
from keypool.mitm.upstream import Upstream

FILE = Path(os.environ["KEYMUX_FAULT_FILE"])
MESSAGE = os.environ["KEYMUX_FAULT_MESSAGE"]

# step -> (class, method): the method raises while the step is chosen.
POINTS = {
    "admit": (Gateway, "admit"), "pick": (Gateway, "pick"), "send": (Upstream, "send"),
    "judge": (Gateway, "judge"), "finish": (Metrics, "observe"),
    "complete": (Gateway, "complete"), "relay": (Relay, "park"),
    "responseheaders": (Keymux, "_stream_headers"), "response": (Keymux, "_stream_ended"),
    "error": (Keymux, "_stream_ended"), "store flush": (Runtime, "flush"),
}


def _chosen() -> str:
    try:
        return FILE.read_text().strip()
    except OSError:
        return ""


def _wrap(step: str, cls, name: str) -> None:
    real = getattr(cls, name)

    def faulty(*args, **kw):
        if _chosen() == step:
            raise RuntimeError(f"injected fault in {step}: {MESSAGE}")
        return real(*args, **kw)

    setattr(cls, name, faulty)


if not getattr(Gateway, "_faults_installed", False):  # once per process
    Gateway._faults_installed = True
    for step, (cls, name) in POINTS.items():
        if step != "error":  # shares its point with "response"
            _wrap(step, cls, name)
    _real_ended = Keymux._stream_ended

    def _stream_ended(self, flow, relayed, broke_off):  # "error": only when a stream broke off
        if broke_off and _chosen() == "error":
            raise RuntimeError(f"injected fault in error: {MESSAGE}")
        return _real_ended(self, flow, relayed, broke_off)

    Keymux._stream_ended = _stream_ended

addons = []
