"""Session fixtures and the suite's one skip policy.

The compiled core (slimgpt._core) is part of the product: a suite run without it stops at once
with an error instead of skipping or silently testing the NumPy reference in its place. Only
the CUDA cases skip, with a reason, when there is no CUDA build or device.
"""
import pytest


def pytest_sessionstart(session):
    from slimgpt._native import core

    if core() is None:
        raise pytest.UsageError("slimgpt._core (the C++ core) is not built: install the package with "
                                "`pip install .` (README) before running the tests")


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    """The oracle's golden cases, exported once per session (tests only read them)."""
    from slimgpt import oracle

    d = tmp_path_factory.mktemp("golden")
    oracle.export(d)
    return d


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is faster (and steadier on a shared machine) than several."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
