"""Settings shared by every pclab test.

Tests run tiny tensors, for which an intra-op thread pool only costs time (a lot of it on a busy
machine); one thread also keeps every reduction order fixed, so results are repeatable.
"""

from __future__ import annotations

import pytest
import torch

from pclab.train import apply_overrides, preset, validate


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny():
    """``tiny(*overrides)`` -> a validated tiny RunConfig (synthetic data, seconds)."""

    def make(*overrides: str):
        return validate(apply_overrides(preset("tiny"), list(overrides)), "tiny")

    return make
