"""The benchmark baseline: the reference CIARD step computes what our CIARD step computes, and
bench_train.py runs end to end on CPU and writes its JSON.

The reference step (benchmarks/reference/) is what every speed claim is measured against, so it
must do the same mathematics as ciard_fast.methods.ciard.CIARD. Starting from identical weights,
batch and RNG seed, a step of each must leave the same student (and, under ITT, the same robust
teacher). The batch size is a power of two so that the sign of the mean-CE gradient (reference)
and of the sum-CE gradient (ours) agree bit for bit, and pixels stay away from 0 and 1 so that
our clamped random start equals the reference's unclamped one.
"""
import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.methods import AttackSettings, get_method

from _tiny import tiny_convnet

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)
from reference import ReferenceCIARD, ReferenceLoader  # noqa: E402  (needs BENCH_DIR on the path)

EPOCHS = 6          # E_itt = E/6 = 1: epoch 1 is before ITT, epoch 2 has ITT active
TEACHER_LR = 0.05   # large, so that a wrong ITT update would show in R's weights after one step
LR, MOMENTUM, WD = 0.1, 0.9, 2e-4


def make_pair():
    """Our CIARD method + its optimisers, and a reference step over deep copies of the same models."""
    student, robust, clean = tiny_convnet(seed=0), tiny_convnet(seed=1), tiny_convnet(seed=2)
    ref = ReferenceCIARD(copy.deepcopy(student), copy.deepcopy(robust), copy.deepcopy(clean), lr=LR,
                         momentum=MOMENTUM, weight_decay=WD, steps=3)
    cls = get_method("ciard")
    ours = cls(student, num_classes=10, epochs=EPOCHS, robust_teacher=robust, clean_teacher=clean,
               options=cls.Options(itt_lr=TEACHER_LR), attack=AttackSettings(8 / 255, 2 / 255, 3))
    optimizer = RunOptimizers(ours, momentum=MOMENTUM, weight_decay=WD, kind="sgd")  # the student's, ITT's
    assert optimizer["student"].param_groups[0]["lr"] == LR
    return ours, optimizer, ref


def batch(seed, B=16):
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, 10, (B,), generator=g)


def start_epoch(ours, optimizer, ref, epoch):
    optimizer.set_epoch(epoch)
    ours.start_epoch(epoch)
    ref.itt_active = ours.itt_active
    ref.set_lrs(lr=ours.student_lr(epoch), teacher_lr=optimizer["teacher_optimizer"].param_groups[0]["lr"])


def step_both(ours, optimizer, ref, x, y, seed):
    """One engine-style step of ours and one reference step, from the same global RNG state."""
    torch.manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    out = ours.training_step(x, y)
    out["loss"].backward()
    optimizer.step()
    ours.after_optimizer_step()
    torch.manual_seed(seed)
    ref_out = ref.step(x, y)
    return out, ref_out


def assert_same_module(a, b, what, buffers=True):
    tensors = dict(a.named_parameters(), **(dict(a.named_buffers()) if buffers else {}))
    others = dict(b.named_parameters(), **(dict(b.named_buffers()) if buffers else {}))
    for name, value in tensors.items():
        torch.testing.assert_close(value, others[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}.{name}: {m}")


def assert_same_state(ours, ref):
    assert abs(ours.tau_adv.item() - ref.temp_adv) < 1e-6 and abs(ours.tau_nat.item() - ref.temp_nat) < 1e-6
    torch.testing.assert_close(ours.weights, torch.tensor([ref.weight["adv_loss"], ref.weight["nat_loss"]]),
                               atol=1e-6, rtol=1e-6)
    assert ours.push_lambda.item() == pytest.approx(ref.push_lambda, rel=1e-6)


def test_reference_step_matches_ours_before_itt():
    ours, optimizer, ref = make_pair()
    start_epoch(ours, optimizer, ref, 1)
    assert not ours.itt_active
    for i in range(2):  # the first step records L⁰; the second moves the loss weights
        x, y = batch(i)
        out, ref_out = step_both(ours, optimizer, ref, x, y, seed=100 + i)
        for key in ("L_adv", "L_nat", "L_push"):
            assert out[key].item() == pytest.approx(ref_out[key], rel=1e-5, abs=1e-7), key
        assert out["mask_count"].item() > 0  # the push term took part
    assert_same_module(ours.student, ref.student, "student")
    assert_same_module(ours.robust_teacher, ref.robust_teacher, "robust_teacher")
    assert_same_state(ours, ref)
    assert ref.weight["adv_loss"] != 0.5  # the adaptive weights did move


def test_reference_step_matches_ours_with_itt():
    ours, optimizer, ref = make_pair()
    start_epoch(ours, optimizer, ref, 1)
    step_both(ours, optimizer, ref, *batch(0), seed=100)
    start_epoch(ours, optimizer, ref, 2)
    assert ours.itt_active and ref.teacher_optimizer.param_groups[0]["lr"] > 0
    before = copy.deepcopy(ours.robust_teacher)
    step_both(ours, optimizer, ref, *batch(1), seed=101)
    assert_same_module(ours.student, ref.student, "student")
    # R's BN statistics differ by design (the reference also runs the unused R(x) in train mode),
    # so only its parameters are compared.
    assert_same_module(ours.robust_teacher, ref.robust_teacher, "robust_teacher", buffers=False)
    moved = max((p - q).abs().max().item() for p, q in zip(ours.robust_teacher.parameters(), before.parameters()))
    assert moved > 1e-4  # ITT did update R
    assert_same_state(ours, ref)


def test_reference_loader_serves_augmented_batches():
    images = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8).numpy()
    loader = ReferenceLoader(images, list(range(10)), batch_size=4, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    x, y = batches[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    plain = ReferenceLoader(images, list(range(10)), batch_size=4, padding=0, flip=False, shuffle=False)
    x, y = next(iter(plain))
    torch.testing.assert_close(x, torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 255)


def test_bench_train_runs_on_cpu_and_writes_json(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, os.path.join(BENCH_DIR, "bench_train.py"), "--device", "cpu", "--batch", "8",
           "--image-size", "16", "--repeats", "2", "--warmup", "1", "--profile-steps", "1", "--threads", "1",
           "--json", str(out)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60, f"bench_train.py took {elapsed:.0f} s with tiny settings"
    payload = json.loads(out.read_text())
    for key in ("device", "torch", "triton", "date", "config", "rows"):
        assert key in payload
    steps = {r["impl"]: r for r in payload["rows"] if r["table"] == "step"}
    assert set(steps) == {"ours", "reference"}
    for row in steps.values():
        for key in ("images_per_s", "ms", "mfu_pct", "gflop_per_image", "peak_tflops", "dtype", "batch", "device"):
            assert key in row, key
        assert row["images_per_s"] > 0 and row["batch"] == 8
    assert steps["ours"]["speedup_vs_reference"] > 0
    phases = [r for r in payload["rows"] if r["table"] == "phases"]
    assert {r["phase"] for r in phases} >= {"data", "pgd", "teacher fwd", "losses", "backward+optimizer"}
    assert "ours" in result.stdout and "reference" in result.stdout
