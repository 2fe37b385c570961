"""CUDA-graph capture of the PGD loop (PERFORMANCE.md lever 1).

A 10-step training attack is ~10 × (forward + input backward + step) of small kernels; on a GPU
their launch overhead, not their arithmetic, dominates at CIFAR sizes. Inside
`with cuda_graphs():` (the engine opens it around training steps on CUDA) each distinct attack —
same model, shapes, dtypes, hyperparameters and autocast state — is captured once into a CUDA
graph and replayed afterwards: one launch for the whole loop.

Why replay is exact: the graph reads the model's parameters and BN buffers in place, so it sees
every optimiser update; the random start draws from the default CUDA generator, which is graph-
safe (each replay advances its Philox offset); nothing in the loop synchronises with the host.
Requirements, checked here, else the eager loop runs: CUDA inputs, no explicit `generator`,
Python-number ε/α, an `nn.Module` (and an `nn.Module` objective when the loss is a callable; the
objective object and its modules' modes are part of the key). Autocast's weight cache must be off
during capture (the engine opens autocast with cache_enabled=False when graphs are on). A capture that fails falls back to
the eager loop with one warning.
"""
import contextlib
import warnings

import torch

_enabled = False
_graphs = {}          # key -> (graph, static inputs..., static output)
_failed = set()       # keys whose capture failed: run eagerly


@contextlib.contextmanager
def cuda_graphs(enabled=True):
    """Capture/replay PGD loops inside the block (no effect on CPU tensors or when disabled)."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def clear():
    """Drop every captured graph (and the memory pools they hold)."""
    _graphs.clear()
    _failed.clear()


def _key(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    autocast = torch.is_autocast_enabled("cuda")
    if callable(loss):
        # The objective object itself (hashed by identity, and kept alive by the cache so its id
        # cannot be reused) and the modes of the modules it evaluates: a teacher switched between
        # train and eval mode is a different computation.
        modes = tuple(m.training for m in loss.modules()) if isinstance(loss, torch.nn.Module) else None
        loss = ("objective", loss, modes)
    return (id(model), model.training, tuple(x.shape), x.dtype, x.stride(), x.device, tuple(y.shape), float(eps),
            float(alpha), int(steps), random_start, loss, float(kappa),
            None if target_logits is None else (tuple(target_logits.shape), target_logits.dtype),
            autocast, torch.get_autocast_dtype("cuda") if autocast else None)


def applicable(x, eps, alpha, generator, model, loss="ce"):
    """Whether this PGD call can be captured. A callable objective must be an ``nn.Module``: its
    state is then parameters and buffers, which a replay reads in place; a plain function might
    close over per-step tensors that a replay would not see, so it runs eagerly."""
    return (_enabled and x.is_cuda and generator is None and isinstance(model, torch.nn.Module)
            and not isinstance(eps, torch.Tensor) and not isinstance(alpha, torch.Tensor)
            and (isinstance(loss, str) or isinstance(loss, torch.nn.Module)))


def graphed_pgd(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    """`run(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)` (the eager
    loop) through a cached CUDA graph. Returns a new tensor like the eager loop does."""
    key = _key(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
    if key in _failed:
        return run(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
    entry = _graphs.get(key)
    if entry is None:
        try:
            entry = _capture(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
        except Exception as exc:  # an op that cannot be captured: stay correct, lose the speed-up
            _failed.add(key)
            warnings.warn(f"CUDA-graph capture of the PGD loop failed ({type(exc).__name__}: {exc}); "
                          "running it eagerly", RuntimeWarning, stacklevel=3)
            return run(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
        _graphs[key] = entry
    graph, static_x, static_y, static_t, static_out = entry
    static_x.copy_(x)
    static_y.copy_(y)
    if static_t is not None:
        static_t.copy_(target_logits)
    graph.replay()
    return static_out.clone()


def _capture(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
    static_x = x.detach().clone(memory_format=torch.preserve_format)
    static_y = y.detach().clone()
    static_t = None if target_logits is None else target_logits.detach().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream (cuDNN autotuning, lazy inits)
        for _ in range(2):
            run(model, static_x, static_y, eps, alpha, steps, random_start, loss, static_t, kappa)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run(model, static_x, static_y, eps, alpha, steps, random_start, loss, static_t, kappa)
    return graph, static_x, static_y, static_t, static_out
