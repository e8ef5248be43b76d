"""Where the tests find the project and the shared third-party datasets (one place)."""
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
#: real third-party datasets beside the checkout (tests that need them skip when it is missing)
SHARED = ROOT.parent / "shared"


def load_script(relative_path: str) -> ModuleType:
    """A script of the project (benchmarks/, tools/: folders that are not packages) as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
