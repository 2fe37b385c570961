"""Shared test set-up.

Triton kernels are tested on CPU tensors through Triton's interpreter; the switch must be set
before triton is first imported, so it is set here, for the whole session, on machines without a
GPU (with a GPU the kernels run for real).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread():
    """Tests run tiny models: a second intra-op thread only adds synchronisation, and on a shared
    2-core machine the OpenMP pool waiting for a descheduled thread measured 10-50x slower.
    Results do not depend on the thread count. Tests that do real work ask for `all_threads`."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture
def all_threads():
    """Torch's default intra-op thread count for one test (e.g. the end-to-end demo)."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
