"""Test-wide setup: offline switches before anything imports timm/ultralytics/albumentations."""

import os
from pathlib import Path

import pytest

from cvhelpers.env import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The project's data folder (filled by `make data`)."""
    return PROJECT_ROOT / "datasets"
