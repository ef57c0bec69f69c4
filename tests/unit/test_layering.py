"""The pure core imports neither mitmproxy nor an HTTP client: only keypool.mitm does."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import keypool

GLUE = "keypool.mitm"


def pure_modules():
    names = [m.name for m in pkgutil.walk_packages(keypool.__path__, "keypool.")]
    return [n for n in names if not n.startswith(GLUE)]


def test_pure_core_never_imports_mitmproxy_or_aiohttp():
    modules = pure_modules()
    assert {"keypool.gateway", "keypool.pool", "keypool.policy", "keypool.store.sqlite"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mitmproxy', 'aiohttp'))\n"
            "print(','.join(bad))\n")
    addons = Path(keypool.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=addons)
    assert out.stdout.strip() == ""
