"""DaliLoader (NVIDIA DALI backend) against DeviceLoader, on DALI's CPU pipeline.

Both loaders execute the same per-epoch plan, so beyond matching statistics their batches must
agree up to float rounding (DALI scales by 1/255, torch divides by 255). The GPU pipeline is
checked only on machines with CUDA.
"""
import importlib.util
import sys

import pytest
import torch

from ciard_fast.data import DaliLoader, DeviceLoader, load_dataset, make_loader

HAVE_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(
    not HAVE_DALI, reason="nvidia.dali is not importable (pip install ciard-fast[dali] to run these tests)"
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train_full")


def epoch(loader):
    xs, ys = zip(*list(loader))
    return xs, ys


def assert_same_batches(a, b, atol=1e-6):
    xa, ya = a
    xb, yb = b
    assert len(xa) == len(xb)
    for x1, x2, y1, y2 in zip(xa, xb, ya, yb):
        assert x1.shape == x2.shape and x1.dtype == x2.dtype
        assert torch.equal(y1, y2)
        torch.testing.assert_close(x1.float(), x2.float(), atol=atol, rtol=0)


@needs_dali
def test_unaugmented_batches_equal_the_device_loader(digits):
    kw = dict(batch_size=128, shuffle=False, augment=False, drop_last=False)
    dali, dev = epoch(DaliLoader(digits, **kw)), epoch(DeviceLoader(digits, **kw))
    assert [len(y) for y in dali[1]] == [128] * 11 + [1497 - 11 * 128]
    assert_same_batches(dali, dev)
    torch.testing.assert_close(torch.cat(dali[0]), digits.nchw_float(), atol=1e-6, rtol=0)


@needs_dali
def test_augmented_epoch_statistics_and_batches_match_the_device_loader(digits):
    kw = dict(batch_size=100, seed=3)
    dali_loader, dev_loader = DaliLoader(digits, **kw), DeviceLoader(digits, **kw)
    assert len(dali_loader) == len(dev_loader) == 14
    for _ in range(2):  # two epochs: the pipeline is reset between them
        dali, dev = epoch(dali_loader), epoch(dev_loader)
        x_dali, x_dev = torch.cat(dali[0]), torch.cat(dev[0])
        assert x_dali.shape == (1400, 3, 32, 32) and x_dali.dtype == torch.float32
        assert float(x_dali.min()) == 0.0 and float(x_dali.max()) == 1.0
        means_dali, means_dev = x_dali.mean((0, 2, 3)), x_dev.mean((0, 2, 3))
        torch.testing.assert_close(means_dali, means_dev, atol=1e-4, rtol=0)
        # padding really happened: crops shift zeros in, so the mean is below the unpadded one
        assert float(means_dali[0]) < float(digits.nchw_float().mean())
        assert_same_batches(dali, dev)  # the shared plan makes them equal, not just alike
    assert not torch.equal(dali[1][0], epoch(DaliLoader(digits, batch_size=100, seed=4))[1][0])


@needs_dali
@pytest.mark.parametrize("kw", [dict(channels_last=True), dict(dtype=torch.float16), dict(dtype=torch.bfloat16),
                                dict(crop_padding=0), dict(flip=False)])
def test_options_match_the_device_loader(digits, kw):
    args = dict(batch_size=256, seed=1, **kw)
    dali, dev = epoch(DaliLoader(digits, **args)), epoch(DeviceLoader(digits, **args))
    assert_same_batches(dali, dev, atol=1e-6 if kw.get("dtype") is None else 1e-2)
    if kw.get("channels_last"):
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x in dali[0])


@needs_dali
def test_rank_shards_and_abandoned_epochs(digits):
    for rank in range(2):
        kw = dict(batch_size=64, seed=2, rank=rank, world_size=2)
        assert_same_batches(epoch(DaliLoader(digits, **kw)), epoch(DeviceLoader(digits, **kw)))
    dali, dev = DaliLoader(digits, batch_size=64), DeviceLoader(digits, batch_size=64)
    it = iter(dali)
    next(it)  # stop after one batch; DALI has prefetched more of epoch 0
    dali.set_epoch(1)
    dev.set_epoch(1)
    assert_same_batches(epoch(dali), epoch(dev))


@needs_dali
def test_make_loader_and_argument_checks(digits):
    assert isinstance(make_loader("dali", digits, batch_size=32), DaliLoader)
    with pytest.raises(ValueError, match="device_id"):
        DaliLoader(digits, device_id=-1)
    with pytest.raises(ValueError, match="device='cpu'"):
        DaliLoader(digits, device="cpu", device_id=0)
    with pytest.raises(ValueError, match="batch_size"):
        DaliLoader(digits, batch_size=0)


@needs_dali
@pytest.mark.gpu
def test_gpu_pipeline_matches_the_cpu_pipeline(digits):
    kw = dict(batch_size=128, seed=0)
    gpu = epoch(DaliLoader(digits, device_id=0, **kw))
    cpu = epoch(DaliLoader(digits, **kw))
    assert gpu[0][0].is_cuda and gpu[1][0].is_cuda
    assert_same_batches(tuple([t.cpu() for t in part] for part in gpu), cpu)


def test_missing_dali_raises_an_import_error_with_the_install_command(monkeypatch, digits):
    # None in sys.modules makes `import nvidia.dali` fail, whether or not DALI is installed
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match=r"pip install ciard-fast\[dali\]"):
        DaliLoader(digits)
    with pytest.raises(ImportError, match="nvidia-dali-cuda130"):
        make_loader("dali", digits)
