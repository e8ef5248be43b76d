"""The stage contract: every file name and default path the stages share, in one place.

``dvc.yaml`` quotes the same paths (``tests/test_architecture.py`` checks the stage commands use
these defaults). A module that reads or writes one of these files names it through this module.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: model templates (``<name>.config``), their facts (``models.yaml``), the checkpoint lock
CONFIGS_DIR = PROJECT_ROOT / "configs"
