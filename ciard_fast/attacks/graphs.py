"""CUDA-graph capture of the PGD loop (docs/performance.md, lever 1), in a cache owned by its user.

A 10-step training attack is ~10 × (forward + input backward + step) of small kernels; on a GPU
their launch overhead, not their arithmetic, dominates at CIFAR sizes. While a
:class:`GraphCache` is active (``with cuda_graphs(cache):``, which the trainer opens around each
training step on CUDA) each distinct attack — same model, shapes, dtypes, hyperparameters and
autocast state — is captured once into a CUDA graph and replayed afterwards: one launch for the
whole loop.

Ownership. The cache is an object, not module state: ``Trainer`` creates one for its run and
releases it (graphs and their memory pools) when ``fit()`` returns or raises. An entry holds
strong references to the model and to every parameter and buffer tensor it was captured
against, and a lookup replays it only if the model *is* that object and each tensor is the same
object at the same address — never on ``id(model)`` alone, which a freed model's successor can
reuse (two students trained one after the other in ``compare``). A parameter replaced or moved
since the capture (``model.to()``, a new layer) drops the entry and captures afresh.

Who captures. Only code that owns an active cache: a direct ``pgd()`` call outside one (a user
script, ``evaluate()``) runs the eager loop. ``evaluate()`` owns no cache because nothing in it
could be graphed: each PGD column draws its random start from its own seeded generator (a graph
replays the default CUDA generator only) and FGSM/CW∞ call the loop directly.
``with cuda_graphs():`` (no argument) opens a cache scoped to the block, released at its end.

Why replay is exact: the graph reads the model's parameters and BN buffers in place, so it sees
every optimiser update; the random start draws from the default CUDA generator, which is graph-
safe (each replay advances its Philox offset); nothing in the loop synchronises with the host.
Requirements, checked here, else the eager loop runs: CUDA inputs, no explicit `generator`,
Python-number ε/α, an `nn.Module`, and a loss that is a name or an `nn.Module` objective (a
teacher-dependent objective such as AdaAD's: its parameters and buffers are checked by identity
like the model's, and the modes of its modules are part of the key; a plain function might close
over per-step tensors that a replay would not see, so it runs eagerly). Autocast's weight cache
must be off during capture (the engine opens autocast with cache_enabled=False when graphs are on).

Fallbacks. A capture that raises, or whose first replay disagrees with the eager loop run from
the same RNG state (more than 1 % of the elements differ: sign steps may flip on rounding-level
differences such as another cuDNN algorithm, a broken graph differs almost everywhere), is
dropped with one warning naming the error, and that attack runs eagerly for the rest of the
cache's life. The first call of each attack returns exactly what the eager loop would from the
caller's RNG state, and leaves the RNG where one eager attack would (the capture's warm-up
draws are undone).
"""
import contextlib
import itertools
import warnings

import torch

__all__ = ["GraphCache", "cuda_graphs", "active_cache", "GraphFallbackWarning"]

_active = None  # the GraphCache of the innermost open cuda_graphs block, or None
# A healthy replay may differ from eager where a sign step flipped on a rounding-level
# difference; a graph reading the wrong weights or missing an op differs in most elements.
MISMATCH_FRACTION = 0.01


class GraphFallbackWarning(RuntimeWarning):
    """A CUDA graph could not be used for an attack; it runs eagerly instead (same results)."""


class _Entry:
    """One captured attack and everything it was captured against (kept alive by the entry)."""

    __slots__ = ("model", "objective", "tensors", "pointers", "replay")

    def __init__(self, model, objective, replay):
        self.model = model
        self.objective = objective  # an nn.Module objective (kept alive with its tensors), else None
        self.tensors = _captured_tensors(model, objective)
        self.pointers = tuple(t.data_ptr() for t in self.tensors)
        self.replay = replay

    def matches(self, model, objective):
        if self.model is not model or self.objective is not objective:
            return False
        current = _captured_tensors(model, objective)
        return (len(current) == len(self.tensors) and all(a is b for a, b in zip(current, self.tensors))
                and all(t.data_ptr() == p for t, p in zip(current, self.pointers)))


def _module_objective(loss):
    return loss if isinstance(loss, torch.nn.Module) else None


def _captured_tensors(model, objective=None):
    """Every tensor a replay reads in place: the model's and an objective module's parameters and buffers."""
    modules = (model,) if objective is None else (model, objective)
    return tuple(itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules))


