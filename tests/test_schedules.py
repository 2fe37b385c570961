"""Schedules of docs/method.md §4 at their breakpoints, for the paper's 300 epochs and a scaled run."""
import math

import pytest

from ciard_fast.schedules import ciard_student_lr, ciard_teacher_lr, scaled_epoch, step_decay_factor, step_lr


def shape(p):
    return (0.5 + 0.5 * math.cos(math.pi * p)) * math.exp(-0.01 * p * p)


def test_student_lr_at_breakpoints_E300():
    assert ciard_student_lr(1, 300) == 0.1
    assert ciard_student_lr(149, 300) == 0.1
    assert ciard_student_lr(150, 300) == pytest.approx(0.1)           # cos(0)·exp(0) = 1
    assert ciard_student_lr(225, 300) == pytest.approx(0.1 * 0.5 * math.exp(-0.01 * 0.25))
    assert ciard_student_lr(300, 300) == pytest.approx(0.0, abs=1e-12)  # 0.5 + 0.5·cos(π) = 0


def test_student_lr_scaled_E30():
    assert ciard_student_lr(14, 30) == 0.1
    assert ciard_student_lr(15, 30) == pytest.approx(0.1)
    assert ciard_student_lr(20, 30) == pytest.approx(0.1 * shape(5 / 15))
    assert ciard_student_lr(30, 30) == pytest.approx(0.0, abs=1e-12)


def test_teacher_lr_E300_and_scaled():
    assert ciard_teacher_lr(1, 300) == 0.0
    assert ciard_teacher_lr(50, 300) == 0.0                 # ITT starts *after* epoch 50
    assert ciard_teacher_lr(51, 300) == pytest.approx(1e-4 * shape(1 / 250))
    assert ciard_teacher_lr(175, 300) == pytest.approx(1e-4 * shape(0.5))
    assert ciard_teacher_lr(300, 300) == pytest.approx(0.0, abs=1e-15)
    assert ciard_teacher_lr(5, 30) == 0.0 and ciard_teacher_lr(6, 30) > 0.0  # 50 → 5 of 30
    assert ciard_teacher_lr(6, 30) == pytest.approx(1e-4 * shape(1 / 25))


def test_rate_decay_milestones():
    ms = (215, 260, 285)
    assert step_decay_factor(214, ms, 300, 300) == 1.0
    assert step_decay_factor(215, ms, 300, 300) == pytest.approx(0.1)
    assert step_decay_factor(260, ms, 300, 300) == pytest.approx(0.01)
    assert step_decay_factor(300, ms, 300, 300) == pytest.approx(0.001)
    # 30 epochs: 21.5 → 22, 26, 28.5 → 29
    assert [scaled_epoch(m, 30, 300) for m in ms] == [22, 26, 29]
    assert step_decay_factor(21, ms, 30, 300) == 1.0 and step_decay_factor(22, ms, 30, 300) == pytest.approx(0.1)


def test_step_lr_ard_schedule():
    assert step_lr(99, 200, 200, (100, 150)) == 0.1
    assert step_lr(100, 200, 200, (100, 150)) == pytest.approx(0.01)
    assert step_lr(150, 200, 200, (100, 150)) == pytest.approx(0.001)
    assert step_lr(10, 20, 200, (100, 150)) == pytest.approx(0.01)
