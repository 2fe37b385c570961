"""The base of every model in the zoo: [0, 1] images in, logits out, normalisation inside.

Normalisation lives in the model so that every public API (attacks, losses, evaluation) works
on raw [0, 1] pixels whatever statistics a checkpoint was trained with. The statistics are
*non-persistent* buffers: ``state_dict()`` of a normalised model has exactly the keys of the
public checkpoint of that layout, so checkpoints load strictly either way, and the buffers still
follow ``.to(device)`` / ``.half()``.
"""
import torch
from torch import nn

from .normalization import resolve_normalization


class ImageClassifier(nn.Module):
    """A classifier of ``[B, C, H, W]`` images in [0, 1] returning ``[B, num_classes]`` logits.

    Subclasses build their layers after calling ``super().__init__`` and implement
    :meth:`forward_normalized`, which receives the already normalised batch.

    Attributes:
        num_classes: number of output logits.
        in_channels: number of input channels (3).
        mean, std: ``[C, 1, 1]`` non-persistent buffers, or ``None`` when no normalisation is
            applied (and then the forward does no arithmetic for it).
    """

    in_channels = 3
    # DeepMind/RobustBench models always hold ``mean``/``std`` tensors (identity = 0/1) and
    # adopt them from a checkpoint that carries them; others drop them when not normalising.
    _always_holds_stats = False
    # names under which a checkpoint may carry this layout's statistics (see load_weights)
    normalization_state_keys = None

    def __init__(self, num_classes, normalize=None):
        super().__init__()
        self.num_classes = num_classes
        self._normalization = None
        self.register_buffer("mean", None, persistent=False)
        self.register_buffer("std", None, persistent=False)
        self.set_normalization(normalize)

    @property
    def normalization(self):
        """``(mean, std)`` tuples of floats applied inside forward, or ``None`` (identity)."""
        return self._normalization

    def set_normalization(self, normalize):
        """Set the normalisation applied to inputs: ``None``, a name in ``DATASET_STATS``, or
        a ``(mean, std)`` pair of per-channel sequences. Returns ``self``.

        Raises ValueError/TypeError for unknown names or malformed statistics.
        """
        stats = resolve_normalization(normalize, channels=self.in_channels)
        # a Python copy of the statistics, so reading them never syncs with a GPU
        self._normalization = stats
        if stats is None and not self._always_holds_stats:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
            return self
        if stats is None:
            stats = ((0.0,) * self.in_channels, (1.0,) * self.in_channels)
        device, dtype = self._buffer_placement()
        for name, values in zip(("mean", "std"), stats):
            t = torch.tensor(values, dtype=dtype, device=device).reshape(-1, 1, 1)
            self.register_buffer(name, t, persistent=False)
        return self

    def _buffer_placement(self):
        # follow the model's own device and floating dtype (e.g. after .half()), so that
        # (x - mean) / std never promotes a half batch to float32 in front of half weights
        for t in self.parameters():
            if t.is_floating_point():
                return t.device, t.dtype
        for t in (self.mean, self.std):
            if t is not None:
                return t.device, t.dtype
        return None, torch.get_default_dtype()

    def forward(self, x):
        """Logits ``[B, num_classes]`` of a float batch ``x`` ``[B, C, H, W]`` in [0, 1].

        Any H, W that the layout's strides accept works (32 and 64 always do): global average
        pooling sits before the classifier.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a [B, {self.in_channels}, H, W] batch; "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects float images in [0, 1]; got dtype {x.dtype} "
                "(convert with x.float() / 255)"
            )
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.forward_normalized(x)

    def forward_normalized(self, x):
        """Logits of an already normalised batch; implemented by each layout."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_normalized")

    def extra_repr(self):
        return f"num_classes={self.num_classes}, normalization={self._normalization}"


def global_avg_pool(x):
    """``[B, C, H, W] -> [B, C]``: the mean over H and W.

    Equal to the public layouts' ``avg_pool2d(out, k)`` + ``view`` at their native size, and
    valid at any size. A plain mean (rather than ``AdaptiveAvgPool2d``) because its CUDA
    backward is deterministic and it never needs a ``.view`` (channels_last safe).
    """
    return x.mean(dim=(2, 3))


def params_to_buffers(module):
    """Turn every parameter under ``module`` into a persistent buffer of the same name.

    For layers that a public layout holds in its ``state_dict`` but never runs: their keys keep
    checkpoints loading strictly, while optimisers, weight decay and DDP never see them.
    """
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            del m._parameters[name]
            m.register_buffer(name, p.detach())
    return module