class GraphCache:
    """The CUDA graphs of one owner's PGD loops (see the module docstring).

    Args:
        capture: ``capture(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits,
            kappa) -> replay`` where ``replay(x, y, target_logits)`` returns the attack's output.
            Default: a real CUDA-graph capture. Tests pass a fake one.
        device_types: device types whose inputs are captured. Default ("cuda",); tests add "cpu".

    Counters ``captures``, ``replays``, ``fallbacks`` say what happened (for tests and doctor).
    """

    def __init__(self, capture=None, device_types=("cuda",)):
        self._capture = capture or _capture_cuda_graph
        self._device_types = tuple(device_types)
        self._entries = {}
        self._failed = {}  # key -> the error, for attacks that run eagerly
        self.captures = self.replays = self.fallbacks = 0

    def __len__(self):
        return len(self._entries)

    def __bool__(self):
        # A cache is "on" even while empty: `if trainer.graphs:` must not read an empty cache as off.
        return True

    def failures(self):
        """{key: error message} of the attacks this cache runs eagerly."""
        return dict(self._failed)

    def release(self):
        """Drop every graph (and the memory pool and model references it holds)."""
        self._entries.clear()
        self._failed.clear()

    def accepts(self, x, eps, alpha, generator, model, loss="ce"):
        return (x.device.type in self._device_types and generator is None and isinstance(model, torch.nn.Module)
                and not isinstance(eps, torch.Tensor) and not isinstance(alpha, torch.Tensor)
                and (isinstance(loss, str) or isinstance(loss, torch.nn.Module)))

    def run(self, run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
        """`run(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)` (the
        eager loop) through this cache. Returns a new tensor like the eager loop does."""
        args = (eps, alpha, steps, random_start, loss)
        key = _key(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
        if key in self._failed:
            return run(model, x, y, *args, target_logits, kappa)
        entry = self._entries.get(key)
        if entry is not None and not entry.matches(model, _module_objective(loss)):
            del self._entries[key]  # a parameter was replaced or moved: that graph reads stale memory
            entry = None
        if entry is not None:
            self.replays += 1
            return entry.replay(x, y, target_logits)
        state = _rng_state(x.device)  # the warm-ups of a capture draw random starts too
        try:
            replay = self._capture(run, model, x, y, *args, target_logits, kappa)
            out, problem = self._first_replay(replay, state, run, model, x, y, args, target_logits, kappa)
        except Exception as exc:  # an op that cannot be captured: stay correct, lose the speed-up
            out, problem = None, f"capture failed ({type(exc).__name__}: {exc})"
        if problem is not None:
            self._failed[key] = problem
            self.fallbacks += 1
            warnings.warn(f"CUDA-graph {problem}; running this PGD loop eagerly", GraphFallbackWarning, stacklevel=4)
            if out is None:
                _set_rng_state(x.device, state)
                out = run(model, x, y, *args, target_logits, kappa)
            return out
        self.captures += 1
        self._entries[key] = _Entry(model, _module_objective(loss), replay)
        return out

    @staticmethod
    def _first_replay(replay, state, run, model, x, y, args, target_logits, kappa):
        """(output, None) when the first replay agrees with the eager loop, both run from the RNG
        state the caller had (`state`); (eager output, problem) otherwise. Either way the caller's
        RNG ends as after one eager attack, whatever the capture drew."""
        _set_rng_state(x.device, state)
        eager = run(model, x, y, *args, target_logits, kappa)
        _set_rng_state(x.device, state)
        graphed = replay(x, y, target_logits)
        if graphed.shape != eager.shape or graphed.dtype != eager.dtype:
            return eager, (f"replay returned shape {tuple(graphed.shape)} {graphed.dtype}, the eager loop "
                           f"{tuple(eager.shape)} {eager.dtype}")
        differ = float((graphed != eager).float().mean()) if eager.numel() else 0.0
        if not differ <= MISMATCH_FRACTION:
            return eager, (f"replay disagrees with the eager loop on {100 * differ:.1f} % of the elements "
                           f"(> {100 * MISMATCH_FRACTION:g} %)")
        return graphed, None


@contextlib.contextmanager
def cuda_graphs(cache=True):
    """Capture/replay PGD loops inside the block through `cache`.

    cache: a :class:`GraphCache` (kept after the block: its owner releases it); True — a new
    cache for this block only, released at its end; False or None — no graphs in the block.
    No effect on CPU tensors.
    """
    global _active
    if cache is True:
        cache, owned = GraphCache(), True
    else:
        owned = False
        if cache is False:
            cache = None
        if cache is not None and not isinstance(cache, GraphCache):
            raise TypeError(f"cuda_graphs takes a GraphCache, True or False/None, got {type(cache).__name__}")
    previous, _active = _active, cache
    try:
        yield cache
    finally:
        _active = previous
        if owned:
            cache.release()


def active_cache():
    """The GraphCache in effect here, or None."""
    return _active


def applicable(x, eps, alpha, generator, model, loss="ce"):
    """Whether this PGD call goes through the active cache (see the module docstring's requirements)."""
    return _active is not None and _active.accepts(x, eps, alpha, generator, model, loss)


def graphed_pgd(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    """The attack through the active cache (pgd() calls this when :func:`applicable`)."""
    return _active.run(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)


def _rng_state(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device, state):
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _key(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    autocast = torch.is_autocast_enabled(x.device.type)
    if not isinstance(loss, str):
        # An objective module is keyed by identity (the entry then holds it, so its id cannot be
        # reused while the key exists) and by its modules' modes: a teacher switched between
        # train and eval mode is another computation.
        loss = ("objective", id(loss), tuple(m.training for m in loss.modules()))
    # id(model) only spreads entries over models; an entry is replayed only after
    # _Entry.matches has checked the model (and objective) and their tensors by identity.
    return (id(model), model.training, tuple(x.shape), x.dtype, x.stride(), x.device, tuple(y.shape), float(eps),
            float(alpha), int(steps), random_start, loss, float(kappa),
            None if target_logits is None else (tuple(target_logits.shape), target_logits.dtype),
            autocast, torch.get_autocast_dtype(x.device.type) if autocast else None)


def _capture_cuda_graph(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    static_x = x.detach().clone(memory_format=torch.preserve_format)
    static_y = y.detach().clone()
    static_t = None if target_logits is None else target_logits.detach().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream (cuDNN autotuning, lazy inits, kernel self-checks)
        for _ in range(2):
            run(model, static_x, static_y, eps, alpha, steps, random_start, loss, static_t, kappa)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run(model, static_x, static_y, eps, alpha, steps, random_start, loss, static_t, kappa)

    def replay(x, y, target_logits):
        static_x.copy_(x)
        static_y.copy_(y)
        if static_t is not None:
            static_t.copy_(target_logits)
        graph.replay()
        return static_out.clone()

    return replay
