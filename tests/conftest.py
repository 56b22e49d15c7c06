"""Test-wide setup: offline switches before anything imports timm/ultralytics/albumentations."""

import os
from pathlib import Path

import pytest

from cvhelpers.env import setup

# The notebooks' own setup: offline switches, and ultralytics pointed at the course's config
# folder (with its font), so no test writes ~/.config/Ultralytics or asks GitHub for a font.
setup()
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The project's data folder (filled by `make data`)."""
    return PROJECT_ROOT / "datasets"
