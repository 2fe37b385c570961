"""The model registry: ``register_model``, ``create_model``, ``list_models``.

A factory is any callable ``fn(num_classes=10, **kw) -> nn.Module``; register it with

    @register_model("my_net")
    def my_net(num_classes=10, width=32):
        return MyNet(num_classes, width)

and build it with ``create_model("my_net", num_classes=100, normalize="cifar100", width=64)``.
Factories returning an :class:`ImageClassifier` get ``normalize`` applied inside their forward.
"""
import inspect

from torch import nn

from ..registry import Registry

MODELS = Registry("model")


def register_model(name):
    """Decorator registering ``fn(num_classes=10, **kw) -> nn.Module`` under ``name``.

    Raises:
        TypeError: ``name`` is not a non-empty str, or the decorated object is not callable.
        ValueError: ``name`` is already registered (names are never silently replaced).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model needs a non-empty model name (str); got {name!r}")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"register_model({name!r}) must decorate a callable; got {fn!r}")
        return MODELS.register(name, fn)

    return decorator


def list_models():
    """Sorted names of every registered model."""
    return MODELS.names()


def create_model(name, num_classes=10, normalize=None, **kw):
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (e.g. ``"resnet18"``, ``"wrn34_10"``).
        num_classes: number of output logits, an int >= 1 (default 10).
        normalize: ``None`` (the model's default: identity for every layout except
            ``wrn70_16``, which keeps the DeepMind layout's built-in statistics), a key of
            ``DATASET_STATS`` (``"cifar10"``, ``"cifar100"``, ``"tinyimagenet"``, ...) or a
            ``(mean, std)`` pair of per-channel sequences. Applied inside forward to [0, 1]
            images; it never changes the ``state_dict`` keys.
        **kw: passed on to the factory (e.g. ``width=`` for ``small_cnn``).

    Returns:
        The model (in train mode, on the default device), taking ``[B, 3, H, W]`` images in
        [0, 1] and returning ``[B, num_classes]`` logits.

    Raises:
        ValueError: unknown name (the valid names are listed) or bad ``num_classes``.
        TypeError: ``name`` is not a str, a keyword the factory does not accept, or
            ``normalize`` given for a model that cannot normalise itself.
    """
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}")
    _check_kwargs(name, factory, kw)
    model = factory(num_classes=num_classes, **kw)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory of {name!r} returned {type(model).__name__}, not an nn.Module")
    if normalize is not None:
        if not hasattr(model, "set_normalization"):
            raise TypeError(
                f"model {name!r} ({type(model).__name__}) cannot normalise its inputs; make it "
                "subclass ciard_fast.models.ImageClassifier, or pass normalize=None"
            )
        model.set_normalization(normalize)
    return model


def check_model_kwargs(name, kw):
    """Raise TypeError (naming the accepted keywords) if model `name` does not accept keywords
    `kw`; ValueError for an unknown name. For checking a config before anything is built."""
    _check_kwargs(name, MODELS.get(name), kw)


def _check_kwargs(name, factory, kw):
    # a clear message naming the accepted keywords instead of a bare "unexpected keyword"
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if p != "num_classes" and v.kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} does not accept keyword(s) {unknown}; it accepts {accepted or 'none'}"
        )
