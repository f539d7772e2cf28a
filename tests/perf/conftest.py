"""Settings of the fast-path tests: tiny tensors, so one intra-op thread (fixed reduction order)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
