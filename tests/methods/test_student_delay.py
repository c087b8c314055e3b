"""The symmetric ablation (``training.delay``): the student's gradients applied K steps late,
exactly, through checkpoints, and under the pipeline equal to the one-process reference."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

from core.overrides import apply_overrides
from methods.byol import METHOD, setup
from tests.conftest import launch_module
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import reference
from tests.methods.test_faults import assert_bit_identical, final_weights, train
from training.delay import delayed


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(steps)]


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    ((model(x) - y) ** 2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sgd(named):
    return torch.optim.SGD([p for _, p in named], lr=0.1)


def adamw(named):
    return torch.optim.AdamW([p for _, p in named], lr=0.01, weight_decay=0.1)


@pytest.mark.parametrize("delay", [1, 2])
def test_step_s_applies_the_gradient_of_step_s_minus_k(delay):
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    optimizer = delayed(sgd, delay)(list(model.named_parameters()))
    grads, weights = [], [copy.deepcopy(model.state_dict())]
    for x, y in batches(6):
        ((model(x) - y) ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        weights.append(copy.deepcopy(model.state_dict()))
    for s in range(6):
        for name in weights[s]:
            if s < delay:  # nothing to apply yet: the weights stay
                assert torch.equal(weights[s + 1][name], weights[s][name])
            else:  # plain SGD: w_{s+1} = w_s - lr g_{s-K}, g computed at w_{s-K}
                want = weights[s][name] - 0.1 * grads[s - delay][name]
                torch.testing.assert_close(weights[s + 1][name], want, rtol=0, atol=1e-7)
    assert not torch.equal(weights[-1]["weight"], weights[delay]["weight"])


def test_zero_delay_is_the_optimizer_itself():
    assert delayed(sgd, 0) is sgd


def test_a_checkpointed_optimizer_continues_bit_identically():
    torch.manual_seed(0)
    data = batches(6)
    whole = nn.Linear(5, 2)
    cut = copy.deepcopy(whole)
    optimizer = delayed(adamw, 2)(list(whole.named_parameters()))
    for x, y in data:
        step(whole, optimizer, x, y)

    first = delayed(adamw, 2)(list(cut.named_parameters()))
    for x, y in data[:3]:
        step(cut, first, x, y)
    buffer = io.BytesIO()
    torch.save({"model": cut.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = nn.Linear(5, 2)
    resumed.load_state_dict(saved["model"])
    second = delayed(adamw, 2)(list(resumed.named_parameters()))
    second.load_state_dict(saved["optimizer"])
    for x, y in data[3:]:
        step(resumed, second, x, y)
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_state_without_the_delay_or_with_another_is_refused():
    model = nn.Linear(5, 2)
    plain = adamw(list(model.named_parameters()))
    with pytest.raises(ValueError, match="student delay is none, this run's 1"):
        delayed(adamw, 1)(list(model.named_parameters())).load_state_dict(plain.state_dict())
    two = delayed(adamw, 2)(list(model.named_parameters()))
    with pytest.raises(ValueError, match="student delay is 2, this run's 1"):
        delayed(adamw, 1)(list(model.named_parameters())).load_state_dict(two.state_dict())


def test_a_negative_delay_is_a_one_line_error(capsys):
    from training.cli import main

    assert main(["byol", "--preset", "tiny", "--student-delay", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--student-delay must be >= 0" in err


@pytest.mark.dist
@pytest.mark.parametrize("schedule, micro, staleness", [("tspipe", 2, 1), ("ddp", 1, 0)])
def test_two_process_runs_with_a_student_delay_equal_the_reference(tmp_path, schedule, micro, staleness):
    # float64, as the BYOL equivalence test: the pipeline's (or the two replicas') student and
    # teacher equal plain training whose optimizer applies each gradient one step late, under a
    # one-step-stale teacher for tspipe; ddp delays the all-reduced gradient of both replicas
    args = ["optimizer=sgd", "lr=0.05", "warmup_steps=1", "steps=4", "backward_pieces=1", "dtype=float64"]
    common = [
        "byol",
        "--preset",
        "tiny",
        "--schedule",
        schedule,
        "--stages",
        "2",
        "--microbatches",
        str(micro),
    ]
    proc = launch_module(
        "training", 1, *common, "--student-delay", "1", *args, f"run_dir={tmp_path}", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = final_weights(tmp_path, 4)
    config = apply_overrides(METHOD.preset("tiny"), args)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run = setup(config)
        data = list(run.batches(0, 4))
        want = reference(run.task, data, 2, 1, staleness, None, delayed(run.optimizer, 1), run.scheduler)
        undelayed = reference(run.task, data, 2, 1, staleness, None, run.optimizer, run.scheduler)
    finally:
        torch.set_default_dtype(previous)
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12
    assert relative_difference(got["student"], undelayed["student"]) > 1e-6  # the delay is real


@pytest.mark.dist
def test_a_delayed_run_resumes_bit_identical_and_refuses_another_delay(tmp_path):
    common = ["--preset", "tiny", "--schedule", "tspipe", "--stages", "2", "--microbatches", "2"]
    common += ["--student-delay", "1", "steps=6", "checkpoint_every=2"]
    whole = train("byol", tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = train("byol", tmp_path / "cut", *common, fault="kill:3:1")
    assert killed.returncode != 0
    other = train("byol", tmp_path / "cut", *common[:-4], "--student-delay", "2", *common[-2:], "resume=auto")
    assert other.returncode == 2
    assert (
        "student_delay: checkpoint 1, now 2" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    )
    resumed = train("byol", tmp_path / "cut", *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_identical(final_weights(tmp_path / "whole", 6), final_weights(tmp_path / "cut", 6))


def test_a_state_for_other_parameters_is_refused():
    small = nn.Linear(5, 2)
    saved = delayed(sgd, 1)(list(small.named_parameters()))
    step(small, saved, *batches(1)[0])
    state = saved.state_dict()
    state["delayed_gradients"]["queue"][0].append(None)  # one more parameter than this optimizer has
    with pytest.raises(ValueError, match="another set of parameters"):
        delayed(sgd, 1)(list(small.named_parameters())).load_state_dict(state)


def test_a_step_the_nan_guard_skips_neither_queues_nor_applies_a_gradient(tmp_path):
    # a NaN at step 3 (0-based) of 5 with K = 2: had the skipped step queued its gradient, the final
    # checkpoint's queue (the gradients of the last K kept steps) would hold it
    proc = train(
        "toy",
        tmp_path,
        "--schedule",
        "sequential",
        "--student-delay",
        "2",
        "steps=5",
        "checkpoint_every=5",
        "nan_guard=skip",
        fault="nan:3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "row.json").read_text())["skipped_steps"] == 1
    saved = torch.load(tmp_path / "checkpoints" / "step0000005" / "rank0.pt", weights_only=True)
    queue = saved["state"]["optimizer"]["delayed_gradients"]["queue"]
    assert len(queue) == 2
    grads = [g for grads in queue for g in grads if g is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(v.double()).all() for v in final_weights(tmp_path, 5)["student"].values())
