"""IAD's `reference_lr`: the public code's learning rate, bug included, against a transcription."""
import pytest
import torch

from ciard_fast.methods import get_method

from _tiny import tiny_convnet


def public_lrs(epochs=200, base=0.1, schedule=(100, 150), factor=0.1):
    """The public IAD loop: epochs from 0, `adjust_learning_rate` rescales a *local* copy of lr."""
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=base)
    out = []
    for epoch in range(epochs):
        lr = base  # the function's argument: main()'s lr, never updated
        if epoch in schedule:
            lr *= factor
            for group in optimizer.param_groups:
                group["lr"] = lr
        out.append(optimizer.param_groups[0]["lr"])
    return out


def make(**options):
    cls = get_method("iad")
    return cls(tiny_convnet(), num_classes=10, epochs=200, base_lr=0.1, robust_teacher=tiny_convnet(seed=1),
               options=cls.Options(**options))


def test_reference_lr_reproduces_the_public_schedule():
    expected = public_lrs()
    got = [make(reference_lr=True).student_lr(e) for e in range(1, 201)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected[-1] == pytest.approx(0.01)  # the bug: never 0.001


def test_default_lr_is_the_described_schedule():
    method = make()
    assert method.student_lr(99) == pytest.approx(0.1)
    assert method.student_lr(100) == pytest.approx(0.01)
    assert method.student_lr(150) == pytest.approx(0.001)


def test_reference_lr_must_be_a_bool():
    with pytest.raises(TypeError, match="reference_lr"):
        make(reference_lr="yes")
