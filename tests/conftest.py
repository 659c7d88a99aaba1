"""Shared test fixtures: paths to ../shared (fixtures written by the original Libra code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
CXR = SHARED / "data" / "cxr"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared material not found at {SHARED}; set LIBRA_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cxr_dir(shared_dir: Path) -> Path:
    return CXR
