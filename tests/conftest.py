"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: tiny models train fastest on one
    thread (the default count spins on a loaded 2-core machine), and torchrun workers and
    simulated Flower nodes run with one, so float results match theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
