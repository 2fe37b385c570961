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


# ---- the method contract (method_contract.py) over every method --------------------------------
class ContractCase:
    """One method the contract tests check: its class and the options that select it (a variant)."""

    def __init__(self, cls, options=None, label=None):
        self.cls, self.options = cls, dict(options or {})
        self.id = label or cls.name

    def __repr__(self):
        return f"ContractCase({self.id})"


def contract_cases(module):
    """The methods of `module`'s ``TEST_METHODS`` (classes it registers for its own duration),
    or every registered method (`list_methods()`); each with every registered variant."""
    from ciard_fast.methods import get_method, list_methods

    classes = getattr(module, "TEST_METHODS", None)
    if classes is None:
        classes = [get_method(name) for name in list_methods()]
    cases = []
    for cls in classes:
        cases.append(ContractCase(cls))
        for option in sorted(cls.variants):
            cases.append(ContractCase(cls, {option: True}, f"{cls.name}[{option}]"))
    return cases


def pytest_generate_tests(metafunc):
    if "contract_case" in metafunc.fixturenames:
        cases = contract_cases(metafunc.module)
        metafunc.parametrize("contract_case", cases, ids=[case.id for case in cases])


@pytest.fixture(scope="module", autouse=True)
def _test_methods(request):
    """Register a test module's ``TEST_METHODS`` while its tests run, and only then (so that no
    other test sees them: generated presets, comparisons over every method)."""
    classes = getattr(request.module, "TEST_METHODS", ())
    if not classes:
        yield
        return
    from ciard_fast.methods import METHODS, register_method

    for cls in classes:
        register_method(cls)
    try:
        yield
    finally:
        for cls in classes:
            METHODS.unregister(cls.name)
