"""Shared fixtures. The demo family is built once per machine and cached on disk,
keyed by the builder's version (CI points EVOMERGE_CACHE into its clean clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.demo import build_demo_family, read_manifest


@pytest.fixture(scope="session")
def demo_family() -> Path:
    return build_demo_family()


@pytest.fixture(scope="session")
def demo_manifest(demo_family: Path) -> dict:
    return read_manifest(demo_family)
