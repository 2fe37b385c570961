"""The CUDA-graph cache belongs to its user: identity-checked entries, fallbacks, release.

On CPU a fake capture stands in for torch.cuda.graph: its "replay" runs the eager loop, so the
cache logic (keys, identity checks, the first-replay comparison, warnings, release) is exercised
exactly as on a GPU.
"""
import gc
import weakref

import pytest
import torch

from ciard_fast.attacks import graphs
from ciard_fast.attacks.pgd import pgd, run_pgd
from ciard_fast.models import create_model


class FakeCapture:
    """capture(...) -> replay; counts captures and replays per model object."""

    def __init__(self, corrupt=False, fail=False):
        self.captured = []   # the model objects captures were made against
        self.replays = 0
        self.corrupt, self.fail = corrupt, fail

    def __call__(self, run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
        if self.fail:
            torch.rand(7)
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(model)
        torch.rand(7)  # a real capture's warm-up runs draw random starts: the cache must undo them

        def replay(x, y, target_logits):
            self.replays += 1
            out = run(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
            return (1 - out) if self.corrupt else out
        return replay


def cpu_cache(**kwargs):
    return graphs.GraphCache(capture=FakeCapture(**kwargs), device_types=("cpu",))


def student(seed):
    torch.manual_seed(seed)
    return create_model("small_cnn", width=4).eval()


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)


def attack(model, x, y):
    return pgd(model, x, y, steps=2, random_start=None, validate=False)


def test_two_students_never_share_an_entry_even_with_colliding_keys(monkeypatch):
    # Make every key collide, as id(model) does when a freed student's address is reused:
    # only the identity check on the model and its tensors can then keep the entries apart.
    real_key = graphs._key
    monkeypatch.setattr(graphs, "_key", lambda model, *a: ("same",) + real_key(model, *a)[1:])
    cache = cpu_cache()
    x, y = data()
    first, second = student(1), student(2)
    with graphs.cuda_graphs(cache):
        a1 = attack(first, x, y)
        a2 = attack(first, x, y)        # replay of first's entry
        b1 = attack(second, x, y)       # must capture against second, not replay first's graph
    assert cache._capture.captured == [first, second] and cache.captures == 2 and cache.replays == 1
    assert torch.equal(a1, attack(first, x, y)) and torch.equal(a2, a1)
    assert torch.equal(b1, attack(second, x, y)) and not torch.equal(a1, b1)


def test_entries_pin_what_they_captured_and_release_frees_it():
    cache = cpu_cache()
    x, y = data()
    model = student(1)
    ref = weakref.ref(model)
    with graphs.cuda_graphs(cache):
        attack(model, x, y)
    assert len(cache) == 1
    del model
    gc.collect()
    assert ref() is not None, "the entry must keep its model alive (its id cannot be reused meanwhile)"
    cache._capture.captured.clear()  # the fake's own record, not part of the cache
    cache.release()
    gc.collect()
    assert ref() is None and len(cache) == 0


def test_replaced_parameter_forces_a_new_capture():
    cache = cpu_cache()
    x, y = data()
    model = student(1)
    with graphs.cuda_graphs(cache):
        attack(model, x, y)
        attack(model, x, y)
        model.load_state_dict(student(3).state_dict())  # in place: same tensors, graph still valid
        attack(model, x, y)
        last = model.head if hasattr(model, "head") else list(model.children())[-1]
        for name, p in list(last.named_parameters(recurse=False)):
            setattr(last, name, torch.nn.Parameter(p.detach().clone()))  # a new tensor at a new address
        out = attack(model, x, y)
    assert cache.captures == 2 and cache.replays == 2
    assert torch.equal(out, attack(model, x, y))


@pytest.mark.parametrize("fault", ["fail", "corrupt"])
def test_failed_or_mismatching_capture_falls_back_to_eager_once(fault):
    cache = cpu_cache(**{fault: True})
    x, y = data()
    model = student(1)
    expected = attack(model, x, y)
    with graphs.cuda_graphs(cache):
        with pytest.warns(graphs.GraphFallbackWarning, match="not permitted" if fault == "fail" else "disagrees"):
            first = attack(model, x, y)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", graphs.GraphFallbackWarning)
            again = attack(model, x, y)
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert cache.fallbacks == 1 and len(cache) == 0 and len(cache.failures()) == 1


def test_fallback_after_a_failed_capture_keeps_the_eager_random_stream():
    cache = cpu_cache(fail=True)
    x, y = data()
    model = student(1)
    torch.manual_seed(9)
    expected = pgd(model, x, y, steps=2, random_start="uniform", validate=False)
    torch.manual_seed(9)
    with graphs.cuda_graphs(cache), pytest.warns(graphs.GraphFallbackWarning):
        got = pgd(model, x, y, steps=2, random_start="uniform", validate=False)
    assert torch.equal(got, expected)


def test_random_start_replay_matches_eager_from_the_same_rng_state():
    cache = cpu_cache()
    x, y = data()
    model = student(1)
    with graphs.cuda_graphs(cache):
        torch.manual_seed(5)
        graphed = pgd(model, x, y, steps=2, random_start="uniform", validate=False)
        after = torch.rand(2)
    torch.manual_seed(5)
    eager = run_pgd(model, x, y, 8 / 255, 2 / 255, 2, "uniform", "ce")
    assert torch.equal(graphed, eager) and cache.fallbacks == 0
    assert torch.equal(after, torch.rand(2)), "the capture must leave the RNG as one attack would"


def test_pgd_outside_a_cache_captures_nothing():
    cache = cpu_cache()
    x, y = data()
    model = student(1)
    with graphs.cuda_graphs(cache):
        pass
    attack(model, x, y)
    assert graphs.active_cache() is None and cache._capture.captured == []
    with graphs.cuda_graphs() as scoped:  # a block-scoped cache is released at the block's end
        assert graphs.active_cache() is scoped
    assert graphs.active_cache() is None and len(scoped) == 0
    with pytest.raises(TypeError, match="GraphCache"):
        with graphs.cuda_graphs("yes"):
            pass


def test_trainer_owns_its_cache_and_releases_it_after_fit(tmp_path, monkeypatch):
    """Two runs in one process (as in compare): each trainer its own cache, emptied by fit()."""
    import ciard_fast
    from ciard_fast.config import build_config
    from ciard_fast.engine import trainer as trainer_module

    made = []

    def factory():
        made.append(cpu_cache())
        return made[-1]

    monkeypatch.setattr(trainer_module, "GraphCache", factory)
    seen = []
    original = graphs.GraphCache.run

    def spy(self, *args):
        seen.append((self, len(self)))
        return original(self, *args)

    monkeypatch.setattr(graphs.GraphCache, "run", spy)
    tiny = dict(dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 16}, val_size=16,
                student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
                robust_teacher_args={"width": 4}, clean_teacher_model="small_cnn", clean_teacher_args={"width": 4},
                teacher_epochs=1, epochs=1, batch_size=32, attack_steps=2, eval_pgd_steps=1,
                test_attacks=(), compare_natural_student=False, progress=False, plot=False, device="cpu",
                cuda_graphs=True)
    for name in ("a", "b"):
        ciard_fast.train(build_config(overrides={**tiny, "out_dir": str(tmp_path / name)}))
    capturing = [c for c in made if c.captures]
    assert len(capturing) >= 2, "both students' attacks (and the teachers' SAT/TRADES) go through a cache"
    assert all(len(c) == 0 for c in made), "fit() must release its graphs"
    assert {id(c) for c, _ in seen} <= {id(c) for c in made}
    captured = [m for c in capturing for m in c._capture.captured]
    # every cache captured against its own run's models only: no model object in two caches
    owners = {}
    for cache in capturing:
        for model in cache._capture.captured:
            assert owners.setdefault(id(model), cache) is cache
    assert len(captured) >= 2


def test_an_empty_cache_is_still_truthy():
    assert graphs.GraphCache() and len(graphs.GraphCache()) == 0
