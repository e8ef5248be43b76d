"""Where the tests find the project and the shared third-party datasets (one place)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: real third-party datasets beside the checkout (tests that need them skip when it is missing)
SHARED = ROOT.parent / "shared"
