"""Batched gather + random crop (zero padding) + horizontal flip as pure tensor ops.

The whole batch is produced by one ``index_select`` from the flattened dataset: the padded image is
never materialised; instead each output pixel's source coordinate is computed with index
arithmetic, and pixels that fall in the padding are zeroed with one ``torch.where``. No Python loop
over images, no host synchronisation, the same code on CPU and GPU.
"""
from typing import Optional

import torch


def gather_crop_flip(
    images: torch.Tensor,
    indices: torch.Tensor,
    offsets: Optional[torch.Tensor] = None,
    flips: Optional[torch.Tensor] = None,
    padding: int = 0,
) -> torch.Tensor:
    """Gather ``images[indices]`` with per-sample crops and flips; returns uint8 [B, H, W, C].

    Args:
        images: uint8 [N, H, W, C] (NHWC), contiguous: the whole dataset.
        indices: int64 [B], dataset rows to serve.
        offsets: int64 [B, 2] (dy, dx) in [0, 2 * padding]: the top-left corner of the H x W window
            in the image zero-padded by ``padding`` on every side. None: no crop.
        flips: bool [B]; True mirrors the cropped window left-right. None: no flip.
        padding: the zero padding the offsets refer to.

    Output pixel (i, j) of sample b equals padded[b, i + dy, j' + dx] with j' = W - 1 - j when
    flipped (crop, then mirror), else j.
    """
    n, h, w, c = images.shape
    if offsets is None and flips is None:
        return images.index_select(0, indices)
    device = indices.device
    rows = torch.arange(h, device=device).expand(indices.shape[0], h)  # [B, H]
    cols = torch.arange(w, device=device).expand(indices.shape[0], w)  # [B, W]
    if offsets is not None:
        rows = rows + (offsets[:, :1] - padding)
        cols = cols + (offsets[:, 1:] - padding)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [B, H, W]
    # flat pixel index into images viewed as [N*H*W, C]; out-of-image positions read a clamped
    # (valid) pixel that the mask then zeroes
    flat = (indices[:, None, None] * h + rows.clamp(0, h - 1)[:, :, None]) * w + cols.clamp(0, w - 1)[:, None, :]
    out = images.reshape(n * h * w, c).index_select(0, flat.reshape(-1)).view(-1, h, w, c)
    return torch.where(valid[..., None], out, 0)  # a Python 0 keeps uint8 and allocates nothing


def to_float_nchw(batch: torch.Tensor, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W, C] -> ``dtype`` [B, C, H, W] in [0, 1].

    NHWC memory viewed as NCHW *is* the channels_last layout, so ``channels_last=True`` costs only
    the conversion; otherwise the uint8 batch is made contiguous NCHW first (moving 1 byte per
    value instead of 4).
    """
    x = batch.permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    return x.to(dtype).div_(255)  # .to keeps the memory format of x
