"""Experiment-level tests: every test runs single-threaded (tiny models on shared cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread_everywhere(one_thread: None) -> None:
    """Apply the shared ``one_thread`` fixture (tests/conftest.py) to every experiment test."""
