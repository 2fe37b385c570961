"""DaliLoader: the DeviceLoader interface on an NVIDIA DALI pipeline (optional backend).

The uint8 images stay in host memory and enter the pipeline through ``fn.external_source``; DALI
does the pad-and-crop (``fn.slice`` with zero ``out_of_bounds_policy="pad"``), the mirror and the
conversion to float [0, 1] CHW (``fn.crop_mirror_normalize``) on its CPU threads
(``device_id=None``) or on the GPU (``device_id=k``), overlapping with the training step.

The random choices are not DALI's: each epoch's order, crop offsets and flips come from the same
``EpochPlan`` (drawn on the CPU from (seed, epoch)) that a CPU ``DeviceLoader`` uses, so both
backends serve the same batches and DDP sharding works the same way.

For 32x32 data DALI is not faster than the device-resident loader (docs/performance.md, lever 4); it is
here for hosts whose datasets do not fit in device memory. DALI is imported only when a DaliLoader
is constructed: ``pip install ciard-fast[dali]`` (package ``nvidia-dali-cuda130``).
"""
import numpy as np
import torch

from .loader import BaseLoader

_INSTALL_HINT = (
    "DaliLoader needs NVIDIA DALI, which is not installed: pip install ciard-fast[dali] "
    "(or pip install nvidia-dali-cuda130), or use make_loader('device', ...) instead"
)


def import_dali():
    """The DALI pieces DaliLoader uses: (fn, pipeline_def, types, feed_ndarray).

    Raises ImportError with the install hint when DALI or its PyTorch plugin is missing.
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return fn, pipeline_def, types, feed_ndarray


class DaliLoader(BaseLoader):
    """Iterate (x, y) batches produced by a DALI pipeline; same arguments and outputs as ``DeviceLoader``.

    Extra args:
        device_id: None (default) runs the pipeline on the CPU; an int runs it on that GPU.
        device: where the batches are returned; default "cpu" for a CPU pipeline and
            ``cuda:<device_id>`` for a GPU one (which requires exactly that device).
        num_threads: DALI CPU worker threads (default 2).
        prefetch_queue_depth: batches DALI prepares ahead (default 2).

    Yields ``x``: ``dtype`` [B, C, H, W] in [0, 1] (channels_last memory when asked) and
    ``y``: int64 [B], on ``device``. For the same (seed, epoch) the batches equal those of a CPU
    ``DeviceLoader`` up to float rounding (DALI multiplies by 1/255 where torch divides by 255).
    """

    def __init__(
        self,
        dataset_or_images,
        labels=None,
        batch_size: int = 128,
        device=None,
        shuffle: bool = True,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
        device_id=None,
        num_threads: int = 2,
        prefetch_queue_depth: int = 2,
    ):
        fn, pipeline_def, types, self._feed_ndarray = import_dali()
        images, labels = self._setup(dataset_or_images, labels, batch_size, shuffle, augment, crop_padding,
                                     flip, drop_last, seed, channels_last, dtype, rank, world_size)
        self.device, self.device_id = _resolve_device(device, device_id)
        for name, value in (("num_threads", num_threads), ("prefetch_queue_depth", prefetch_queue_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        self.plan_device = torch.device("cpu")  # the plan feeds DALI from the host
        self.images = images.cpu().contiguous()
        self._images_np = self.images.numpy()
        self.labels = labels.to(self.device)
        self._crop = self.augment and self.crop_padding > 0
        self._mirror = self.augment and self.flip
        self._plan, self._cursor, self._open = None, 0, False
        self._pipe = self._build(fn, pipeline_def, types, num_threads, prefetch_queue_depth)

    def _build(self, fn, pipeline_def, types, num_threads, depth):
        _, h, w, _ = self.images.shape
        out_dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        gpu = self.device_id is not None

        @pipeline_def(batch_size=self.batch_size, num_threads=num_threads, device_id=self.device_id,
                      prefetch_queue_depth=depth)
        def pipeline():
            # the callback returns only the arrays the graph uses: images [, anchors] [, mirror]
            layouts = ["HWC"] + [""] * (self._crop + self._mirror)
            dtypes = [types.UINT8] + [types.INT32] * (self._crop + self._mirror)
            inputs = list(fn.external_source(source=self._next_batch, num_outputs=len(layouts), batch=True,
                                             layout=layouts, dtype=dtypes))
            images = inputs.pop(0)
            if gpu:
                images = images.gpu()
            if self._crop:
                # anchor (y, x) may be negative or overrun: the outside reads as zero = zero padding
                images = fn.slice(images, inputs.pop(0), np.array([h, w], dtype=np.int32), axes=[0, 1],
                                  out_of_bounds_policy="pad", fill_values=0)
            mirror = inputs.pop(0) if self._mirror else 0
            return fn.crop_mirror_normalize(
                images, mirror=mirror, mean=[0.0], std=[255.0], dtype=out_dtype,
                output_layout="HWC" if self.channels_last else "CHW",
            )

        pipe = pipeline()
        pipe.build()
        return pipe

    def _next_batch(self):
        """external_source callback: the next batch of the current plan, as host arrays."""
        if self._plan is None or self._cursor >= self._plan.num_batches:
            raise StopIteration
        idx, offsets, flips = self._plan.batch(self._cursor)
        self._cursor += 1
        out = [self._images_np[idx.numpy()]]
        if self._crop:
            out.append((offsets.numpy() - self.crop_padding).astype(np.int32))  # (y, x) anchors
        if self._mirror:
            out.append(flips.numpy().astype(np.int32))
        return out

    def __iter__(self):
        if self._open:  # the previous epoch was abandoned mid-way: flush what DALI prefetched
            self._plan = None
            self._drain()
        return super().__iter__()

    def _batches(self, plan):
        self._plan, self._cursor, self._open = plan, 0, True
        stream = None
        if self.device_id is not None and getattr(self._pipe, "exec_dynamic", False):
            stream = torch.cuda.current_stream(self.device)
        for i in range(plan.num_batches):
            (out,) = self._pipe.run(stream)
            x = self._to_torch(out.as_tensor(), stream)
            y = self.labels.index_select(0, plan.batch(i)[0].to(self.device))
            yield x, y
        self._drain()

    def _drain(self):
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        self._open = False

    def _to_torch(self, tensor, stream):
        shape = tuple(tensor.shape())
        out_device = self.device if self.device_id is not None else torch.device("cpu")
        dali_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        x = torch.empty(shape, dtype=dali_dtype, device=out_device)
        self._feed_ndarray(tensor, x, cuda_stream=stream)
        x = x.to(self.device, self.dtype)
        return x.permute(0, 3, 1, 2) if self.channels_last else x  # HWC memory = channels_last NCHW


def _resolve_device(device, device_id):
    if device_id is None:
        return torch.device(device if device is not None else "cpu"), None
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id must be None (CPU pipeline) or a GPU index >= 0; got {device_id!r}")
    want = torch.device("cuda", device_id)
    given = torch.device(device) if device is not None else want
    if given.type != "cuda" or given.index not in (None, device_id):
        raise ValueError(
            f"a GPU pipeline on device_id={device_id} returns batches on {want}, but device={device!r}; "
            f"pass device=None or device='{want}' (or device_id=None for a CPU pipeline)"
        )
    return want, device_id
