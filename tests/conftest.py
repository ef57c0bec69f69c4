import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The core is importable straight from the tree, installed or not.
sys.path.insert(0, str(ROOT / "addons"))
