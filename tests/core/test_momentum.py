"""EMA teacher update and momentum schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from core.momentum import TeacherRule, TeacherVersion, cosine_momentum, ema_update_


def test_ema_equals_the_formula_on_parameters_and_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    teacher = copy.deepcopy(student[:2])
    student.train()(torch.randn(8, 3))  # moves the student's running statistics
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.9)
    s = student.state_dict()
    for name, old in before.items():
        if old.is_floating_point():
            torch.testing.assert_close(
                teacher.state_dict()[name], 0.9 * old + 0.1 * s[name], rtol=1e-6, atol=1e-7
            )
        else:
            assert torch.equal(teacher.state_dict()[name], s[name])
    # the running statistics moved too
    assert not torch.equal(teacher.state_dict()["1.running_mean"], before["1.running_mean"])


def test_ema_refuses_a_teacher_the_student_does_not_match():
    with pytest.raises(ValueError, match="the student lacks"):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)


def test_cosine_schedule():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(500, 100, 0.99) == pytest.approx(1.0)


def test_rules_validate():
    assert TeacherRule.frozen().kind == "frozen"
    assert TeacherRule.ema(0.99, 10).momentum(0) == pytest.approx(0.99)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        TeacherRule.ema(1.5, 10)
    with pytest.raises(ValueError, match="frozen' or 'ema'"):
        TeacherRule("momentum")


def test_version_bookkeeping():
    version = TeacherVersion()
    version.check(0, 1, 0)
    version.check(1, 1, 0)
    with pytest.raises(RuntimeError, match="promises 1"):
        version.check(2, 1, 0)
