"""The live ISO's boot tests run only from `make iso-test`, which names the built ISO in XENP2V_ISO:
`make test` does not collect them (they need out/xenp2v.iso and minutes of QEMU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

collect_ignore_glob = [] if os.environ.get("XENP2V_ISO") else ["test_*.py"]


@pytest.fixture(scope="session")
def iso() -> Path:
    path = Path(os.environ["XENP2V_ISO"])
    if not path.is_file():
        pytest.fail(f"No ISO at {path}: run 'make iso' first.")
    return path
