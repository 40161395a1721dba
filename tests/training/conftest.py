"""Training tests run tiny models: one torch thread is faster than two fighting over a busy box."""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(single_torch_thread):
    yield
