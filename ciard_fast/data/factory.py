"""make_loader: pick a loader backend by name."""

KINDS = ("device", "dali")


def make_loader(kind: str = "device", *args, **kwargs):
    """Build a loader of ``kind`` with the shared interface (see ``DeviceLoader`` for the arguments).

    ``"device"``: ``DeviceLoader``, the dataset resident on ``device``, augmented there (default;
    the fast choice for CIFAR/Tiny-ImageNet). ``"dali"``: ``DaliLoader``, an NVIDIA DALI pipeline
    on the CPU (``device_id=None``) or a GPU (``device_id=k``); needs ``pip install ciard-fast[dali]``.
    """
    if kind == "device":
        from .loader import DeviceLoader

        return DeviceLoader(*args, **kwargs)
    if kind == "dali":
        from .dali import DaliLoader

        return DaliLoader(*args, **kwargs)
    raise ValueError(f"unknown loader kind {kind!r}; valid kinds: {', '.join(KINDS)}")
