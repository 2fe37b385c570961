"""bf16 autocast that yields non-finite logits on the first batch falls back to fp32, once, loudly."""
import warnings

import pytest
import torch

from ciard_fast.engine.precision import PrecisionFallbackWarning, RunPrecision
from ciard_fast.models import create_model


class BrokenInBf16(torch.nn.Module):
    """Finite logits in fp32; inf wherever a matmul ran in bf16 (a stand-in for an overflow)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 10)
        self.bn = torch.nn.BatchNorm1d(12)

    def forward(self, x):
        out = self.fc(self.bn(x.flatten(1)[:, :12]))
        return out * float("inf") if out.dtype == torch.bfloat16 else out


def test_non_finite_bf16_logits_switch_the_run_to_fp32():
    model = BrokenInBf16().train()
    before = [b.clone() for b in model.buffers()]
    run = RunPrecision("bf16", "cpu")
    x = torch.rand(8, 3, 4, 4)
    with pytest.warns(PrecisionFallbackWarning, match=r"model 1 \(BrokenInBf16\).*fp32"):
        assert run.check_first_batch([create_model("small_cnn", width=4), model], x) == "fp32"
    assert run.precision == "fp32" and "non-finite" in run.fallback_reason
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), "BN statistics must be restored"
    with run():
        assert torch.isfinite(model(x)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.check_first_batch([model], x) == "fp32"  # once per run


def test_healthy_bf16_and_fp32_runs_are_left_alone():
    x = torch.rand(8, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bf16 = RunPrecision("bf16", "cpu")
        assert bf16.check_first_batch([create_model("small_cnn", width=4)], x) == "bf16"
        with bf16():
            assert torch.is_autocast_enabled("cpu")
        fp32 = RunPrecision("fp32", "cpu")
        assert fp32.check_first_batch([BrokenInBf16()], x) == "fp32" and fp32.checked


def test_model_broken_in_both_precisions_keeps_bf16():
    class AlwaysNaN(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    run = RunPrecision("bf16", "cpu")
    assert run.check_first_batch([AlwaysNaN()], torch.rand(2, 3, 4, 4)) == "bf16"  # fp32 would not help


def test_trainer_runs_the_check_on_its_first_batch(tmp_path, monkeypatch):
    """A whole run asked for bf16 whose linear layers overflow in bf16: it warns once, trains in
    fp32, and its losses are finite."""
    import ciard_fast
    from ciard_fast.config import build_config

    linear = torch.nn.Linear.forward

    def overflowing(self, x):
        out = linear(self, x)
        return out * float("inf") if out.dtype == torch.bfloat16 else out

    monkeypatch.setattr(torch.nn.Linear, "forward", overflowing)
    tiny = dict(method="natural", dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 16},
                val_size=16, student="small_cnn", student_args={"width": 4}, epochs=2, batch_size=32,
                eval_pgd_steps=1, test_attacks=(), compare_natural_student=False, progress=False, plot=False,
                device="cpu", precision="bf16", out_dir=str(tmp_path / "run"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = ciard_fast.train(build_config(overrides=tiny))
    found = [w for w in record if issubclass(w.category, PrecisionFallbackWarning)]
    assert len(found) == 1 and "SmallCNN" in str(found[0].message), [str(w.message) for w in record]
    assert len(result.history) == 2
    for row in result.history:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k.startswith(("train_", "val_")))
