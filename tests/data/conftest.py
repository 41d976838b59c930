"""Data tests run torch single-threaded: the ops are small, and on a busy 2-core machine
intra-op threads spin and make them ~30x slower. Restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
