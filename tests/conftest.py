"""Shared fixtures: ``one_thread`` (2 shared CPU cores: one intra-op thread per test process is several times
faster than oversubscribing), and options for the device and dtype of tests that take them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for tests that take the `device` fixture")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch intra-op thread, restoring the previous count after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
