"""Fixtures of the kernel tests."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box they lose 10x to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
