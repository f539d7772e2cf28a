"""Shared settings of the core tests.

The core tests run tiny tensors, for which an intra-op thread pool only costs time (and, on a
busy machine, a lot of it); one thread also keeps every reduction order fixed.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
