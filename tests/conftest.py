"""Shared fixtures: the real IR/VIS data in ../shared/data (skip with a reason where absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOEFUSION_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_set(name: str) -> Path:
    """Path of one set in ../shared/data, or skip the test when it is not there (fail under CI=true:
    CI must not go green by skipping every real-data test)."""
    path = SHARED_DATA / name
    if not (path / "ir").is_dir():
        why = f"real data set {name!r} not found at {path} (set MOEFUSION_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + "; CI=true requires the shared data")
        pytest.skip(why)
    return path


@pytest.fixture
def shared_data():
    return shared_set
