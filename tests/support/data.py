"""Where the real test data lives: ../shared/data beside the checkout (absent in a user's fresh clone)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# HISTOGEN_SHARED_DATA points elsewhere (a GPU box given a copy of the data with its check bundle).
SHARED = Path(os.environ.get("HISTOGEN_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
ROOT = Path(__file__).resolve().parents[2]  # the checkout


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or a skip with the reason where it is absent."""
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"real test slide {path} is absent (it lives in ../shared/data beside the checkout)")
    return path
